"""NAT and DiNAT: hierarchical transformers of (dilated) neighborhood attention, registered in timm.

Hassani, Walton, Li, Li, Shi. "Neighborhood Attention Transformer", CVPR 2023 (arXiv 2204.07143);
Hassani & Shi. "Dilated Neighborhood Attention Transformer" (arXiv 2209.15001).
Architecture facts and checkpoints: SHI-Labs/Neighborhood-Attention-Transformer (MIT).

One class serves both papers: DiNAT is NAT with per-block dilations. The layout follows timm's
hierarchical models (downsample at the start of stages 1-3) instead of the authors' (at the end of
levels 0-2); :func:`checkpoint_filter_fn` renames the keys, nothing else changes.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks import MixerBlock
from attnzoo.blocks.neighborhood import NeighborhoodAttention2D

from ._hierarchical import ConvDownsample, HierarchicalNet, Stage, build_hierarchical, init_transformer_weights
from ._official import OfficialFormat, check_config_keys, register_official, rename_keys, unwrap_state_dict

__all__ = ["NAT"]

# the padding of small maps depends on the map size, so FX keeps the attention module as a leaf
register_notrace_module(NeighborhoodAttention2D)


class ConvTokenizer(nn.Module):
    """Two stride-2 3x3 convs (no activation between) then LayerNorm: the NAT stem, image -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, 3, 2, 1),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def _check_dilations(dilations, depths) -> list[list[int]]:
    if dilations is None:
        return [[1] * d for d in depths]
    if len(dilations) != len(depths) or any(len(ds) != d for ds, d in zip(dilations, depths, strict=True)):
        raise ValueError(
            f"dilations must give one value per block of each stage (depths {list(depths)}), got {dilations}"
        )
    return [[int(v) for v in ds] for ds in dilations]


class NAT(HierarchicalNet):
    """NAT / DiNAT classifier (channels-last stages of :class:`~attnzoo.blocks.MixerBlock` + neighborhood attention).

    Args mirror the authors' ``NAT``/``DiNAT`` classes: ``dilations`` gives one dilation per block
    per stage (``None``: all 1, i.e. NAT); ``layer_scale`` a float enables LayerScale (NAT-S/B).
    """

    no_weight_decay_leaves = ("rpb",)

    def __init__(
        self,
        embed_dim: int = 64,
        depths=(3, 4, 6, 5),
        num_heads=(2, 4, 8, 16),
        mlp_ratio: float = 3.0,
        kernel_size: int = 7,
        dilations=None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        layer_scale: float | None = None,
    ):
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {list(num_heads)} and depths {list(depths)} must have one entry per stage")
        dilations = _check_dilations(dilations, depths)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, first = [], 0
        for i, depth in enumerate(depths):
            blocks = [
                MixerBlock(
                    dims[i],
                    NeighborhoodAttention2D(
                        dims[i],
                        num_heads[i],
                        kernel_size=kernel_size,
                        dilation=dilations[i][j],
                        qkv_bias=qkv_bias,
                        qk_scale=qk_scale,
                        attn_drop=attn_drop_rate,
                        proj_drop=drop_rate,
                    ),
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=drop_path[first + j],
                    layer_scale=layer_scale,
                )
                for j in range(depth)
            ]
            downsample = ConvDownsample(dims[i - 1], dims[i]) if i > 0 else None
            stages.append(Stage(blocks, downsample))
            first += depth
        super().__init__(
            ConvTokenizer(in_chans, embed_dim), stages, dims, num_classes, global_pool, drop_rate=drop_rate
        )
        self.apply(init_transformer_weights)


# --- the authors' checkpoints -------------------------------------------------------------------
_RENAMES = [  # (authors' key pattern, our key); first match wins
    (r"^levels\.(\d+)\.downsample\.", lambda m: f"stages.{int(m[1]) + 1}.downsample."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.attn\.", lambda m: f"stages.{m[1]}.blocks.{m[2]}.mixer."),
    (r"^levels\.(\d+)\.blocks\.(\d+)\.gamma([12])$", lambda m: f"stages.{m[1]}.blocks.{m[2]}.ls{m[3]}.gamma"),
    (r"^levels\.(\d+)\.blocks\.", lambda m: f"stages.{m[1]}.blocks."),
]


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' NAT/DiNAT state dict (``levels.*``, ``attn``, ``gamma1/2``) -> ours (``stages.*``)."""
    return rename_keys(unwrap_state_dict(state_dict), _RENAMES)


# The authors' constructor arguments (classification/nat.py, dinat.py) and their class defaults.
_AUTHOR_DEFAULTS = dict(
    drop_path_rate=0.2,
    in_chans=3,
    kernel_size=7,
    dilations=None,
    num_classes=1000,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    layer_scale=None,
)
_AUTHOR_REQUIRED = ("embed_dim", "mlp_ratio", "depths", "num_heads")


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``NAT(...)``/``DiNAT(...)`` keywords -> ours (the names are the same; their defaults fill gaps)."""
    check_config_keys("NAT/DiNAT", config, (*_AUTHOR_REQUIRED, *_AUTHOR_DEFAULTS))
    missing = [k for k in _AUTHOR_REQUIRED if k not in config]
    if missing:
        raise ValueError(f"NAT/DiNAT config lacks the authors' required argument(s) {missing}")
    kwargs = {**_AUTHOR_DEFAULTS, **config}
    if not isinstance(kwargs["layer_scale"], (int, float)) or isinstance(kwargs["layer_scale"], bool):
        kwargs["layer_scale"] = None  # the authors enable layer scale only for a number
    return kwargs


# --- variants -----------------------------------------------------------------------------------
_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/"
# DiNAT's dilations per block (dinat.py entrypoints): 224 px, mini (depths 3/4/6/5) and the others (3/4/18/5),
# and the 384 fine-tunes of DiNAT-L with 7x7 neighborhoods
_DILATIONS_MINI = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]
_DILATIONS = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
_DILATIONS_384 = [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]


def _cfg(url: str, **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "license": "mit",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


_NAT_PAPER = dict(paper_ids="arXiv:2204.07143", paper_name="Neighborhood Attention Transformer")
_DINAT_PAPER = dict(paper_ids="arXiv:2209.15001", paper_name="Dilated Neighborhood Attention Transformer")
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
default_cfgs = generate_default_cfgs(
    {
        "nat_mini.in1k": _cfg(_NAT_URL + "nat_mini.pth", **_NAT_PAPER),
        "nat_tiny.in1k": _cfg(_NAT_URL + "nat_tiny.pth", **_NAT_PAPER),
        "nat_small.in1k": _cfg(_NAT_URL + "nat_small.pth", **_NAT_PAPER),
        "nat_base.in1k": _cfg(_NAT_URL + "nat_base.pth", **_NAT_PAPER),
        "dinat_mini.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_mini_in1k_224.pth", **_DINAT_PAPER),
        "dinat_tiny.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_tiny_in1k_224.pth", **_DINAT_PAPER),
        "dinat_small.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_small_in1k_224.pth", **_DINAT_PAPER),
        "dinat_base.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_base_in1k_224.pth", **_DINAT_PAPER),
        "dinat_large.in22k_ft_in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_224.pth", **_DINAT_PAPER),
        "dinat_large.in22k": _cfg(
            _DINAT_URL + "imagenet22k/dinat_large_in22k_224.pth", num_classes=21841, **_DINAT_PAPER
        ),
        "dinat_large_384.in22k_ft_in1k": _cfg(
            _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384.pth", **_384, **_DINAT_PAPER
        ),
        "dinat_large_384_11x11.in22k_ft_in1k": _cfg(
            _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384_11x11.pth", **_384, **_DINAT_PAPER
        ),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> NAT:
    return build_hierarchical(NAT, variant, pretrained, checkpoint_filter_fn, **kwargs)


# Released architectures: the authors' entrypoints (classification/nat.py, dinat.py)
@register_model
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini: 20M params, 2.7 GMACs, 81.8% ImageNet-1k top-1."""
    model_args = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3, drop_path_rate=0.2)
    return _create("nat_mini", pretrained, **dict(model_args, **kwargs))


@register_model
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny: 28M params, 4.3 GMACs, 83.2% ImageNet-1k top-1."""
    model_args = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3, drop_path_rate=0.2)
    return _create("nat_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small: 51M params, 7.8 GMACs, 83.7% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2, drop_path_rate=0.3, layer_scale=1e-5
    )
    return _create("nat_small", pretrained, **dict(model_args, **kwargs))


@register_model
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base: 90M params, 13.7 GMACs, 84.3% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2, drop_path_rate=0.5, layer_scale=1e-5
    )
    return _create("nat_base", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini: 20M params, 2.7 GMACs, 81.8% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=64,
        depths=(3, 4, 6, 5),
        num_heads=(2, 4, 8, 16),
        mlp_ratio=3,
        drop_path_rate=0.2,
        dilations=_DILATIONS_MINI,
    )
    return _create("dinat_mini", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny: 28M params, 4.3 GMACs, 82.7% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=64,
        depths=(3, 4, 18, 5),
        num_heads=(2, 4, 8, 16),
        mlp_ratio=3,
        drop_path_rate=0.2,
        dilations=_DILATIONS,
    )
    return _create("dinat_tiny", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small: 51M params, 7.8 GMACs, 83.8% ImageNet-1k top-1 (no layer scale, unlike NAT-S)."""
    model_args = dict(
        embed_dim=96,
        depths=(3, 4, 18, 5),
        num_heads=(3, 6, 12, 24),
        mlp_ratio=2,
        drop_path_rate=0.3,
        dilations=_DILATIONS,
    )
    return _create("dinat_small", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base: 90M params, 13.7 GMACs, 84.4% ImageNet-1k top-1."""
    model_args = dict(
        embed_dim=128,
        depths=(3, 4, 18, 5),
        num_heads=(4, 8, 16, 32),
        mlp_ratio=2,
        drop_path_rate=0.5,
        layer_scale=1e-5,
        dilations=_DILATIONS,
    )
    return _create("dinat_base", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large (ImageNet-22k, fine-tuned on 1k at 224): 200M params, 30.6 GMACs, 86.6% top-1."""
    model_args = dict(
        embed_dim=192,
        depths=(3, 4, 18, 5),
        num_heads=(6, 12, 24, 48),
        mlp_ratio=2,
        drop_path_rate=0.35,
        dilations=_DILATIONS,
    )
    return _create("dinat_large", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384 (dilations for 96/48/24 maps): 200M params, 89.7 GMACs, 87.4% top-1."""
    model_args = dict(
        embed_dim=192,
        depths=(3, 4, 18, 5),
        num_heads=(6, 12, 24, 48),
        mlp_ratio=2,
        drop_path_rate=0.35,
        dilations=_DILATIONS_384,
    )
    return _create("dinat_large_384", pretrained, **dict(model_args, **kwargs))


@register_model
def dinat_large_384_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384 with 11x11 neighborhoods: 200M params, 92.4 GMACs, 87.5% top-1."""
    model_args = dict(
        embed_dim=192,
        depths=(3, 4, 18, 5),
        num_heads=(6, 12, 24, 48),
        mlp_ratio=2,
        drop_path_rate=0.35,
        dilations=_DILATIONS,
        kernel_size=11,
    )
    return _create("dinat_large_384_11x11", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="NAT/DiNAT",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
