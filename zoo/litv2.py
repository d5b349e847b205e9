"""LITv2: hierarchical vision transformers with HiLo attention, registered in timm.

Pan, Cai, Zhuang. "Fast Vision Transformers with HiLo Attention", NeurIPS 2022 (arXiv 2205.13213).
Architecture facts and checkpoints: ziplab/LITv2 (Apache-2.0), ``classification/models/*.py``.

Stages 1-2 have no attention (:class:`ConvFFNBlock`: early high-resolution maps are local texture, which
the MLP's depthwise conv already mixes); stages 3-4 use :class:`~attnzoo.blocks.hilo.HiLo`. Stages are joined
by deformable token merging. The layout is timm's (downsample at the start of stages 1-3, the authors' at the
end of layers 0-2; :func:`checkpoint_filter_fn` renames the keys). Any input >= 32 px is accepted by
zero-padding bottom/right where a map must be divisible, as the authors' detection backbone does; at 224 and
384 nothing is padded and the computation is the authors'.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model
from timm.models._features_fx import register_notrace_module
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d

from attnzoo.blocks.hilo import HiLo

from ._hierarchical import HierarchicalNet, Stage, build_hierarchical, init_transformer_weights
from ._official import (
    OfficialFormat,
    check_config_keys,
    per_stage,
    register_official,
    rename_keys,
    unwrap_state_dict,
)

__all__ = ["LITv2"]


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 conv then LayerNorm: image (zero-padded bottom/right) -> ``(B, ceil(H/4), ceil(W/4), C)``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class DeformableTokenMerging(nn.Module):
    """DTM: deformable 2x2 stride-2 conv (C -> out_dim) + BatchNorm + GELU, on channels-last maps.

    ``conv_offset`` predicts one (dy, dx) per kernel tap and output position (channel ``2 * (i * 2 + j) + {0: dy,
    1: dx}``, torchvision's layout and the authors' DCNv1 kernel's); it starts at zero, i.e. a strided conv. Odd
    maps are zero-padded bottom/right by one. The authors train ``conv_offset.weight`` at 0.01x the learning
    rate (``OFFSET_LR_MULTI``); the factor is recorded as ``conv_offset.lr_scale`` (no optimizer here reads it).
    """

    def __init__(self, dim: int, out_dim: int, offset_lr_scale: float = 0.01):
        super().__init__()
        self.conv_offset = nn.Conv2d(dim, 2 * 2 * 2, kernel_size=2, stride=2)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)
        self.conv_offset.lr_scale = offset_lr_scale
        self.dconv = DeformConv2d(dim, out_dim, kernel_size=2, stride=2)
        self.norm = nn.BatchNorm2d(out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        x = self._deform(x, self.conv_offset(x))
        return self.act(self.norm(x)).permute(0, 2, 3, 1)

    def _deform(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """torchvision's deform conv, made safe: NaN/inf offsets give NaN outputs, never a crash.

        torchvision's CPU kernel reads out of bounds (SIGSEGV) on non-finite or huge offsets and has no half CPU
        kernel. Offsets are clamped to the map size plus two (beyond, every tap reads zero: exact), non-finite
        ones zeroed and their outputs set to NaN afterwards; half inputs run in float32.
        """
        limit = float(x.shape[-2] + x.shape[-1] + 2)
        finite = torch.isfinite(offset).all(dim=1, keepdim=True)
        offset = offset.nan_to_num(0.0, 0.0, 0.0).clamp(-limit, limit)
        dtype = torch.promote_types(x.dtype, offset.dtype)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32  # as torchvision's own autocast rule for this op on CUDA
        weight, bias = self.dconv.weight, self.dconv.bias
        autocast_off = (
            torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
        )
        with autocast_off:
            out = deform_conv2d(
                x.to(dtype),
                offset.to(dtype),
                weight.to(dtype),
                None if bias is None else bias.to(dtype),
                stride=self.dconv.stride,
                padding=self.dconv.padding,
                dilation=self.dconv.dilation,
            )
        return out.masked_fill(~finite, float("nan"))


# shape-dependent padding and torchvision's deform_conv2d argument checks: FX keeps these as leaves
register_notrace_module(PatchEmbed)
register_notrace_module(DeformableTokenMerging)
register_notrace_module(HiLo)


class DWMlp(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> Linear on ``(B, H, W, C)`` maps (the authors' ``DWMlp``)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, 1, 1, groups=hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)
        # the authors' conv init: normal(0, sqrt(2 / fan_out)), fan_out = 3 * 3 for a depthwise conv
        nn.init.normal_(self.dwconv.weight, 0.0, (2.0 / 9) ** 0.5)
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop1(self.act(x))
        return self.drop2(self.fc2(x))


class ConvFFNBlock(nn.Module):
    """``x + DropPath(DWMlp(norm2(x)))``: the attention-free block of LITv2's first two stages."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class HiLoBlock(nn.Module):
    """Pre-norm block of HiLo attention then :class:`DWMlp` (stages 3-4); MixerBlock's names, not its MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        alpha: float,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = HiLo(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
            window_size=window_size,
            alpha=alpha,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _check_has_msa(has_msa, depths) -> list[bool]:
    flags = per_stage("has_msa", has_msa, len(depths))
    if any(flag not in (0, 1) for flag in flags):
        raise ValueError(f"has_msa must hold 0 (ConvFFN blocks) or 1 (HiLo blocks) per stage, got {flags}")
    return [flag == 1 for flag in flags]


class LITv2(HierarchicalNet):
    """LITv2 classifier: ConvFFN stages, then HiLo stages, joined by deformable token merging.

    Args mirror the authors' ``LITv2`` class: ``has_msa`` picks HiLo (1) or ConvFFN-only (0) blocks per stage,
    ``local_ws`` the HiLo window per stage (1: global), ``alpha`` the fraction of Lo-Fi heads. ``drop_rate`` is
    the MLP dropout (the authors have none before the classifier). LITv2 has no position tables, so nothing
    beyond timm's 1-D parameters is excluded from weight decay.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        mlp_ratio: float = 4.0,
        alpha: float = 0.9,
        local_ws=(0, 0, 2, 1),
        has_msa=(0, 0, 1, 1),
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        offset_lr_scale: float = 0.01,
    ):
        num_heads = per_stage("num_heads", num_heads, len(depths))
        local_ws = per_stage("local_ws", local_ws, len(depths))
        has_msa = _check_has_msa(has_msa, depths)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, first = [], 0
        for i, depth in enumerate(depths):
            if has_msa[i]:
                blocks = [
                    HiLoBlock(
                        dims[i],
                        num_heads[i],
                        window_size=local_ws[i],
                        alpha=alpha,
                        mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        drop=drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=drop_path[first + j],
                    )
                    for j in range(depth)
                ]
            else:
                blocks = [
                    ConvFFNBlock(dims[i], mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=drop_path[first + j])
                    for j in range(depth)
                ]
            downsample = DeformableTokenMerging(dims[i - 1], dims[i], offset_lr_scale) if i > 0 else None
            stages.append(Stage(blocks, downsample))
            first += depth
        super().__init__(PatchEmbed(in_chans, embed_dim, norm=patch_norm), stages, dims, num_classes, global_pool)
        self.apply(init_transformer_weights)


# --- the authors' checkpoints -------------------------------------------------------------------
_RENAMES = [  # (authors' key pattern, our key); first match wins
    (r"^layers\.(\d+)\.downsample\.dconv\.conv_offset\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.conv_offset."),
    (r"^layers\.(\d+)\.downsample\.dconv\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.dconv."),
    (r"^layers\.(\d+)\.downsample\.norm_layer\.", lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.", lambda m: f"stages.{m[1]}.blocks.{m[2]}.mixer."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.", lambda m: f"stages.{m[1]}.blocks.{m[2]}.mlp.dwconv."),
    (r"^layers\.(\d+)\.blocks\.", lambda m: f"stages.{m[1]}.blocks."),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' LITv2 state dict (``layers.*``, ``attn``, ``dconv``, ``norm_layer``) -> ours (``stages.*``).

    The DTM of the authors' layer ``i`` becomes ``stages.{i+1}.downsample``; BatchNorm statistics are kept.
    """
    return rename_keys(unwrap_state_dict(state_dict), _RENAMES)


# The authors' constructor arguments (classification/models/litv2.py::LITv2) and their class defaults.
_AUTHOR_DEFAULTS = dict(
    img_size=224,
    patch_size=4,
    in_chans=3,
    num_classes=1000,
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    mlp_ratio=4.0,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.1,
    norm_layer=nn.LayerNorm,
    ape=False,
    patch_norm=True,
    use_checkpoint=False,
    has_msa=[0, 0, 1, 1],
    alpha=0.5,
    local_ws=None,
)
# read by the authors' class but without effect on the computed function
_AUTHOR_IGNORED = ("img_size", "ape", "use_checkpoint", "norm_layer", "patch_size")


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``LITv2(...)`` keywords -> ours (their defaults fill gaps).

    ``img_size`` only fixes their input assertion, ``ape`` builds nothing in their class, ``use_checkpoint``
    saves memory only. Their ``local_ws=None`` default cannot build, so it is required. Their class swallows
    unknown keywords; this refuses them.
    """
    check_config_keys("LITv2", config, _AUTHOR_DEFAULTS)
    kwargs = {**_AUTHOR_DEFAULTS, **config}
    if kwargs["local_ws"] is None:
        raise ValueError("LITv2 config lacks the authors' required argument ['local_ws'] (their default None fails)")
    if kwargs["patch_size"] != 4:
        raise ValueError(f"LITv2: only patch_size=4 (every released model) is supported, got {kwargs['patch_size']}")
    if kwargs["norm_layer"] is not nn.LayerNorm:
        raise ValueError(f"LITv2: only norm_layer=nn.LayerNorm is supported, got {kwargs['norm_layer']!r}")
    for key in _AUTHOR_IGNORED:
        del kwargs[key]
    return kwargs


# --- variants -----------------------------------------------------------------------------------
_URL = "https://github.com/ziplab/LITv2/releases/download/v1.0/"


def _cfg(url: str, **kwargs) -> dict:
    # test transform (classification/data/build.py, config.py): bicubic resize to 256/224 of the size, centre
    # crop (TEST.CROP True) -> crop_pct 0.875 at 224; the 384 fine-tune config sets TEST.CROP False -> 1.0
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2205.13213",
        "paper_name": "Fast Vision Transformers with HiLo Attention",
        "origin_url": "https://github.com/ziplab/LITv2",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "litv2_small.in1k": _cfg(_URL + "litv2_s.pth"),
        "litv2_medium.in1k": _cfg(_URL + "litv2_m.pth"),
        "litv2_base.in1k": _cfg(_URL + "litv2_b.pth"),
        "litv2_base_384.in1k": _cfg(
            _URL + "litv2_b_384.pth", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0
        ),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_hierarchical(LITv2, variant, pretrained, checkpoint_filter_fn, **kwargs)


# Released architectures: the authors' classification/models/litv2.py with their classification configs
@register_model
def litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 28M params, 3.7 GMACs, 82.0% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        drop_path_rate=0.2,
        alpha=0.9,
        local_ws=(0, 0, 2, 1),
        has_msa=(0, 0, 1, 1),
    )
    return _create("litv2_small", pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 49M params, 7.5 GMACs, 83.3% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=96,
        depths=(2, 2, 18, 2),
        num_heads=(3, 6, 12, 24),
        drop_path_rate=0.3,
        alpha=0.9,
        local_ws=(0, 0, 2, 1),
        has_msa=(0, 0, 1, 1),
    )
    return _create("litv2_medium", pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 87M params, 13.2 GMACs, 83.6% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        drop_path_rate=0.5,
        alpha=0.9,
        local_ws=(0, 0, 2, 1),
        has_msa=(0, 0, 1, 1),
    )
    return _create("litv2_base", pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_base_384(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B fine-tuned at 384 (30 epochs): 87M params, 39.7 GMACs, 84.7% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=128,
        depths=(2, 2, 18, 2),
        num_heads=(4, 8, 16, 32),
        drop_path_rate=0.5,
        alpha=0.9,
        local_ws=(0, 0, 2, 1),
        has_msa=(0, 0, 1, 1),
    )
    return _create("litv2_base_384", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="LITv2",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
