"""The Sparsifiner authors' two-phase distillation recipe: training phases, aux recording, teacher, loss.

Wei et al., CVPR 2023 (arXiv 2303.13755). Authors' code: lim142857/Sparsifiner, ``src/losses.py`` (``NewLoss``),
``src/main.py`` (phases), ``experiments-results-analysis/experiments/sparsifiner_default_config.yaml``.
Phase 1, ``"attn_recon"`` (5 epochs): only the connectivity predictors train, against the dense attention.
Phase 2, ``"cls_distill"`` (45 epochs): predictors frozen, sparse attention, CE + logit and token distillation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.models import vision_transformer
from torch import nn

from attnzoo.blocks.sparsifiner import SparsifinerAttention

__all__ = [
    "PHASES",
    "SparsifinerLoss",
    "attn_recon_loss",
    "record_aux",
    "set_training_phase",
    "sparsifiner_mixers",
    "student_forward",
    "teacher_forward",
]

PHASES = ("attn_recon", "cls_distill")


def _check_phase(phase: str) -> str:
    """The one check of a phase name; :func:`set_training_phase` and :class:`SparsifinerLoss` call it."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return phase


def sparsifiner_mixers(model: nn.Module) -> list[SparsifinerAttention]:
    """The Sparsifiner attention modules of ``model``, in forward order; a model without any is refused."""
    mixers = [m for m in model.modules() if isinstance(m, SparsifinerAttention)]
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no Sparsifiner blocks (SparsifinerAttention)")
    return mixers


def set_training_phase(model: nn.Module, phase: str) -> list[nn.Parameter]:
    """Prepare ``model`` for one phase of the authors' recipe and return the parameters to optimise.

    ``"attn_recon"`` (authors: cosine LR 3e-4 -> 2e-4, 3 warm-up epochs): only ``mask_predictor`` trains and
    attention is dense while training. ``"cls_distill"`` (authors: cosine LR 8e-5 -> 2e-6, 3 warm-up epochs,
    WD 0.05): everything but the predictors trains. In eval mode attention is sparse in both phases.
    A freshly built model is already in the ``"cls_distill"`` state (predictors frozen, no gradient reaches them
    from the logits), so build the optimizer after this call: it sets ``requires_grad`` on every parameter.
    """
    train_predictor = _check_phase(phase) == "attn_recon"
    mixers = sparsifiner_mixers(model)
    predictor = {id(p) for m in mixers for p in m.mask_predictor.parameters()}
    trainable = []
    for p in model.parameters():
        p.requires_grad_((id(p) in predictor) == train_predictor)
        if p.requires_grad:
            trainable.append(p)
    for m in mixers:
        m.attn_recon = train_predictor
    return trainable


@contextlib.contextmanager
def record_aux(model: nn.Module) -> Iterator[list[dict]]:
    """Collect every Sparsifiner block's ``aux`` during the forwards run inside the context, in block order.

    Hooks make each :class:`SparsifinerAttention` return its aux and hand its caller the plain output. Leave the
    context before ``backward``: a gradient-checkpointed recomputation would record again.
    """
    mixers = sparsifiner_mixers(model)
    if any(getattr(m, "grad_checkpointing", False) for m in model.modules()) and torch.is_grad_enabled():
        raise ValueError("record_aux does not work with gradient checkpointing; call set_grad_checkpointing(False)")
    sink: list[dict] = []

    def ask_for_aux(module, args, kwargs):
        return args, {**kwargs, "return_aux": True}

    def keep_aux(module, args, output):
        out, aux = output
        sink.append(aux)
        return out

    handles = []
    for mixer in mixers:
        handles.append(mixer.register_forward_pre_hook(ask_for_aux, with_kwargs=True))
        handles.append(mixer.register_forward_hook(keep_aux))
    try:
        yield sink
    finally:
        for handle in handles:
            handle.remove()


def student_forward(model: vision_transformer.VisionTransformer, x: torch.Tensor) -> dict:
    """The student's ``logits``, final patch ``tokens`` and per-block ``aux`` (the authors' ``out_dict``)."""
    with record_aux(model) as aux:
        features = model.forward_features(x)
    return {"logits": model.forward_head(features), "tokens": features[:, model.num_prefix_tokens :], "aux": aux}


@torch.no_grad()
def teacher_forward(teacher: vision_transformer.VisionTransformer, x: torch.Tensor, return_attn: bool = False) -> dict:
    """A dense timm ViT teacher's ``logits``, final patch ``tokens`` and, with ``return_attn``, per-block ``attn``.

    ``attn`` recomputes softmax(q k^T * scale) from each block's ``qkv`` (timm's fused attention returns no
    probabilities). In phase 1 the student's backbone is the teacher, so its own ``aux["attn"]`` is the same.
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


def attn_recon_loss(aux_per_layer: Sequence[dict], weight: float = 0.01) -> torch.Tensor:
    """The authors' predictor loss: ``weight * mean over layers of MSE_sum(approx_attn, attn)``."""
    if len(aux_per_layer) == 0:
        raise ValueError("aux_per_layer must hold at least one layer's aux")
    total = sum(F.mse_loss(aux["approx_attn"], aux["attn"], reduction="sum") for aux in aux_per_layer)
    return weight * total / len(aux_per_layer)


class SparsifinerLoss(nn.Module):
    """The authors' training loss (``src/losses.py::NewLoss``) for one phase; defaults are their default run's.

    ``forward(student, teacher, target)`` returns ``(loss, components)``. ``"attn_recon"``: :func:`attn_recon_loss`
    over the patch-query rows, against ``teacher["attn"]`` if given, else the student's own dense attention.
    ``"cls_distill"``: CE (soft targets from mixup, else ``label_smoothing``) + KL(teacher || student), batch
    mean, no temperature + MSE(tokens). The authors' zero-weight terms are left out.
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
        self.phase = _check_phase(phase)
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
