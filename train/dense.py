"""The base of the dense tasks (detection, segmentation): a decoder on a timm backbone, trained the mmdet/mmseg way.

timm's optimiser with the backbone's weight-decay groups and layer decay (``backbone_lr_mult`` on top), the
decoder in plain weight-decay groups, and a timm schedule stepped per update whose warmup is given in steps,
as the dense-prediction recipes give it. Pretrained backbone weights load once, at ``setup``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn

from ._backbone import check_backbone, check_graft, check_input_size
from .optim import check_opt_and_sched, param_groups, per_update_schedule

__all__ = ["DenseTask"]


class DenseTask(LightningModule):
    """What :class:`~attnzoo.train.DetectionTask` and :class:`~attnzoo.train.SegmentationTask` share.

    A subclass saves hyperparameters holding ``backbone, pretrained, graft, input_size, opt, lr, weight_decay,
    opt_kwargs, layer_decay, backbone_lr_mult, sched, warmup_steps, warmup_lr, min_lr, sched_kwargs`` and
    implements :meth:`_load_pretrained` and :meth:`optimizer_modules`.
    """

    pretrained_into = "backbone"  # the part the pretrained weights go into (for the log line)

    def check_dense_args(self) -> tuple[int, int] | None:
        """The shared arguments, each error naming its argument; returns ``input_size`` as a pair (or ``None``)."""
        hp = self.hparams
        check_backbone(hp.backbone)
        check_opt_and_sched(hp.opt, hp.sched)
        if hp.lr <= 0:
            raise ValueError(f"lr must be > 0, got {hp.lr}")
        if hp.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {hp.warmup_steps}")
        if hp.backbone_lr_mult < 0:
            raise ValueError(f"backbone_lr_mult must be >= 0, got {hp.backbone_lr_mult}")
        check_graft(hp.graft)
        return check_input_size(hp.input_size)

    # --- weights -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the backbone's pretrained weights once, unless a Lightning checkpoint is about to overwrite them.

        Not in ``__init__``: ``validate --ckpt_path`` and the configs' dry instantiation must not download.
        """
        if not self.hparams.pretrained or getattr(self, "_pretrained_loaded", False):
            return
        if self._trainer is not None and self.trainer.ckpt_path:
            rank_zero_info(f"not loading pretrained weights: restoring {self.trainer.ckpt_path}")
        else:
            self._load_pretrained()
            rank_zero_info(f"loaded the pretrained weights of {self.hparams.backbone} into the {self.pretrained_into}")
        self._pretrained_loaded = True

    def _load_pretrained(self) -> None:
        """Copy timm's pretrained weights into the backbone."""
        raise NotImplementedError

    # --- optimisation ------------------------------------------------------------------------------
    def optimizer_modules(self) -> tuple[nn.Module, nn.Module]:
        """``(backbone, everything else that trains)``."""
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        """``sched_kwargs`` milestones (``decay_milestones``) are in epochs, like timm's; ``poly`` defaults to
        power 1 (``decay_rate``), mmseg's, where timm's own default is 0.1."""
        hp = self.hparams
        backbone, rest = self.optimizer_modules()
        inner = getattr(backbone, "model", backbone)  # smp's TimmUniversalEncoder keeps the timm model in .model
        groups = param_groups(inner, hp.weight_decay, hp.layer_decay)
        for group in groups:
            group["lr_scale"] = group.get("lr_scale", 1.0) * hp.backbone_lr_mult
        groups += param_groups_weight_decay(rest, weight_decay=hp.weight_decay)
        groups = [g for g in groups if g["params"]]
        optimizer = create_optimizer_v2(
            groups, opt=hp.opt, lr=hp.lr, weight_decay=hp.weight_decay, **(hp.opt_kwargs or {})
        )
        sched_kwargs = dict(hp.sched_kwargs or {})
        if hp.sched == "poly":
            sched_kwargs.setdefault("decay_rate", 1.0)
        return per_update_schedule(
            self, optimizer, hp.sched, hp.warmup_lr, hp.min_lr, sched_kwargs, warmup_steps=hp.warmup_steps
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # --- logging -----------------------------------------------------------------------------------
    def log_train(self, loss: torch.Tensor, batch_size: int, parts: dict[str, torch.Tensor] | None = None) -> None:
        """The training loss (and its ``parts``) and the largest group's lr, every step."""
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        if parts:
            self.log_dict(
                {f"train/{k}": v for k, v in parts.items()}, on_step=True, on_epoch=False, batch_size=batch_size
            )
        lr = max(group["lr"] for group in self.optimizers().param_groups)
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=batch_size)
