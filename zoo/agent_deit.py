"""Agent-DeiT: timm's ViT/DeiT with agent attention in its first ``agent_layer`` blocks, registered in timm.

Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention", ECCV 2024 (arXiv 2312.08874). Architecture facts and checkpoints: LeapLabTHU/Agent-Attention,
``agent_transformer/models/agent_deit.py`` and ``agent_transformer/cfgs/agent_deit_*.yaml`` (no license).

The host is timm's VisionTransformer; :func:`attnzoo.graft` swaps the agent blocks' attention for our mixer.
The class token is kept: agents are pooled from patch tokens only, ``ac_bias``/``ca_bias`` connect the class
token. DeiT-B has agent attention in its first 4 blocks only.
"""

from __future__ import annotations

from collections.abc import Sequence

from timm.models import generate_default_cfgs, register_model
from timm.models import vision_transformer as vit
from torch import nn

from ._agent import agent_cfg, refuse_resize
from ._official import (
    DEIT_AUTHOR_DEFAULTS,
    OfficialFormat,
    attn_into_mixer,
    check_config_keys,
    register_official,
    unwrap_state_dict,
)
from .graft import graft
from .weights import build_model_with_cfg

__all__ = ["AgentVisionTransformer"]


class AgentVisionTransformer(vit.VisionTransformer):
    """timm's ViT/DeiT with agent attention in its first ``agent_layer`` blocks (the authors' ``agent_deit``).

    Args (beyond timm's ``VisionTransformer``):
        agent_num: agent tokens, one int for all agent blocks or one per agent block.
        agent_layer: number of leading agent blocks (``None``: all).
    Each agent block's window is the patch grid, with the class token as prefix.
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = 49,
        agent_layer: int | None = None,
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(qkv_bias=qkv_bias, attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate, **kwargs)
        depth = len(self.blocks)
        agent_layer = depth if agent_layer is None else agent_layer
        if not 0 <= agent_layer <= depth:
            raise ValueError(f"agent_layer must lie in [0, depth={depth}], got {agent_layer}")
        per_block = [agent_num] * agent_layer if isinstance(agent_num, int) else [int(n) for n in agent_num]
        if len(per_block) != agent_layer:
            raise ValueError(f"agent_num must be an int or one value per agent block ({agent_layer}), got {agent_num}")
        for value in dict.fromkeys(per_block):
            graft(
                self,
                "agent",
                blocks=[i for i, n in enumerate(per_block) if n == value],
                agent_num=value,
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
            )

    def set_input_size(self, *args, **kwargs) -> None:
        refuse_resize(self)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-DeiT state dict -> ours: timm's ViT converter, then agent ``attn.*`` -> ``attn.mixer.*``."""
    return attn_into_mixer(vit.checkpoint_filter_fn(unwrap_state_dict(state_dict), model), model)


# The authors' agent_deit.VisionTransformer(...) keywords and their class defaults.
_AUTHOR_DEFAULTS = dict(
    DEIT_AUTHOR_DEFAULTS, distilled=False, weight_init="", agent_num=[49, 49, 49, 49], agent_layer=-1
)
_STAGE_OF_PAIR = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}  # agent_deit.py: agent_num[stage_num[block // 2]]


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``agent_deit.VisionTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    ``agent_layer <= 0`` means all blocks; block ``i`` gets ``agent_num[{0,1,2,2,2,3}[i // 2]]`` as in
    their code (so at most 12 agent blocks). Their ``drop_rate`` (position and in-block dropout) is timm's
    ``pos_drop_rate``/``proj_drop_rate``; ``weight_init`` only changes the init. A representation layer or
    distillation token is in no released Agent-DeiT and is refused.
    """
    check_config_keys("Agent-DeiT", config, _AUTHOR_DEFAULTS)
    cfg = {**_AUTHOR_DEFAULTS, **config}
    if cfg["representation_size"] is not None or cfg["distilled"]:
        raise ValueError(
            "Agent-DeiT: representation_size and distilled are not supported (no released model uses them)"
        )
    depth = cfg["depth"]
    agent_layer = min(cfg["agent_layer"] if cfg["agent_layer"] > 0 else depth, depth)
    if agent_layer > 2 * len(_STAGE_OF_PAIR):
        raise ValueError(f"Agent-DeiT: the authors' code supports at most 12 agent blocks, got {agent_layer}")
    per_block = [int(cfg["agent_num"][_STAGE_OF_PAIR[i // 2]]) for i in range(agent_layer)]
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"],
        depth=depth,
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=per_block[0] if len(set(per_block)) == 1 else tuple(per_block),
        agent_layer=len(per_block),
    )


default_cfgs = generate_default_cfgs(
    {
        "agent_deit_tiny.in1k": agent_cfg("57e0904221824ee7b7af"),
        "agent_deit_small.in1k": agent_cfg("fdd43304372541db8ea7"),
        "agent_deit_small_448.in1k": agent_cfg("a228f86241c445f1969b", 448),
        "agent_deit_base.in1k": agent_cfg("5115f15fdd7e4ab58fbc"),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is None:  # timm's ViT default, the last three blocks (all of them when there are fewer)
        out_indices = min(3, kwargs.get("depth", 12))
    return build_model_with_cfg(
        AgentVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


# Released architectures: cfgs/*.yaml with config.py's defaults and build.py's entrypoint arguments.
@register_model
def agent_deit_tiny(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-T (12 agent blocks, 49 agents): 6.0M params, 1.2 GMACs, 74.9% top-1."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, agent_num=49, agent_layer=12)
    return _create("agent_deit_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_deit_small(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S (12 agent blocks, 49 agents): 22.7M params, 4.4 GMACs, 80.5% top-1."""
    model_args = dict(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, agent_num=49, agent_layer=12, drop_path_rate=0.1
    )
    return _create("agent_deit_small", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_deit_small_448(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S at 448 (28x28 patch grid): 23.1M params, 17.7 GMACs, 83.1% top-1."""
    model_args = dict(
        img_size=448,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        agent_num=49,
        agent_layer=12,
        drop_path_rate=0.1,
    )
    return _create("agent_deit_small_448", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_deit_base(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-B (agent attention in blocks 1-4 only, 81 agents): 87.2M params, 17.6 GMACs, 82.0% top-1."""
    model_args = dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, agent_num=81, agent_layer=4, drop_path_rate=0.3
    )
    return _create("agent_deit_base", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="Agent-DeiT",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
