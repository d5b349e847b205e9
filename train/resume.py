"""A resumed ``fit`` trains with the command's optimizer and schedule settings, not the checkpoint's.

Lightning restores the optimizer's parameter groups (``lr``, ``initial_lr``, ``weight_decay``...) and the
scheduler's state from the checkpoint, over the ones the task has just built from its arguments, so
``fit --ckpt_path last --model.lr 0.5`` would silently keep the old learning rate. :class:`CommandOptimizerSettings`
keeps what the checkpoint carries that is progress (moment estimates, step counts) and puts back what the command
configured: each group's settings and the state of timm schedulers, whose learning rate is a function of the
update count and so is recomputed for the step the run resumes at.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["CommandOptimizerSettings"]


def _same(a: Any, b: Any) -> bool:
    """Equality of two settings, tensors included (an optimizer may keep ``betas`` or ``eps`` as tensors)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # containers of tensors: compare as different, i.e. re-apply
        return False


def _group_settings(optimizer: Any) -> list[dict[str, Any]]:
    """Each parameter group's settings, without its parameters and its current ``lr`` (the schedule's output)."""
    return [{k: copy.deepcopy(v) for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]


class CommandOptimizerSettings(Callback):
    """Re-applies the optimizer settings and timm scheduler states built from the command after a checkpoint's
    training state was restored (see the module doc); a no-op when they equal the checkpoint's."""

    def __init__(self) -> None:
        self._groups: list[list[dict[str, Any]]] = []
        self._schedulers: list[dict[str, Any] | None] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The optimizers are configured, the checkpoint's training state not yet restored."""
        self._groups = [_group_settings(optimizer) for optimizer in trainer.optimizers]
        self._schedulers = [
            copy.deepcopy(config.scheduler.state_dict()) if hasattr(config.scheduler, "step_update") else None
            for config in trainer.lr_scheduler_configs
        ]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The checkpoint's state is restored: put the command's settings back where they differ."""
        if not trainer.ckpt_path:
            return
        changed: set[str] = set()
        for optimizer, groups in zip(trainer.optimizers, self._groups, strict=False):
            for group, settings in zip(optimizer.param_groups, groups, strict=False):
                for key, value in settings.items():
                    if not _same(group.get(key), value):
                        group[key] = value
                        changed.add(key)
        for config, state in zip(trainer.lr_scheduler_configs, self._schedulers, strict=False):
            if state is not None and not _same(config.scheduler.state_dict(), state):
                config.scheduler.load_state_dict(state)
                config.scheduler.step_update(num_updates=trainer.global_step)  # the lr of the resumed step
                changed.add("schedule")
        if changed:
            rank_zero_info(
                f"resumed with this command's optimizer settings ({', '.join(sorted(changed))}), not the checkpoint's"
            )
