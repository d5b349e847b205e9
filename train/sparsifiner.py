"""The Sparsifiner authors' two-phase recipe as a Lightning task (Wei et al., CVPR 2023, arXiv 2303.13755).

The phases, the teacher and the loss are :mod:`attnzoo.sparsifiner_distillation`'s; everything else (optimizer,
schedule, Mixup, EMA, metrics, checkpoints) is :class:`ClassificationTask`'s.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from lightning.pytorch.utilities import rank_zero_info

from attnzoo.sparsifiner_distillation import SparsifinerLoss, set_training_phase, student_forward, teacher_forward

from .classification import ClassificationTask

__all__ = ["SparsifinerDistillationTask"]


class SparsifinerDistillationTask(ClassificationTask):
    """:class:`ClassificationTask` for ``sparsifiner_*`` models, in one phase of the authors' recipe.

    Args:
        phase: ``"attn_recon"`` (phase 1) or ``"cls_distill"`` (phase 2; start it from phase 1's
            checkpoint with ``pretrained_file`` after ``attnzoo export``, or ``--ckpt_path``).
        teacher: the dense teacher, a timm model name (the authors': ``deit_small_patch16_224``);
            used in phase 2 only. ``teacher_pretrained``/``teacher_file``: its weights (registered / a file);
            ``teacher_kwargs``: more ``timm.create_model`` arguments (it must match the student's width).
        cls_weight, cls_distill_weight, token_distill_weight, attn_recon_weight: the loss weights
            (authors' defaults 1.0, 0.5, 0.5, 0.01). ``label_smoothing`` also smooths the CE without Mixup.
        **kwargs: :class:`ClassificationTask`'s (``model="sparsifiner_deit_small"``, ``pretrained``, ``lr``...).
    """

    def __init__(
        self,
        phase: str = "attn_recon",
        teacher: str = "deit_small_patch16_224",
        teacher_pretrained: bool = True,
        teacher_file: str | None = None,
        teacher_kwargs: dict[str, Any] | None = None,
        cls_weight: float = 1.0,
        cls_distill_weight: float = 0.5,
        token_distill_weight: float = 0.5,
        attn_recon_weight: float = 0.01,
        model: str = "sparsifiner_deit_small",
        **kwargs: Any,
    ):
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()
        set_training_phase(self.model, phase)  # checks the phase and that the model has Sparsifiner blocks
        self.loss = SparsifinerLoss(
            phase,
            cls_weight=cls_weight,
            cls_distill_weight=cls_distill_weight,
            token_distill_weight=token_distill_weight,
            attn_recon_weight=attn_recon_weight,
            label_smoothing=self.hparams.label_smoothing,
        )
        self.teacher = None
        if phase == "cls_distill":  # weights come at setup(), like the student's, never at construction
            self.teacher = timm.create_model(teacher, num_classes=self.num_classes, **(teacher_kwargs or {}))
            self.teacher.requires_grad_(False).eval()
        self._teacher_loaded = False

    def setup(self, stage: str) -> None:
        """Load the teacher's weights once, unless a checkpoint (which holds them) is being restored."""
        super().setup(stage)
        hp = self.hparams
        if self.teacher is None or self._teacher_loaded or not (hp.teacher_pretrained or hp.teacher_file):
            return
        self._teacher_loaded = True
        if self._trainer is not None and self.trainer.ckpt_path:
            return
        overlay = dict(file=hp.teacher_file, num_classes=self.num_classes) if hp.teacher_file else None
        source = timm.create_model(
            hp.teacher,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=self.num_classes,
            **(hp.teacher_kwargs or {}),
        )
        self.teacher.load_state_dict(source.state_dict())
        rank_zero_info(f"loaded the teacher {hp.teacher} from {hp.teacher_file or 'its pretrained weights'}")

    def train(self, mode: bool = True) -> SparsifinerDistillationTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never trains: no dropout, no drop path
        return self

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup_fn is not None:
            if x.shape[0] % 2:
                raise ValueError(f"Mixup/CutMix need an even batch size, got {x.shape[0]} (use drop_last)")
            x, y = self.mixup_fn(x, y)
        student = student_forward(self.model, x)
        teacher = teacher_forward(self.teacher, x) if self.teacher is not None else None
        loss, parts = self.loss(student, teacher, y)
        batch_size = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=True, batch_size=batch_size)
        return loss
