"""Agent-PVT: PVT v1 with agent attention, registered in timm.

Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention", ECCV 2024 (arXiv 2312.08874). Architecture facts and checkpoints: LeapLabTHU/Agent-Attention,
``agent_transformer/models/agent_pvt.py`` and ``agent_transformer/cfgs/agent_pvt_*.yaml`` (no license).

The released models are PVT v1 without the class token, every block agent ('AAAA') and without spatial reduction
in the agent attention (``agent_sr_ratios`` '1111'); the authors' constructor also builds PVT attention stages
('B', with ``sr_ratios``) and agents over reduced keys, and so does this one. timm has no PVT v1:
:mod:`attnzoo.pvt_v1` is the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._agent import agent_cfg, per_stage_grid, resize_to_model
from ._hierarchical import build_hierarchical
from ._official import (
    OfficialFormat,
    check_config_keys,
    per_stage,
    register_official,
    rename_keys,
    unwrap_state_dict,
)
from .pvt_v1 import PyramidVisionTransformerV1, stage_grid_sizes

__all__ = ["AgentPVT"]


class AgentPVT(PyramidVisionTransformerV1):
    """PVT v1 with agent attention (the authors' Agent-PVT).

    ``attn_type`` has one letter per stage: ``A`` agent attention (over keys reduced by ``agent_sr_ratios``),
    ``B`` PVT v1 attention (reduced by ``sr_ratios``, scaled by ``qk_scale`` if given; agent stages ignore it,
    as the authors' do). ``agent_num`` gives the agents per stage; each stage's agent window is its whole map at
    ``img_size``. Without reduction, the authors' ``q``/``kv`` projections are one ``qkv`` here (the converter
    concatenates them).
    ``dynamic_img_size=True`` accepts any input size (agent biases and position tables resized to each map, as
    the authors' dense backbones do); ``agent_grid`` per stage pools the agents to a larger grid (their
    ``downstream_agent_shape``, e.g. ``[12, 16, 28, 28]``).
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AAAA",
        sr_ratios: int | Sequence[int] = (8, 4, 2, 1),
        agent_sr_ratios: int | Sequence[int] = 1,
        qk_scale: float | None = None,
        agent_grid: Sequence[int | Sequence[int] | None] | None = None,
        dynamic_img_size: bool = False,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        num = len(depths)
        if not isinstance(attn_type, str) or len(attn_type) != num or set(attn_type) - set("AB"):
            raise ValueError(f"attn_type must give A (agent) or B (PVT attention) per stage ({num}), got {attn_type!r}")
        agent_num = [int(n) for n in per_stage("agent_num", agent_num, num)]
        sr_ratios = per_stage("sr_ratios", sr_ratios, num)
        agent_sr_ratios = per_stage("agent_sr_ratios", agent_sr_ratios, num)
        grids = stage_grid_sizes(img_size, patch_size, num)
        agent_grids = per_stage_grid(agent_grid, num)
        common = dict(qkv_bias=qkv_bias, attn_drop=attn_drop_rate, proj_drop=proj_drop_rate)
        mixer_kwargs = [
            dict(
                common,
                agent_num=agent_num[i],
                window_size=grids[i],
                dynamic_size=dynamic_img_size,
                agent_grid=agent_grids[i],
                sr_ratio=agent_sr_ratios[i],
            )
            if kind == "A"
            else dict(common, sr_ratio=sr_ratios[i], qk_scale=qk_scale)
            for i, kind in enumerate(attn_type)
        ]
        super().__init__(
            ["agent" if kind == "A" else "sra" for kind in attn_type],
            mixer_kwargs,
            img_size=img_size,
            patch_size=patch_size,
            depths=depths,
            proj_drop_rate=proj_drop_rate,
            **kwargs,
        )


_RENAMES = [  # (authors' key pattern, ours); first match wins
    (r"^patch_embed1\.", lambda m: "patch_embed."),
    (r"^pos_embed1$", lambda m: "patch_embed.pos_embed"),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^pos_embed(\d)$", lambda m: f"stages.{int(m[1]) - 1}.downsample.pos_embed"),
    (r"^block(\d)\.(\d+)\.attn\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.mixer."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-PVT state dict -> ours: renames, ``q`` + ``kv`` (k|v) rows -> one ``qkv`` where the
    mixer has one, and the size-dependent tensors fit to the model's input size (:func:`resize_to_model`)."""
    out = rename_keys(unwrap_state_dict(state_dict), _RENAMES)
    own = model.state_dict()
    for key in [k for k in out if k.endswith((".mixer.q.weight", ".mixer.q.bias"))]:
        fused = key.replace(".mixer.q.", ".mixer.qkv.")
        if fused in own:
            out[fused] = torch.cat([out.pop(key), out.pop(key.replace(".mixer.q.", ".mixer.kv."))], dim=0)
    return resize_to_model(out, model)


# The authors' agent_pvt.PyramidVisionTransformer(...) keywords and their class defaults.
_AUTHOR_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    embed_dims=[64, 128, 256, 512],
    num_heads=[1, 2, 4, 8],
    mlp_ratios=[4, 4, 4, 4],
    qkv_bias=False,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
    depths=[3, 4, 6, 3],
    sr_ratios=[8, 4, 2, 1],
    agent_sr_ratios="1111",
    num_stages=4,
    agent_num=[9, 16, 49, 49],
    attn_type="AAAA",
)


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``agent_pvt.PyramidVisionTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    Their entrypoints all pass ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``, which this port builds. Their
    ``attn_type`` and ``agent_sr_ratios`` strings are read per stage (one character each, as their code indexes
    them); their ``drop_rate`` becomes ``pos_drop_rate``/``proj_drop_rate``. Their head is sized by the fourth
    stage, so ``num_stages`` must be 4.
    """
    check_config_keys("Agent-PVT", config, _AUTHOR_DEFAULTS)
    cfg = {**_AUTHOR_DEFAULTS, **config}
    if cfg["num_stages"] != 4:
        raise ValueError(f"Agent-PVT: num_stages must be 4 (their head is sized by stage 4), got {cfg['num_stages']}")
    attn_type = str("AAAA" if cfg["attn_type"] is None else cfg["attn_type"])[:4]
    agent_sr = str(cfg["agent_sr_ratios"])[:4]
    if len(attn_type) != 4 or set(attn_type) - set("AB"):
        raise ValueError(f"Agent-PVT: attn_type must hold A or B for each of the 4 stages, got {cfg['attn_type']!r}")
    if len(agent_sr) != 4 or not agent_sr.isdigit() or "0" in agent_sr:
        raise ValueError(f"Agent-PVT: agent_sr_ratios must hold a digit 1-9 per stage, got {cfg['agent_sr_ratios']!r}")
    if len(cfg["sr_ratios"]) < 4:
        raise ValueError(f"Agent-PVT: sr_ratios must give one ratio per stage (4), got {cfg['sr_ratios']!r}")
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dims=tuple(cfg["embed_dims"]),
        num_heads=tuple(cfg["num_heads"]),
        mlp_ratios=tuple(cfg["mlp_ratios"]),
        depths=tuple(cfg["depths"]),
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=tuple(int(n) for n in cfg["agent_num"]),
        attn_type=attn_type,
        sr_ratios=tuple(int(r) for r in cfg["sr_ratios"][:4]),
        agent_sr_ratios=tuple(int(r) for r in agent_sr),
        qk_scale=cfg["qk_scale"],
    )


def _cfg(file_id: str, input_size: int = 224, **kwargs) -> dict:
    return agent_cfg(file_id, input_size, pool_size=(input_size // 32,) * 2, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "agent_pvt_tiny.in1k": _cfg("13fdf0e0a7c5498c934f"),
        "agent_pvt_small.in1k": _cfg("36b8be9a8863456685a3"),
        "agent_pvt_medium.in1k": _cfg("4d00ecacf18b45f9b88c"),
        "agent_pvt_medium_256.in1k": _cfg("654df734121643b19c52", 256),
        "agent_pvt_large.in1k": _cfg("040cfe0cfbbe4762ad09"),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentPVT:
    return build_hierarchical(AgentPVT, variant, pretrained, checkpoint_filter_fn, **kwargs)


# Released architectures: cfgs/*.yaml with config.py's defaults and build.py's entrypoint arguments.
@register_model
def agent_pvt_tiny(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-T: 11.6M params, 2.0 GMACs, 78.4% top-1."""
    model_args = dict(
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(2, 2, 2, 2),
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.1,
    )
    return _create("agent_pvt_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_pvt_small(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-S: 20.6M params, 4.0 GMACs, 82.2% top-1."""
    model_args = dict(
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(3, 4, 6, 3),
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.1,
    )
    return _create("agent_pvt_small", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_pvt_medium(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M: 35.9M params, 7.0 GMACs, 83.4% top-1."""
    model_args = dict(
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(3, 4, 18, 3),
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.3,
    )
    return _create("agent_pvt_medium", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_pvt_medium_256(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M at 256: 36.1M params, 9.2 GMACs, 83.8% top-1."""
    model_args = dict(
        img_size=256,
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(3, 4, 18, 3),
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.3,
    )
    return _create("agent_pvt_medium_256", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_pvt_large(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-L: 48.7M params, 10.4 GMACs, 83.7% top-1."""
    model_args = dict(
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(3, 8, 27, 3),
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.3,
    )
    return _create("agent_pvt_large", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="Agent-PVT",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
