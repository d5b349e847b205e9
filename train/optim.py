"""timm's optimiser pieces as every task here uses them: parameter groups, argument checks, a per-update schedule.

Only timm's schedulers apply each group's ``lr_scale`` (layer-wise lr decay); a torch scheduler would drop
it silently, which is why the CLI's automatic optimizer arguments are off and the tasks build their own.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.optim import list_optimizers, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "wsd", "rsqrt", "constant")


def check_opt_and_sched(opt: str, sched: str) -> None:
    if opt.lower().split("_")[-1] not in list_optimizers():
        raise ValueError(f"opt: unknown timm optimizer {opt!r}; see timm.optim.list_optimizers()")
    if sched not in SCHEDULERS:
        raise ValueError(f"sched: {sched!r} is not one of {', '.join(SCHEDULERS)}")


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
    """timm's groups: no decay on norms, biases and ``no_weight_decay()``; layer-wise lr decay over
    ``group_matcher`` when ``layer_decay`` is set."""
    no_decay = set(getattr(model, "no_weight_decay", lambda: ())())
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"layer_decay: {type(model).__name__} has no group_matcher")
        return param_groups_layer_decay(
            model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_decay
        )
    return param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay)


def per_update_schedule(
    task: LightningModule,
    optimizer: Any,
    sched: str,
    warmup_lr: float,
    min_lr: float,
    sched_kwargs: dict[str, Any] | None = None,
    warmup_epochs: float = 0.0,
    warmup_steps: int = 0,
    cooldown_epochs: float = 0.0,
) -> dict[str, Any]:
    """Lightning's optimizer config: ``optimizer`` and a timm scheduler stepped every optimizer update.

    The decay spans the run (``max_epochs``/``max_steps``) minus ``cooldown_epochs`` held at ``min_lr``, as
    timm's ``train.py`` does. Warmup comes in epochs (timm's recipes) or steps (mmdet/mmseg give iterations).
    """
    trainer = task.trainer
    total = int(trainer.estimated_stepping_batches)  # optimizer updates of the whole fit
    batches = trainer.num_training_batches
    if math.isfinite(batches) and batches > 0:
        per_epoch = float(math.ceil(batches / trainer.accumulate_grad_batches))
    else:
        per_epoch = float(total)
    epochs = total / per_epoch - cooldown_epochs
    warmup = warmup_epochs + warmup_steps / per_epoch
    if epochs <= warmup and sched != "constant":
        rank_zero_info(f"the run ({total} updates) is shorter than warmup + cooldown; the lr never decays")
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=max(epochs, 1.0 / per_epoch),
        warmup_epochs=warmup,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        cooldown_epochs=cooldown_epochs,
        step_on_epochs=False,
        updates_per_epoch=per_epoch,
        **(sched_kwargs or {}),
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
