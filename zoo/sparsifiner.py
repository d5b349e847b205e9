"""Sparsifiner-DeiT: timm's DeiT with Sparsifiner attention grafted into every block, registered in timm.

Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
CVPR 2023 (arXiv 2303.13755). Authors' code: lim142857/Sparsifiner (MIT), ``src/models/sparsifiner.py``.
Only DeiT-S is registered, the one backbone their code fully defines. They released no trained weights: the
model starts from DeiT-S (their start and teacher) and trains with :mod:`attnzoo.sparsifiner_distillation`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model, vision_transformer
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks.sparsifiner import SparsifinerAttention

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

__all__ = ["MissingPredictorWarning", "SparsifinerViT"]

# its forward dispatches on the input's rank and token count in Python: FX keeps it a leaf wherever it is grafted
register_notrace_module(SparsifinerAttention)


class SparsifinerViT(vision_transformer.VisionTransformer):
    """timm's ``VisionTransformer`` whose attention is Sparsifiner's (the authors' ``Sparsifiner`` class).

    ``keep_ratio`` is one value or one per block (the authors' ``attn_keep_rate_list``); the other Sparsifiner
    arguments are :class:`~attnzoo.blocks.SparsifinerAttention`'s, ``**kwargs`` timm's ``VisionTransformer``'s.
    The input size is fixed: the predictor is sized by the token count.
    """

    def __init__(
        self,
        keep_ratio: float | Sequence[float] = 0.25,
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        share_inout_proj: bool = False,
        basis_threshold: float = 0.02,
        basis_coef_topk: int | None = 8,
        basis_coef_threshold: float = 0.05,
        sparse_impl: str = "gather",
        qk_scale: float | None = None,
        **kwargs,
    ):
        if kwargs.get("dynamic_img_size"):
            raise ValueError("Sparsifiner needs a fixed input size: its predictor is sized by the token count")
        super().__init__(**kwargs)
        depth = len(self.blocks)
        ratios = [keep_ratio] * depth if isinstance(keep_ratio, (int, float)) else [float(r) for r in keep_ratio]
        if len(ratios) != depth:
            raise ValueError(f"keep_ratio must be one value or one per block ({depth}), got {keep_ratio}")
        mixer_kwargs = dict(
            qkv_bias=kwargs.get("qkv_bias", True),
            qk_scale=qk_scale,
            proj_drop=kwargs.get("proj_drop_rate", 0.0),
            reduce_n_factor=reduce_n_factor,
            reduce_c_factor=reduce_c_factor,
            share_inout_proj=share_inout_proj,
            basis_threshold=basis_threshold,
            basis_coef_topk=basis_coef_topk,
            basis_coef_threshold=basis_coef_threshold,
            sparse_impl=sparse_impl,
        )
        for ratio in sorted(set(ratios)):
            # qkv/proj carry over: the authors' init (trunc-normal 0.02, zero bias) is timm's, applied above
            graft(
                self,
                "sparsifiner",
                blocks=[i for i, r in enumerate(ratios) if r == ratio],
                keep_ratio=ratio,
                **mixer_kwargs,
            )
        for block in self.blocks:
            # the authors' model-wide init also reaches the predictor's linear layers
            for m in block.attn.mixer.mask_predictor.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)


# --- checkpoints: DeiT's (timm's or the authors' own start), and the authors' Sparsifiner ----------------
class MissingPredictorWarning(UserWarning):
    """A checkpoint without connectivity predictors was loaded: they keep their init until phase 1 trains them."""


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A DeiT or authors' Sparsifiner state dict -> ours.

    A DeiT checkpoint has no ``mask_predictor`` tensors: those (and only those) keep the model's init, with a
    :class:`MissingPredictorWarning`, so every other key still loads strictly.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not any(".attn.mixer." in key for key in state_dict):
        state_dict = vision_transformer.checkpoint_filter_fn(state_dict, model, adapt_layer_scale=True)
        state_dict = attn_into_mixer(state_dict, model)
    own = model.state_dict()
    missing = [key for key in own if ".mask_predictor." in key and key not in state_dict]
    if missing:
        blocks = sorted({int(key.split(".")[1]) for key in missing})
        warnings.warn(
            f"the checkpoint has no Sparsifiner connectivity predictor ({len(missing)} tensors in {len(blocks)} "
            "blocks): they keep their initialisation. Train them first (phase 1: attnzoo.sparsifiner_distillation."
            "set_training_phase(model, 'attn_recon')); until then the kept keys are arbitrary.",
            MissingPredictorWarning,
            stacklevel=2,
        )
        state_dict = {**state_dict, **{key: own[key] for key in missing}}
    return state_dict


# The authors' Sparsifiner(...) arguments and their class defaults (src/models/sparsifiner.py: DeiT's
# VisionTransformer keywords plus their own), and the cfg.SPAR values of their default yaml where a plain-dict
# ``cfg`` leaves them out.
_AUTHOR_DEFAULTS = dict(
    DEIT_AUTHOR_DEFAULTS,
    qk_scale=None,
    hybrid_backbone=None,
    norm_layer=None,
    distill=False,
    attn_keep_rate_list=None,
    token_keep_rate_list=None,
    token_pruning_loc_indicator=None,
    reduce_n_factor=8,
    reduce_c_factor=2,
    share_inout_proj=False,
    cfg=None,
)
_DEFAULT_SPAR = dict(
    BASIS_THRESHOLD=0.02, BASIS_COEF=dict(USE_TOPK=True, TOPK=8, THRESHOLD=0.05), ATTN_SCORE=dict(USE_TOPK=True)
)


def config_to_kwargs(config: dict) -> dict:
    """The authors' ``Sparsifiner(...)`` keywords -> :class:`SparsifinerViT`'s.

    Token pruning is not ported (``token_pruning_loc_indicator`` all False, as their default yaml). ``cfg`` may
    be a plain mapping with their ``SPAR`` section. ``attn_drop_rate`` and ``distill`` have no effect in their
    code; ``drop_rate`` is timm's ``pos_drop_rate`` and ``proj_drop_rate``.
    """
    check_config_keys("Sparsifiner", config, _AUTHOR_DEFAULTS)
    cfg = {**_AUTHOR_DEFAULTS, **config}
    for key in ("representation_size", "hybrid_backbone", "norm_layer"):
        if cfg[key] is not None:
            raise ValueError(f"Sparsifiner: {key}={cfg[key]!r} is not supported (only the DeiT layout is ported)")
    if cfg["attn_keep_rate_list"] is None:
        raise ValueError("Sparsifiner config lacks the authors' attn_keep_rate_list (one keep rate per block)")
    if any(cfg["token_pruning_loc_indicator"] or []):
        raise ValueError("Sparsifiner: token pruning (token_pruning_loc_indicator) is not ported")
    spar = dict(_DEFAULT_SPAR)
    if cfg["cfg"] is not None:
        given = cfg["cfg"].get("SPAR", {})
        spar.update({k: v for k, v in given.items() if k == "BASIS_THRESHOLD"})
        spar["BASIS_COEF"] = {**_DEFAULT_SPAR["BASIS_COEF"], **given.get("BASIS_COEF", {})}
        spar["ATTN_SCORE"] = {**_DEFAULT_SPAR["ATTN_SCORE"], **given.get("ATTN_SCORE", {})}
    if not spar["ATTN_SCORE"]["USE_TOPK"]:
        raise ValueError("Sparsifiner: threshold connectivity (ATTN_SCORE.USE_TOPK False) is not ported")
    coef = spar["BASIS_COEF"]
    same = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio")
    same += ("qkv_bias", "qk_scale", "drop_path_rate", "reduce_n_factor", "reduce_c_factor", "share_inout_proj")
    return dict(
        {key: cfg[key] for key in same},
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        keep_ratio=list(cfg["attn_keep_rate_list"]),
        basis_threshold=spar["BASIS_THRESHOLD"],
        basis_coef_topk=coef["TOPK"] if coef["USE_TOPK"] else None,
        basis_coef_threshold=coef["THRESHOLD"],
    )


# --- variants -----------------------------------------------------------------------------------
default_cfgs = generate_default_cfgs(
    {
        # DeiT-S's released weights (timm's own source for deit_small_patch16_224): the predictor is not in them
        "sparsifiner_deit_small.fb_in1k": {
            "url": "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
            "hf_hub_id": "timm/deit_small_patch16_224.fb_in1k",
            "num_classes": 1000,
            "input_size": (3, 224, 224),
            "pool_size": None,
            "crop_pct": 0.875,  # the authors' evaluation (DeiT's): resize 256, center crop 224
            "interpolation": "bicubic",
            "fixed_input_size": True,
            "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            "license": "apache-2.0",  # of the weights it loads (DeiT-S); the architecture's code is MIT
            "origin_url": "https://github.com/lim142857/Sparsifiner",
            "paper_ids": "arXiv:2303.13755",
            "paper_name": "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
            "notes": (
                "No trained Sparsifiner weights are published; pretrained=True loads DeiT-S (Apache-2.0 weights, "
                "facebookresearch/deit) and leaves the connectivity predictors at their init (phase 1 trains them).",
            ),
        },
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> SparsifinerViT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        SparsifinerViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> SparsifinerViT:
    """Sparsifiner-S on DeiT-S (the authors' default run): 25% of keys per query, N_r = 197 // 6 = 32, c = 32.

    Paper: MHSA FLOPs -48% to -69%; measured here: attention core -74%, core + predictor -25% (see the tests).
    """
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True)
    return _create("sparsifiner_deit_small", pretrained, **dict(model_args, **kwargs))


OFFICIAL = register_official(
    OfficialFormat(
        family="Sparsifiner",
        entrypoints=("sparsifiner_deit_small",),
        config_to_kwargs=config_to_kwargs,
        checkpoint_filter_fn=checkpoint_filter_fn,
    )
)
