"""Sparsifiner-DeiT: timm's DeiT with Sparsifiner attention grafted into every block, registered in timm.

Wei, Duke, Jiang, Aarabi, Taylor, Shkurti. "Sparsifiner: Learning Sparse Instance-Dependent Attention for
Efficient Vision Transformers", CVPR 2023 (arXiv 2303.13755). Authors' code: lim142857/Sparsifiner (MIT),
``src/models/sparsifiner.py`` (model), ``src/losses.py`` (``NewLoss``), ``src/main.py`` (training phases),
``experiments-results-analysis/experiments/sparsifiner_default_config.yaml`` (the default run).

The authors' ``Sparsifiner`` is DeiT with each attention replaced by one that also runs a low-rank
connectivity predictor, so :class:`SparsifinerViT` subclasses timm's ``VisionTransformer`` and grafts
:class:`attnzoo.blocks.SparsifinerAttention` into every block (:func:`attnzoo.graft`); DeiT's weights
(``qkv``, ``proj`` keep their names) load unchanged and only the predictor starts from its init.

Only DeiT-S is registered: it is the only backbone the authors' code fully defines for Sparsifiner
(``main.py``'s ``sparsifiner`` model + the default yaml). Their LV-ViT variant (``SparsifinerLVViT``) needs
a backbone timm does not have, and no DeiT-B configuration exists in their code. They released no trained
Sparsifiner weights: ``sparsifiner_deit_small`` starts from DeiT-S (timm's ``deit_small_patch16_224.fb_in1k``,
the authors' own starting point and distillation teacher) and must be trained with their two-phase recipe:

* phase 1, ``"attn_recon"`` (5 epochs): only the predictors train, attention stays dense, loss
  ``0.01 * mean over layers of MSE_sum(approx_attn, teacher attention)`` — :func:`set_training_phase`,
  :class:`SparsifinerLoss`;
* phase 2, ``"cls_distill"`` (45 epochs): predictors frozen, sparse attention, loss
  ``CE + 0.5 * KL(teacher || student logits) + 0.5 * MSE(final patch tokens)``.

:meth:`SparsifinerViT.forward_distill` gives what the losses read (logits, final patch tokens, per-block
aux); :func:`teacher_forward` the same for a dense timm ViT teacher.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import generate_default_cfgs, register_model, vision_transformer
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks.sparsifiner import SparsifinerAttention, attn_recon_loss

from ._official import OfficialFormat, check_config_keys, register_official, unwrap_state_dict
from .graft import PrefixedSequenceMixer, graft
from .weights import build_model_with_cfg

__all__ = [
    "MissingPredictorWarning",
    "SparsifinerLoss",
    "SparsifinerViT",
    "record_aux",
    "set_training_phase",
    "teacher_forward",
]

# the kept keys come from a top-k whose size depends on the token count: FX keeps the mixer as a leaf
register_notrace_module(SparsifinerAttention)

PHASES = ("attn_recon", "cls_distill")


class AuxRecordingMixer(PrefixedSequenceMixer):
    """graft's ViT adapter that, while :func:`record_aux` is active, also collects the mixer's ``aux``.

    Same submodule (``mixer``) and so the same state-dict keys as the plain adapter. Outside the context
    it is the plain adapter (no extra work); inside, each forward calls the mixer with ``return_aux=True``
    and appends the block's aux dict (``approx_attn``, ``attn``, ``basis_coef``, ``index``) to the sink.
    """

    def __init__(self, adapter: PrefixedSequenceMixer):
        super().__init__(adapter.mixer, adapter.grid_size, adapter.num_prefix_tokens, adapter.takes_sequence)
        self.sink: list[dict] | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.sink is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("grafted mixers do not take attn_mask / is_causal (ViT's masked attention)")
        out, aux = self.mixer(
            x, grid_size=self._grid(x.shape[1]), num_prefix_tokens=self.num_prefix_tokens, return_aux=True
        )
        self.sink.append(aux)
        return out


@contextlib.contextmanager
def record_aux(model: nn.Module) -> Iterator[list[dict]]:
    """Collect every Sparsifiner block's ``aux`` during the forwards run inside the context, in block order.

    Works on any module holding grafted Sparsifiner blocks (also ``features_only`` wrappers). Leave the
    context before ``backward``: with gradient checkpointing the recomputation would otherwise differ
    from the recorded forward, so recording refuses to start on a model that checkpoints.
    """
    adapters = [m for m in model.modules() if isinstance(m, AuxRecordingMixer)]
    if not adapters:
        raise ValueError(f"{type(model).__name__} has no Sparsifiner blocks (AuxRecordingMixer) to record")
    if any(getattr(m, "grad_checkpointing", False) for m in model.modules()) and torch.is_grad_enabled():
        raise ValueError("record_aux does not work with gradient checkpointing; call set_grad_checkpointing(False)")
    sink: list[dict] = []
    for adapter in adapters:
        adapter.sink = sink
    try:
        yield sink
    finally:
        for adapter in adapters:
            adapter.sink = None


def sparsifiner_mixers(model: nn.Module) -> list[SparsifinerAttention]:
    """The Sparsifiner attention modules of ``model``, in forward order."""
    return [m for m in model.modules() if isinstance(m, SparsifinerAttention)]


def set_training_phase(model: nn.Module, phase: str) -> list[nn.Parameter]:
    """Prepare ``model`` for one phase of the authors' recipe and return the parameters to optimise.

    * ``"attn_recon"`` (phase 1; authors: 5 epochs, cosine LR 3e-4 -> 2e-4, 3 warm-up epochs): only the
      connectivity predictors (``mask_predictor``) require gradients, and in training mode attention is
      dense and the predictor uses its raw basis and all coefficients (``attn_recon=True``).
    * ``"cls_distill"`` (phase 2; authors: 45 epochs, cosine LR 8e-5 -> 2e-6, 3 warm-up epochs, WD 0.05):
      everything but the predictors requires gradients; attention is sparse (``attn_recon=False``).

    In eval mode attention is sparse in both phases (``attn_recon`` acts only while training).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    mixers = sparsifiner_mixers(model)
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no Sparsifiner attention")
    predictor = {id(p) for m in mixers for p in m.mask_predictor.parameters()}
    train_predictor = phase == "attn_recon"
    trainable = []
    for p in model.parameters():
        p.requires_grad_((id(p) in predictor) == train_predictor)
        if p.requires_grad:
            trainable.append(p)
    for m in mixers:
        m.attn_recon = train_predictor
    return trainable


class SparsifinerViT(vision_transformer.VisionTransformer):
    """timm's ``VisionTransformer`` whose attention is Sparsifiner's (the authors' ``Sparsifiner`` class).

    Args:
        keep_ratio: fraction of keys each patch query keeps (the authors' ``attn_keep_rate``); one value,
            or one per block (their ``attn_keep_rate_list``).
        reduce_n_factor, reduce_c_factor, share_inout_proj, basis_threshold, basis_coef_topk,
        basis_coef_threshold, sparse_impl: :class:`~attnzoo.blocks.SparsifinerAttention`'s (defaults: the
            authors' default yaml; ``sparse_impl="gather"`` computes only the kept keys).
        qk_scale: attention logit scale (``head_dim ** -0.5`` if ``None``).
        **kwargs: timm's ``VisionTransformer`` arguments. The input size is fixed (the predictor's
            ``proj_n``/``proj_back_n`` are sized by the token count); prefix tokens (DeiT's class token) are
            queries that see every key, as the authors' all-ones cls row.
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
            block.attn = AuxRecordingMixer(block.attn)
            # the authors' model-wide init also reaches the predictor's linear layers
            for m in block.attn.mixer.mask_predictor.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def forward_distill(self, x: torch.Tensor) -> dict:
        """What the recipe's losses read: ``logits``, ``tokens`` (patch tokens after the final norm) and ``aux``.

        ``aux`` is one dict per block (see :func:`record_aux`); the authors' ``out_dict`` holds the same
        (``x``, ``features``, ``approx_attn_list``...).
        """
        with record_aux(self) as aux:
            features = self.forward_features(x)
        return {"logits": self.forward_head(features), "tokens": features[:, self.num_prefix_tokens :], "aux": aux}


@torch.no_grad()
def teacher_forward(teacher: vision_transformer.VisionTransformer, x: torch.Tensor, return_attn: bool = False) -> dict:
    """A dense timm ViT teacher's ``logits`` and final patch ``tokens`` (and per-block ``attn`` probabilities).

    ``attn`` (``return_attn=True``) recomputes each block's softmax(q k^T * scale) from its ``qkv`` (hooks on
    the attention inputs; timm's fused attention does not return probabilities), ``(B, heads, N, N)``. In the
    authors' phase 1 the student's backbone *is* the frozen teacher, so the student's own ``aux["attn"]`` is
    the same target and this is not needed.
    """
    attn_maps: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        tokens = args[0]
        batch, n_tokens, _ = tokens.shape
        qkv = module.qkv(tokens).view(batch, n_tokens, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
        attn_maps.append(((q @ k.transpose(-1, -2)) * module.scale).softmax(dim=-1))

    handles = []
    if return_attn:
        handles = [b.attn.register_forward_pre_hook(hook, with_kwargs=True) for b in teacher.blocks]
    try:
        features = teacher.forward_features(x)
    finally:
        for handle in handles:
            handle.remove()
    out = {"logits": teacher.forward_head(features), "tokens": features[:, teacher.num_prefix_tokens :]}
    if return_attn:
        out["attn"] = attn_maps
    return out


class SparsifinerLoss(nn.Module):
    """The authors' training loss (``src/losses.py::NewLoss``) for one phase of their default recipe.

    ``forward(student, teacher, target)`` takes :meth:`SparsifinerViT.forward_distill`'s dict and
    :func:`teacher_forward`'s, and returns ``(loss, components)``.

    * ``"attn_recon"``: ``attn_recon_weight * mean over blocks of MSE_sum(approx_attn, teacher attention)``
      over the patch-query rows (:func:`attnzoo.blocks.sparsifiner.attn_recon_loss`). The teacher attention
      is ``teacher["attn"]`` when given, else the student's own dense attention (``aux["attn"]``), which is
      the teacher's when the backbone is the frozen teacher, as in the authors' phase 1. (The authors also
      evaluate CE and token distillation with weight 0 in this phase, only to keep DDP happy; left out.)
    * ``"cls_distill"``: ``cls_weight * CE(logits, target)`` + ``cls_distill_weight * KL(p_teacher || p_student)``
      (``F.kl_div(log_softmax(s), log_softmax(t), "batchmean", log_target=True)``, no temperature) +
      ``token_distill_weight * MSE(student tokens, teacher tokens)`` (mean over all patch-token elements,
      after the final LayerNorm). CE: soft targets (mixup/cutmix, as the authors train: mixup 0.8, cutmix
      1.0, smoothing 0.1 folded into the targets) use the soft-target cross entropy; class indices use
      cross entropy with ``label_smoothing`` (the authors' ``LabelSmoothingCrossEntropy(0.1)`` without mixup).

    Defaults are the authors' (``default_config.py`` + ``sparsifiner_default_config.yaml``): CE 1.0,
    logit distillation 0.5, token distillation 0.5, reconstruction 0.01. Their attention self-distillation
    term has weight 0 in the default phase 2 and is not implemented.
    """

    def __init__(
        self,
        phase: str = "cls_distill",
        cls_weight: float = 1.0,
        cls_distill_weight: float = 0.5,
        token_distill_weight: float = 0.5,
        attn_recon_weight: float = 0.01,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase
        self.cls_weight = cls_weight
        self.cls_distill_weight = cls_distill_weight
        self.token_distill_weight = token_distill_weight
        self.attn_recon_weight = attn_recon_weight
        self.label_smoothing = label_smoothing

    def forward(self, student: dict, teacher: dict | None = None, target: torch.Tensor | None = None):
        if self.phase == "attn_recon":
            aux = student["aux"]
            if teacher is not None and "attn" in teacher:
                if len(teacher["attn"]) != len(aux):
                    raise ValueError(f"teacher gives {len(teacher['attn'])} attention maps for {len(aux)} blocks")
                # the teacher's maps are (B, h, N, N): keep the rows of the student's predicted (patch) queries
                aux = [
                    {**a, "attn": t[..., t.shape[-2] - a["approx_attn"].shape[-2] :, :]}
                    for a, t in zip(aux, teacher["attn"], strict=True)
                ]
            recon = attn_recon_loss(aux, weight=self.attn_recon_weight)
            return recon, {"attn_recon_loss": recon.detach()}
        if teacher is None or target is None:
            raise ValueError("phase 'cls_distill' needs the teacher's outputs and the targets")
        logits = student["logits"]
        if target.is_floating_point():  # soft targets from mixup / cutmix
            cls = torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            cls = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        kl = F.kl_div(
            F.log_softmax(logits, dim=-1),
            F.log_softmax(teacher["logits"].detach(), dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        tokens = F.mse_loss(student["tokens"], teacher["tokens"].detach())
        parts = {
            "cls_loss": self.cls_weight * cls,
            "cls_distill_loss": self.cls_distill_weight * kl,
            "token_distill_loss": self.token_distill_weight * tokens,
        }
        loss = sum(parts.values())
        return loss, {k: v.detach() for k, v in parts.items()}

    def extra_repr(self) -> str:
        return f"phase={self.phase!r}"


# --- checkpoints: DeiT's (timm's or the authors' own start), and the authors' Sparsifiner ----------------
class MissingPredictorWarning(UserWarning):
    """A checkpoint without connectivity predictors was loaded: they keep their init until phase 1 trains them."""


_BLOCK_ATTN = re.compile(r"^(blocks\.\d+\.attn\.)(?!mixer\.)")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A DeiT or authors' Sparsifiner state dict -> ours; a DeiT one keeps the model's predictor init.

    timm's ViT converter does the shared work (``{"model": sd}``, old linear patch embeds, position-embedding
    resampling); the attention's tensors then move into the graft adapter (``attn.mixer.*``). A DeiT checkpoint
    has no ``mask_predictor`` tensors: those (and only those) are taken from the model as initialised, with a
    :class:`MissingPredictorWarning` naming how many, so every other key still loads strictly.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not any(".attn.mixer." in key for key in state_dict):
        converted = vision_transformer.checkpoint_filter_fn(state_dict, model, adapt_layer_scale=True)
        state_dict = {_BLOCK_ATTN.sub(r"\1mixer.", key): value for key, value in converted.items()}
    own = model.state_dict()
    missing = [key for key in own if ".mask_predictor." in key and key not in state_dict]
    if missing:
        blocks = sorted({int(key.split(".")[1]) for key in missing})
        warnings.warn(
            f"the checkpoint has no Sparsifiner connectivity predictor ({len(missing)} tensors in {len(blocks)} "
            "blocks): they keep their initialisation. Train them first (phase 1: "
            "attnzoo.sparsifiner.set_training_phase(model, 'attn_recon')); until then the kept keys are arbitrary.",
            MissingPredictorWarning,
            stacklevel=2,
        )
        state_dict = {**state_dict, **{key: own[key] for key in missing}}
    return state_dict


# The authors' Sparsifiner(...) arguments and their class defaults (src/models/sparsifiner.py), and the
# cfg.SPAR values of their default yaml where a plain-dict ``cfg`` leaves them out.
_AUTHOR_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    qk_scale=None,
    representation_size=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
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

    ``attn_keep_rate_list`` is required (their class cannot run without it). Token pruning is not ported:
    ``token_pruning_loc_indicator`` must be all False (their default yaml: ``TOKEN_PRUNING_LOC: []``), and
    then ``token_keep_rate_list`` has no effect. ``cfg`` may be a plain mapping with their ``SPAR`` section
    (``BASIS_THRESHOLD``, ``BASIS_COEF.{USE_TOPK,TOPK,THRESHOLD}``, ``ATTN_SCORE.USE_TOPK``, which must be
    True); missing values are the default yaml's. ``attn_drop_rate`` and ``distill`` have no effect in their
    code (attention dropout is built but never applied). ``drop_rate`` is their dropout after the position
    embedding and inside blocks (timm's ``pos_drop_rate`` and ``proj_drop_rate``).
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
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        qk_scale=cfg["qk_scale"],
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        keep_ratio=list(cfg["attn_keep_rate_list"]),
        reduce_n_factor=cfg["reduce_n_factor"],
        reduce_c_factor=cfg["reduce_c_factor"],
        share_inout_proj=cfg["share_inout_proj"],
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
            "license": "mit",
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

    22.25M parameters: DeiT-S's 22.05M + 0.20M in the 12 connectivity predictors. Paper (abstract): MHSA FLOPs
    -48% to -69% for <= 0.4% top-1 (measured here: attention core -74%, core + predictor -25%; see the tests).
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
