"""``attnzoo-train predict`` output: the top-k classes of every image, with class names, in one CSV.

The columns are those of timm's ``inference.py`` with ``--results-separate-col``: ``filename``, ``index_0`` ...
(class indices, most probable first), ``label_0`` ... (class names, when the checkpoint or the data module knows
them) and ``prob_0`` .... Rows follow the dataset's order.

Each process streams its rows to a hidden part file next to the CSV; when prediction ends, rank 0 merges the parts
(by dataset index, so the order is the dataset's under DDP too) into a temporary file that is renamed over the CSV.
An interrupted run therefore never leaves a half-written CSV (an earlier one stays as it was), and its part files
are removed. Under multi-node DDP the CSV's folder must be visible to every node (a shared filesystem).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["PredictionWriter", "merge_parts"]

DEFAULT_NAME = "predictions.csv"


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.name}.rank{rank}.part")


def merge_parts(parts: Sequence[Path], out: Path, header: list[str]) -> int:
    """Write the rows of ``parts`` (``dataloader, index, *row``) to ``out`` in index order, atomically; the
    number of rows. A row seen in two parts (a sampler that pads) is written once; the parts are removed."""
    rows: dict[tuple[int, int], list[str]] = {}
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(
                f"predictions: {str(part)!r} (another process's rows) is not visible here; put the CSV "
                "(predictions.path or trainer.default_root_dir) on a filesystem all nodes share"
            )
        with open(part, newline="") as f:
            for row in csv.reader(f):
                rows[(int(row[0]), int(row[1]))] = row[2:]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows[key] for key in sorted(rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    return len(rows)


def _batch_paths(batch: Any) -> list[str] | None:
    """The image paths a batch carries as its third item (``ImageFolderData``'s predict split), else ``None``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        paths = batch[2]
        if isinstance(paths, (tuple, list)) and all(isinstance(p, str) for p in paths):
            return list(paths)
    return None


class PredictionWriter(BasePredictionWriter):
    """Writes the ``top_k`` most probable classes of each predicted image to ``path`` (see the module doc).

    ``predict_step`` must return class probabilities ``(batch, classes)`` (``ClassificationTask`` does). Other
    outputs (detection boxes, segmentation maps) are left alone with a warning: no CSV is written for them.

    Args:
        path: the CSV; ``None``: ``predictions.csv`` in ``trainer.default_root_dir``.
        top_k: classes per image (clamped to the number of classes).
    """

    def __init__(self, path: str | None = None, top_k: int = 5):
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.path = path
        self.top_k = top_k
        self._reset()

    def _reset(self) -> None:
        self._file: IO | None = None
        self._part: Path | None = None
        self._csv: Any = None
        self._k: int | None = None
        self._names: list[str] | None = None
        self._skip = False
        self._seen = 0

    def output_path(self, trainer: Trainer) -> Path:
        return Path(self.path).expanduser() if self.path else Path(trainer.default_root_dir or ".") / DEFAULT_NAME

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(remove=True)  # a part left by an earlier predict of this trainer
        self._reset()
        out = self.output_path(trainer)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._part = part_path(out, trainer.global_rank)
        self._file = open(self._part, "w", newline="")  # noqa: SIM115 (closed at the end of the predict epoch)
        self._csv = csv.writer(self._file)

    def _label_names(self, trainer: Trainer, pl_module: LightningModule, classes: int) -> list[str] | None:
        """The model's class names (restored from its checkpoint), else the data module's; ``None`` if unknown."""
        for source in (pl_module, trainer.datamodule):
            names = getattr(source, "label_names", None)
            if not names:
                continue
            if len(names) == classes:
                return [str(name) for name in names]
            rank_zero_warn(
                f"predictions: {type(source).__name__} names {len(names)} classes but the model predicts {classes}; "
                "the CSV has no label columns"
            )
            return None
        return None

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if self._skip or self._csv is None:
            return
        if not (isinstance(prediction, torch.Tensor) and prediction.ndim == 2 and prediction.is_floating_point()):
            rank_zero_warn(
                f"predictions: {type(pl_module).__name__}.predict_step returns no class probabilities "
                "(batch, classes); no CSV is written"
            )
            self._skip = True
            return
        classes = prediction.shape[1]
        if self._k is None:
            self._k = min(self.top_k, classes)
            self._names = self._label_names(trainer, pl_module, classes)
        probs, indices = prediction.detach().float().topk(self._k, dim=1)
        paths = _batch_paths(batch)
        count = prediction.shape[0]
        if batch_indices is None or len(batch_indices) != count:  # unknown: number rows as a DistributedSampler would
            batch_indices = [(self._seen + i) * trainer.world_size + trainer.global_rank for i in range(count)]
        self._seen += count
        for i, (index, top, p) in enumerate(zip(batch_indices, indices.tolist(), probs.tolist(), strict=True)):
            labels = [self._names[c] for c in top] if self._names is not None else []
            filename = paths[i] if paths is not None else str(index)
            self._csv.writerow([dataloader_idx, index, filename, *top, *labels, *(f"{x:.6g}" for x in p)])

    def header(self) -> list[str]:
        k = self._k or 0
        labels = [f"label_{i}" for i in range(k)] if self._names is not None else []
        return ["filename", *(f"index_{i}" for i in range(k)), *labels, *(f"prob_{i}" for i in range(k))]

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Close this process's part; rank 0 merges all parts into the CSV once every process has closed its own."""
        self._close(remove=self._skip)
        out = self.output_path(trainer)
        trainer.strategy.barrier("attnzoo_predictions")
        if self._skip or trainer.global_rank != 0:
            return
        parts = [part_path(out, rank) for rank in range(trainer.world_size)]
        rows = merge_parts(parts, out, self.header())
        rank_zero_info(f"predictions: wrote the top-{self._k} classes of {rows} images to {out}")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """An interrupted predict leaves no part behind (and the CSV of an earlier run untouched)."""
        self._close(remove=True)

    def _close(self, remove: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._csv = None
        if remove and self._part is not None:
            self._part.unlink(missing_ok=True)
