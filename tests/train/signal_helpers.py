"""What the checkpoint and signal tests share: a task checkpoint made without training, and a callback that holds a
run at a chosen batch until the test's signal has arrived (so that it lands exactly there)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback

from tests.train.helpers import TINY_NAT

TASK = "attnzoo.train.ClassificationTask"


def task_checkpoint(path: Path, **hparams: Any) -> Path:
    """A ``ClassificationTask`` checkpoint of a fresh tiny NAT (3 classes): enough for validate/test/predict; the
    ``hyper_parameters`` are the task's with ``hparams`` laid over them (any value, for the tests that forge one)."""
    from attnzoo.train import ClassificationTask

    task = ClassificationTask(model="nat_mini", model_kwargs=TINY_NAT, num_classes=3)
    saved = {"_class_path": TASK, **dict(task.hparams), **hparams}
    ckpt = {
        "state_dict": task.state_dict(),
        "hyper_parameters": saved,
        "pytorch-lightning_version": lightning.__version__,
        "label_names": ["circle", "square", "stripes"],
    }
    torch.save(ckpt, path)
    return path


def popen_spec(marker: Path) -> dict[str, Any]:
    """What jsonargparse would build into ``subprocess.Popen("touch MARKER", shell=True)``: a shell command."""
    return {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}


class PauseForSignal(Callback):
    """At one batch (``hook``: ``train`` after global step ``step``, ``validation`` at the first batch of epoch
    ``epoch``'s validation, ``predict`` after the first batch) write ``marker``, then wait until attnzoo's
    ``StopOnSignal`` has seen a signal (at most ``timeout`` seconds): the test polls the marker and signals."""

    def __init__(self, marker: str, hook: str = "train", step: int = 1, epoch: int = 0, timeout: float = 30.0):
        self.marker, self.hook, self.step, self.epoch, self.timeout = Path(marker), hook, step, epoch, timeout
        self.done = False

    def _pause(self, trainer: Any, where: str) -> None:
        if self.done:
            return
        self.done = True
        self.marker.write_text(where)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not any(getattr(cb, "signum", None) for cb in trainer.callbacks):
            time.sleep(0.02)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook == "train" and trainer.global_step >= self.step:
            self._pause(trainer, f"step {trainer.global_step}")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.hook == "validation" and not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            self._pause(trainer, f"validation {trainer.current_epoch}")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.hook == "predict":
            self._pause(trainer, "predict")


class KillAtValidation(Callback):
    """SIGKILL this process at the first batch of epoch ``epoch``'s validation: a crash, no save, no clean-up."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
