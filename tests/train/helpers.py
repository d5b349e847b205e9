"""Small callbacks the tests hand to ``attnzoo-train`` by class path, and a tiny model config."""

from __future__ import annotations

from lightning.pytorch import Callback

# A reduced NAT (three stages, 3x3 neighbourhoods): built in milliseconds, trains on 32-px images.
TINY_NAT = {"embed_dim": 16, "depths": [1, 1, 1], "num_heads": [1, 2, 4], "mlp_ratio": 2.0, "kernel_size": 3}


class InterruptAt(Callback):
    """Raise ``KeyboardInterrupt`` (as Ctrl-C does) once ``global_step`` reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


class RecordStart(Callback):
    """Remember the step and epoch a fit starts at (after a checkpoint was restored)."""

    def __init__(self):
        self.start_step: int | None = None
        self.start_epoch: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step, self.start_epoch = trainer.global_step, trainer.current_epoch


class KillAt(Callback):
    """SIGKILL this process (no clean-up, no save) once ``global_step`` reaches ``step``: a crash, not a Ctrl-C."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def write_coco_2017(root):
    """A 2-image COCO tree with the names the detection recipes use: ``{train,val}2017/`` and
    ``annotations/instances_{train,val}2017.json`` (3 categories)."""
    from attnzoo.train.synthetic import write_coco_shapes

    root = write_coco_shapes(root, num_train=2, num_val=1)
    for split in ("train", "val"):
        (root / split).rename(root / f"{split}2017")
        (root / "annotations" / f"instances_{split}.json").rename(root / "annotations" / f"instances_{split}2017.json")
    return root
