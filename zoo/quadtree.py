"""QuadTree-PVT: timm's PVTv2 with QuadTree attention grafted into every block, registered in timm.

Tang, Zhang, Zhu, Tan. "QuadTree Attention for Vision Transformers", ICLR 2022 (arXiv 2201.02767).
Architecture facts and checkpoints: Tangshitao/QuadTreeAttention, ``classification/quadtree.py`` and
``classification/quadtree_attention.py``. No LICENSE file; the README's "License" section states MIT.

The authors' model is PVTv2 with the attention replaced, so :class:`QuadTreePVT` subclasses timm's
``PyramidVisionTransformerV2`` and grafts :class:`attnzoo.blocks.QuadTreeAttention` into each stage; the rest
stays timm's, and checkpoints load through timm's PVTv2 converter plus ``attn.`` -> ``attn.mixer.``. The
authors reuse PVT's ``sr_ratios`` as the number of pyramid levels per stage (here ``levels``): a stage's map
must be divisible by ``2 ** (levels - 1)``, so released models need sides that are multiples of 32.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, pvt_v2, register_model
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks.quadtree import ATTN_TYPES, QuadTreeAttention
from attnzoo.kernels._checks import check_nonempty_batch

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

__all__ = ["QuadTreePVT"]

# top-k selections and per-level shapes depend on the map size: FX keeps the mixer as a leaf
register_notrace_module(QuadTreeAttention)


class QuadTreePVT(pvt_v2.PyramidVisionTransformerV2):
    """timm's PVTv2 whose blocks use QuadTree attention (variant ``"B"`` for every released model).

    Args:
        levels: pyramid levels of each stage's QuadTree attention (the authors' ``sr_ratios``).
        attn_type: ``"B"`` (learned value branches, LePE, softmax level weights) or ``"A"``.
        topk: keys each query refines on the next finer level (the authors hard-code 8).
        **kwargs: timm's ``PyramidVisionTransformerV2`` arguments (``embed_dims``, ``depths``,
            ``num_heads``, ``mlp_ratios``, ``qkv_bias``, ``proj_drop_rate``, ``drop_path_rate``...),
            except ``sr_ratios`` and ``linear``'s attention, which QuadTree replaces.
    """

    def __init__(self, levels=(4, 3, 2, 1), attn_type: str = "B", topk: int = 8, **kwargs):
        if "sr_ratios" in kwargs:
            raise ValueError(
                "QuadTreePVT has no spatial reduction; the authors' sr_ratios are numbers of pyramid levels: "
                "pass them as levels="
            )
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        # sr_ratio 1: the host builds plain (cheap) attention modules, which the graft below replaces
        super().__init__(sr_ratios=1, **kwargs)
        self.levels = levels = tuple(int(v) for v in per_stage("levels", levels, len(self.depths)))
        for stage, stage_levels in enumerate(levels):
            graft(
                self,
                "quadtree",
                stages=stage,
                carry_over=False,  # nothing to carry from a freshly initialised host
                sr_ratio=stage_levels,
                attn_type=attn_type,
                topk=topk,
                qkv_bias=kwargs.get("qkv_bias", True),
                attn_drop=kwargs.get("attn_drop_rate", 0.0),
                proj_drop=kwargs.get("proj_drop_rate", 0.0),
            )
        # The authors' model applies PVT's init to the whole network last, so it overrides the attention
        # wrapper's own (trunc-normal) init: convs normal(0, sqrt(2 / fan_out)), linears trunc-normal 0.02.
        for stage in self.stages:
            for block in stage.blocks:
                block.attn.mixer.apply(self._init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_nonempty_batch(x)
        return super().forward_features(x)


# --- the authors' checkpoints -------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' state dict (``patch_embed{s}``, ``block{s}.{j}``, ``norm{s}``) -> ours.

    timm's PVTv2 converter renames the shared layout; the attention's parameters then move into the graft
    adapter (``attn.mixer.*``) under the authors' own names (``q_proj``, ``py_att.get_vs.{l}``...). A state dict
    of ours passes through unchanged.
    """
    state_dict = unwrap_state_dict(state_dict)
    if "patch_embed.proj.weight" in state_dict:  # already ours
        return state_dict
    return attn_into_mixer(pvt_v2.checkpoint_filter_fn(state_dict, model), model)


# The authors' PyramidVisionTransformerV2(...) arguments and their class defaults (classification/quadtree.py).
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
    num_stages=4,
    linear=False,
    attn_type="B",
)


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``PyramidVisionTransformerV2(...)`` keywords -> :class:`QuadTreePVT`'s.

    ``norm_layer`` is not accepted: all their factories pass timm's PVTv2 default, ``LayerNorm(eps=1e-6)``.
    ``img_size``, ``patch_size`` and ``qk_scale`` are unused in their code (their attention always scales by
    ``head_dim ** -0.5``) and accepted without effect.
    Their ``drop_rate`` (inside blocks) is timm's ``proj_drop_rate``.
    """
    check_config_keys("QuadTree", config, _AUTHOR_DEFAULTS)
    cfg = {**_AUTHOR_DEFAULTS, **config}
    if cfg["num_stages"] != 4 or len(cfg["depths"]) != 4:
        raise ValueError(f"QuadTree: the authors' model has 4 stages (its head reads embed_dims[3]), got {cfg}")
    return dict(
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dims=tuple(cfg["embed_dims"]),
        num_heads=tuple(cfg["num_heads"]),
        mlp_ratios=tuple(cfg["mlp_ratios"]),
        qkv_bias=cfg["qkv_bias"],
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        depths=tuple(cfg["depths"]),
        levels=tuple(cfg["sr_ratios"]),
        linear=cfg["linear"],
        attn_type=cfg["attn_type"],
    )


# --- variants -----------------------------------------------------------------------------------
_CLS_URL = "https://github.com/Tangshitao/QuadTreeAttention/releases/download/QuadTreeAttention_cls/"
_DOWNSTREAM_URL = "https://github.com/Tangshitao/QuadTreeAttention/releases/download/QuadTreeAttention/"
_B1_NOTE = (
    "The README's GitHub link for Quadtree-B-b1 points to QuadTreeAttention_cls/b2.pth (a typo: that is the b2 "
    "model); its Google Drive link is https://drive.google.com/file/d/1NB1Yu0R7QQPmo2pgQGxDbcElRx2Nc5xj. The url "
    "here is the ImageNet b1 the authors' own detection/segmentation configs load.",
)


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # the PVT/DeiT main.py evaluation: resize 256, center crop 224
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": False,
        "license": "mit",
        "origin_url": "https://github.com/Tangshitao/QuadTreeAttention",
        "paper_ids": "arXiv:2201.02767",
        "paper_name": "QuadTree Attention for Vision Transformers",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "quadtree_b0.in1k": _cfg(_CLS_URL + "b0.pth"),
        "quadtree_b1.in1k": _cfg(_DOWNSTREAM_URL + "b1.pth", notes=_B1_NOTE),
        "quadtree_b2.in1k": _cfg(_CLS_URL + "b2.pth"),
        "quadtree_b3.in1k": _cfg(_CLS_URL + "b3.pth"),
        "quadtree_b4.in1k": _cfg(_CLS_URL + "b4.pth"),
        # the authors define quadtreeA_b0 but release no weights for it
        "quadtree_a_b0": _cfg(notes=("No released weights (the authors' code defines quadtreeA_b0 only).",)),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> QuadTreePVT:
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is None:
        out_indices = stage_out_indices(QuadTreePVT, kwargs)
    return build_model_with_cfg(
        QuadTreePVT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# Released architectures: the authors' factories (classification/quadtree.py, their sr_ratios as levels) and the
# drop_path of their classification configs (classification/configs/quadtree/b*.py)
@register_model
def quadtree_b0(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-B-b0: 3.6M params, 0.6 GMACs (README), 72.0% ImageNet-1k top-1."""
    model_args = dict(
        embed_dims=(32, 64, 160, 256),
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="B",
        drop_path_rate=0.1,
    )
    return _create("quadtree_b0", pretrained, **dict(model_args, **kwargs))


@register_model
def quadtree_b1(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-B-b1: 13.7M params, 2.3 GMACs (README), 80.0% ImageNet-1k top-1."""
    model_args = dict(
        embed_dims=(64, 128, 320, 512),
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="B",
        drop_path_rate=0.1,
    )
    return _create("quadtree_b1", pretrained, **dict(model_args, **kwargs))


@register_model
def quadtree_b2(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-B-b2: 25.1M params, 4.5 GMACs (README), 82.7% ImageNet-1k top-1."""
    model_args = dict(
        embed_dims=(64, 128, 320, 512),
        depths=(3, 4, 6, 3),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="B",
        drop_path_rate=0.1,
    )
    return _create("quadtree_b2", pretrained, **dict(model_args, **kwargs))


@register_model
def quadtree_b3(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-B-b3: 46.3M params, 7.8 GMACs (README), 83.8% ImageNet-1k top-1."""
    model_args = dict(
        embed_dims=(64, 128, 320, 512),
        depths=(3, 4, 18, 3),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="B",
        drop_path_rate=0.3,
    )
    return _create("quadtree_b3", pretrained, **dict(model_args, **kwargs))


@register_model
def quadtree_b4(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-B-b4: 64.2M params, 11.5 GMACs (README), 84.0% ImageNet-1k top-1."""
    model_args = dict(
        embed_dims=(64, 128, 320, 512),
        depths=(3, 8, 27, 3),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="B",
        drop_path_rate=0.3,
    )
    return _create("quadtree_b4", pretrained, **dict(model_args, **kwargs))


@register_model
def quadtree_a_b0(pretrained: bool = False, **kwargs) -> QuadTreePVT:
    """QuadTree-A-b0 (the authors' ``quadtreeA_b0``; variant A, no released weights): 3.2M params."""
    model_args = dict(
        embed_dims=(32, 64, 160, 256),
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        qkv_bias=True,
        levels=(4, 3, 2, 1),
        attn_type="A",
        drop_path_rate=0.1,
    )
    return _create("quadtree_a_b0", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="QuadTree",
        entrypoints=tuple(default_cfgs),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
