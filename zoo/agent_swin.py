"""Agent-Swin: timm's Swin Transformer with agent attention in the blocks ``attn_type`` names, registered in timm.

Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention", ECCV 2024 (arXiv 2312.08874). Architecture facts and checkpoints: LeapLabTHU/Agent-Attention,
``agent_transformer/models/agent_swin.py`` and ``agent_transformer/cfgs/agent_swin_*.yaml`` (no license).

The released ``WINDOW_SIZE`` (56 at 224, 72 at 288, 96 at 384) covers every stage map, so agent attention is
global; the plain Swin blocks of late stages use ``max(7, window // 8)`` windows. The agent biases are sized by
each stage's map: a model serves the input size it was built for (fine-tunes are separate variants).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model, swin_transformer
from torch import nn

from attnzoo.kernels._checks import check_nonempty_batch

from ._agent import agent_blocks_per_stage, agent_cfg, per_stage_grid, refuse_resize, resize_to_model
from ._official import (
    OfficialFormat,
    attn_into_mixer,
    check_config_keys,
    per_stage,
    register_official,
    unwrap_state_dict,
)
from .graft import graft
from .weights import build_model_with_cfg, stage_out_indices

__all__ = ["AgentSwinTransformer"]


def _set_block_window(block: swin_transformer.SwinTransformerBlock, window: int) -> None:
    """Give a timm Swin block another window, clipped to its map (a window covering the map drops the shift).

    Done before grafting, so timm's window attention is never built for a 56x56 window (3136x3136 index buffer).
    """
    resolution = block.input_resolution
    size = tuple(min(r, w) for r, w in zip(resolution, to_2tuple(window), strict=True))
    shifted = any(block.target_shift_size)
    block.window_size = size
    block.shift_size = tuple(0 if r <= w or not shifted else w // 2 for r, w in zip(resolution, size, strict=True))
    block.window_area = size[0] * size[1]
    block.init_non_persistent_buffers()  # the shift mask for the new window (None without shift)


class _GlobalAgentBlock(swin_transformer.SwinTransformerBlock):
    """A Swin block whose agent attention sees the whole map at any size (the authors' dense backbones).

    At the built size this is the same computation (one window covers the map). Blocks switch class in place.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn.mixer(x)  # self.attn is graft's WindowMixer adapter; its mixer takes (B, H, W, C)


class AgentSwinTransformer(swin_transformer.SwinTransformer):
    """timm's Swin with agent attention in the blocks ``attn_type`` names (the authors' ``AgentSwinTransformer``).

    Args (beyond timm's ``SwinTransformer``):
        agent_num: agent tokens per stage (a perfect square each).
        attn_type: the authors' per-stage string, e.g. 'AAAB' or 'AAMB2' (see :func:`agent_blocks_per_stage`).
        agent_window_size: the agent blocks' window (the authors' ``window_size``), clipped to each stage's map.
        agent_grid: per stage, the grid the agents are pooled to (the authors' ``downstream_agent_shape``);
            ``None``: ``sqrt(agent_num)`` squared, as trained.
        dynamic_img_size: timm's; agent blocks that are global at ``img_size`` stay global at every size.
    The shift mask is not applied in agent blocks, as in the authors' code.
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AAAB",
        agent_window_size: int = 56,
        agent_grid: Sequence[int | Sequence[int] | None] | None = None,
        dynamic_img_size: bool = False,
        depths: Sequence[int] = (2, 2, 6, 2),
        window_size: int = 7,
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(
            depths=depths,
            window_size=window_size,
            qkv_bias=qkv_bias,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=proj_drop_rate,
            dynamic_img_size=dynamic_img_size,
            **kwargs,
        )
        counts = agent_blocks_per_stage(attn_type, depths)
        agent_num = [int(n) for n in per_stage("agent_num", agent_num, len(depths))]
        grids = per_stage_grid(agent_grid, len(depths))
        for index, (stage, count) in enumerate(zip(self.layers, counts, strict=True)):
            if not count:
                continue
            for block in stage.blocks[:count]:
                _set_block_window(block, agent_window_size)
            global_blocks = [tuple(b.window_size) == tuple(b.input_resolution) for b in stage.blocks[:count]]
            graft(
                self,
                "agent",
                stages=index,
                blocks=range(count),
                agent_num=agent_num[index],
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
                dynamic_size=dynamic_img_size,
                agent_grid=grids[index],
            )
            if dynamic_img_size:
                for block, is_global in zip(stage.blocks[:count], global_blocks, strict=True):
                    if is_global:
                        block.__class__ = _GlobalAgentBlock

    def set_input_size(self, *args, **kwargs) -> None:
        refuse_resize(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_nonempty_batch(x)
        return super().forward_features(x)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-Swin state dict -> ours: timm's Swin converter (downsample moves, ``head.fc``, buffers
    dropped), agent ``attn.*`` -> ``attn.mixer.*``, size-dependent biases fit to the model's input size."""
    converted = swin_transformer.checkpoint_filter_fn(unwrap_state_dict(state_dict), model)
    return resize_to_model(attn_into_mixer(converted, model), model)


# The authors' AgentSwinTransformer(...) keywords and their class defaults (agent_swin.py).
_AUTHOR_DEFAULTS = dict(
    img_size=224,
    patch_size=4,
    in_chans=3,
    num_classes=1000,
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    mlp_ratio=4.0,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.1,
    ape=False,
    patch_norm=True,
    use_checkpoint=False,
    agent_num=[9, 16, 49, 49],
    attn_type="BBBB",
)


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``AgentSwinTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    Their class defaults (``window_size=7``, ``attn_type='BBBB'``) are not the released models: the yaml
    configs set 56 and 'AAAB'/'AABB'/'AAMB2' (issue #31), so a config should give both. Their ``window_size``
    is our ``agent_window_size`` and ``max(7, window_size // 8)`` timm's window; their ``drop_rate`` (inside
    blocks) is timm's ``proj_drop_rate``. ``ape=True``, ``patch_norm=False`` and a ``qk_scale`` for plain
    Swin blocks build nothing released and are refused.
    """
    check_config_keys("Agent-Swin", config, _AUTHOR_DEFAULTS)
    cfg = {**_AUTHOR_DEFAULTS, **config}
    if cfg["ape"] or not cfg["patch_norm"]:
        raise ValueError("Agent-Swin: only ape=False and patch_norm=True (every released model) are supported")
    counts = agent_blocks_per_stage(cfg["attn_type"], cfg["depths"])
    if cfg["qk_scale"] is not None and counts != list(cfg["depths"]):
        raise ValueError("Agent-Swin: qk_scale is only supported as None (timm's window attention has no override)")
    window = int(cfg["window_size"])
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"],
        depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["num_heads"]),
        window_size=max(7, window // 8),
        agent_window_size=window,
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=tuple(int(n) for n in cfg["agent_num"]),
        attn_type=cfg["attn_type"],
    )


def _cfg(file_id: str, input_size: int = 224, **kwargs) -> dict:
    return agent_cfg(file_id, input_size, pool_size=(input_size // 32,) * 2, classifier="head.fc", **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "agent_swin_tiny.in1k": _cfg("a2ddc1190c224f768a41"),
        "agent_swin_small.in1k": _cfg("f607172c9fea4d6e99bb"),
        "agent_swin_small_288.in1k": _cfg("09760394e93b4046a25e", 288, crop_pct=1.0),
        "agent_swin_base.in1k": _cfg("4fcd2d0114bb490483c3"),
        "agent_swin_base_384.in1k": _cfg("bb84ee9058954706a557", 384, crop_pct=1.0),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is None:
        out_indices = stage_out_indices(AgentSwinTransformer, kwargs)
    return build_model_with_cfg(
        AgentSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# Released architectures: cfgs/*.yaml (the agent window is their WINDOW_SIZE) with config.py's defaults.
@register_model
def agent_swin_tiny(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-T (AAAB, global agent attention in stages 1-3): 28.9M params, 4.5 GMACs, 82.6% top-1."""
    model_args = dict(
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        agent_window_size=56,
        attn_type="AAAB",
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.2,
    )
    return _create("agent_swin_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_swin_small(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S (AABB): 49.7M params, 8.7 GMACs, 83.7% top-1."""
    model_args = dict(
        embed_dim=96,
        depths=(2, 2, 18, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        agent_window_size=56,
        attn_type="AABB",
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.3,
    )
    return _create("agent_swin_small", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_swin_small_288(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S at 288 (window 72, Swin windows 9): 14.6 GMACs, 84.1% top-1."""
    model_args = dict(
        img_size=288,
        embed_dim=96,
        depths=(2, 2, 18, 2),
        num_heads=(3, 6, 12, 24),
        window_size=9,
        agent_window_size=72,
        attn_type="AABB",
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.3,
    )
    return _create("agent_swin_small_288", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_swin_base(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B (AAMB2: stage 3 has 2 agent and 16 Swin blocks): 88.1M params, 15.4 GMACs, 84.0% top-1."""
    model_args = dict(
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        window_size=7,
        agent_window_size=56,
        attn_type="AAMB2",
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.5,
    )
    return _create("agent_swin_base", pretrained, **dict(model_args, **kwargs))


@register_model
def agent_swin_base_384(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B at 384 (window 96, Swin windows 12): 46.3 GMACs, 84.9% top-1."""
    model_args = dict(
        img_size=384,
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        window_size=12,
        agent_window_size=96,
        attn_type="AAMB2",
        agent_num=(9, 16, 49, 49),
        drop_path_rate=0.5,
    )
    return _create("agent_swin_base_384", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="Agent-Swin",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
