"""``attnzoo-train predict`` output: top-k classes in a CSV, detections as COCO results JSON, segmentation PNGs.

What is written follows the task's ``prediction_kind``: classification (the default), ``detection``
(:class:`~attnzoo.train.DetectionTask`) or ``segmentation`` (:class:`~attnzoo.train.SegmentationTask`).

Detection: ``predictions.json`` in the run folder, COCO's results format (a list of ``{image_id, category_id,
category_name, bbox [x, y, w, h], score}``, plus ``segmentation`` as compressed RLE ``{size, counts}`` for Mask
R-CNN), in the original image's pixels; ``image_id`` and ``category_id`` are the annotation file's (a plain folder
of images: the file name), so ``COCO.loadRes`` takes the file as it is. Each process streams its images' results
as JSON lines to a hidden part; rank 0 merges them as the CSV's parts are merged.

Segmentation: the folder ``predictions/`` holds ``<image stem>.png``, the class index of every pixel at the image's
own size (8-bit, 16-bit when there are more than 256 classes), and with ``overlay`` ``overlay/<image stem>.png``,
the image blended with a colour per class. The images are written into a hidden folder next to it that is renamed
into place when every process is done; an existing folder is only replaced with ``overwrite``.

Classification: the top-k classes of every image, with class names, in one CSV.

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
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from faster_coco_eval.core import mask as coco_mask
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["PredictionWriter", "atomic_write", "merge_parts"]

DEFAULT_NAME = "predictions.csv"
DEFAULT_NAMES = {"classification": DEFAULT_NAME, "detection": "predictions.json", "segmentation": "predictions"}


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

    def write(f: IO) -> None:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows[key] for key in sorted(rows))

    atomic_write(out, write, newline="")
    for part in parts:
        part.unlink(missing_ok=True)
    return len(rows)


def atomic_write(out: Path, write: Callable[[IO], None], **open_kwargs: Any) -> None:
    """``write(file)`` into a hidden temporary file next to ``out``, synced and renamed over it: ``out`` is either
    the earlier file or the whole new one, never a part (every writer of predictions goes through here)."""
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "w", **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _batch_paths(batch: Any) -> list[str] | None:
    """The image paths a batch carries as its third item (``ImageFolderData``'s predict split), else ``None``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        paths = batch[2]
        if isinstance(paths, (tuple, list)) and all(isinstance(p, str) for p in paths):
            return list(paths)
    return None


def merge_json_parts(parts: Sequence[Path], out: Path) -> int:
    """The results in ``parts`` (JSON lines ``[dataloader, index, [result, ...]]``) as one JSON list in index order,
    written atomically to ``out``; the number of images. The parts are removed."""
    images: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(
                f"predictions: {str(part)!r} (another process's results) is not visible here; put "
                "predictions.path (or trainer.default_root_dir) on a filesystem all nodes share"
            )
        with open(part) as f:
            for line in f:
                dataloader, index, results = json.loads(line)
                images[(dataloader, index)] = results
    results = [r for key in sorted(images) for r in images[key]]
    atomic_write(out, lambda f: json.dump(results, f))
    for part in parts:
        part.unlink(missing_ok=True)
    return len(images)


def coco_results(
    prediction: dict[str, Any], label_to_category: dict[int, int], names: dict[int, str]
) -> list[dict[str, Any]]:
    """One image's detections as COCO results; boxes xyxy -> ``[x, y, w, h]``, masks -> compressed RLE."""
    boxes = prediction["boxes"].detach().float().cpu()
    boxes[:, 2:] -= boxes[:, :2]
    scores = prediction["scores"].detach().float().cpu().tolist()
    labels = prediction["labels"].detach().cpu().tolist()
    image_id = prediction["image_id"]
    image_id = int(image_id) if isinstance(image_id, (int, torch.Tensor, np.integer)) else str(image_id)
    rles = None
    if "masks" in prediction:
        masks = prediction["masks"].detach().cpu().numpy().astype(np.uint8)  # (N, H, W)
        rles = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    results = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels, strict=True)):
        category = label_to_category.get(int(label), int(label))
        result = {
            "image_id": image_id,
            "category_id": category,
            "bbox": [round(v, 2) for v in box],
            "score": round(float(score), 5),
        }
        if category in names:
            result["category_name"] = names[category]
        if rles is not None:
            rle = rles[i]
            counts = rle["counts"]
            result["segmentation"] = {
                "size": [int(v) for v in rle["size"]],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
        results.append(result)
    return results


def _command_error(message: str) -> Exception:
    """An error the CLI prints as one line (``CommandError``; imported here: the CLI imports this module)."""
    from .cli import CommandError

    return CommandError(message)


def palette(classes: int) -> np.ndarray:
    """A fixed colour per class, ``(classes, 3)`` uint8 (the same on every run)."""
    return np.random.default_rng(0).integers(0, 256, size=(classes, 3), dtype=np.uint8)


class PredictionWriter(BasePredictionWriter):
    """Writes the ``top_k`` most probable classes of each predicted image to ``path`` (see the module doc).

    ``predict_step`` must return class probabilities ``(batch, classes)`` (``ClassificationTask`` does); other
    outputs of a task without a ``prediction_kind`` are left alone with a warning: no CSV is written for them.

    A task whose ``prediction_kind`` is ``detection`` (``predict_step``: per image ``image_id``, ``boxes`` xyxy in
    original pixels, ``scores``, ``labels`` 1..K, optional boolean ``masks``) or ``segmentation`` (per image
    ``path`` and ``label_map`` at the original size) gets the COCO results JSON or the folder of label maps
    instead (see the module doc); the category ids and names are the data module's ``category_to_label`` and
    ``categories`` (``CocoData``'s).

    Args:
        path: the CSV, JSON or folder; ``None``: ``predictions.csv``, ``predictions.json`` or ``predictions/`` in
            ``trainer.default_root_dir``.
        top_k: classes per image (clamped to the number of classes).
        overlay: segmentation: also write colour overlays (``overlay/<image stem>.png`` in the folder).
        overwrite: segmentation: replace an existing predictions folder (it is refused otherwise).
    """

    def __init__(self, path: str | None = None, top_k: int = 5, overlay: bool = False, overwrite: bool = False):
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.path = path
        self.top_k = top_k
        self.overlay = overlay
        self.overwrite = overwrite
        self._kind = "classification"
        self._reset()

    def _reset(self) -> None:
        self._file: IO | None = None
        self._part: Path | None = None
        self._csv: Any = None
        self._k: int | None = None
        self._names: list[str] | None = None
        self._skip = False
        self._seen = 0
        self._staging: Path | None = None
        self._palette: np.ndarray | None = None
        self._categories: tuple[dict[int, int], dict[int, str]] | None = None

    def output_path(self, trainer: Trainer) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        return Path(trainer.default_root_dir or ".") / DEFAULT_NAMES[self._kind]

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close(remove=True)  # a part left by an earlier predict of this trainer
        self._remove_staging()
        self._reset()
        kind = getattr(pl_module, "prediction_kind", "classification")
        self._kind = kind if kind in DEFAULT_NAMES else "classification"
        out = self.output_path(trainer)
        if self._kind == "segmentation":
            self._start_folder(trainer, out)
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self._part = part_path(out, trainer.global_rank)
        self._file = open(self._part, "w", newline="")  # noqa: SIM115 (closed at the end of the predict epoch)
        self._csv = csv.writer(self._file) if self._kind == "classification" else None

    def _start_folder(self, trainer: Trainer, out: Path) -> None:
        """Refuse an existing folder without ``overwrite``; an empty hidden folder to write into (rank 0 makes it)."""
        if out.exists() and not self.overwrite and (not out.is_dir() or any(out.iterdir())):
            raise _command_error(
                f"predictions.path: {out} already exists; replace it with --predictions.overwrite true or choose "
                "another --predictions.path"
            )
        self._staging = out.with_name(f".{out.name}.tmp")
        if trainer.global_rank == 0:
            shutil.rmtree(self._staging, ignore_errors=True)  # left by a killed run
            (self._staging / "overlay" if self.overlay else self._staging).mkdir(parents=True)
        trainer.strategy.barrier("attnzoo_predictions_start")
        self._palette = None

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
        if self._kind == "detection":
            self._write_detections(trainer, prediction, batch_indices, dataloader_idx)
            return
        if self._kind == "segmentation":
            self._write_label_maps(pl_module, prediction)
            return
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

    def _indices(self, trainer: Trainer, batch_indices: Sequence[int] | None, count: int) -> list[int]:
        """The batch's dataset indices; unknown: numbered as a DistributedSampler would."""
        if batch_indices is None or len(batch_indices) != count:
            batch_indices = [(self._seen + i) * trainer.world_size + trainer.global_rank for i in range(count)]
        self._seen += count
        return list(batch_indices)

    def _write_detections(
        self, trainer: Trainer, prediction: Any, batch_indices: Sequence[int] | None, dataloader_idx: int
    ) -> None:
        if self._file is None:
            return
        if not (isinstance(prediction, list) and all(isinstance(p, dict) and "image_id" in p for p in prediction)):
            raise _command_error(
                "predictions: detection results need each image's image_id and original size: predict with "
                "CocoData (data.predict_split for a plain folder of images)"
            )
        if self._categories is None:
            data = trainer.datamodule
            category_to_label = getattr(data, "category_to_label", None) or {}
            self._categories = ({v: k for k, v in category_to_label.items()}, dict(getattr(data, "categories", {})))
        for index, image in zip(self._indices(trainer, batch_indices, len(prediction)), prediction, strict=True):
            results = coco_results(image, *self._categories)
            self._file.write(json.dumps([dataloader_idx, index, results]) + "\n")

    def _write_label_maps(self, pl_module: LightningModule, prediction: Any) -> None:
        if self._staging is None:
            return
        if not (isinstance(prediction, list) and all(isinstance(p, dict) and "label_map" in p for p in prediction)):
            raise _command_error(
                "predictions: segmentation label maps need each image's path and original size: predict with "
                "SegFolderData (data.predict_split for another folder of images)"
            )
        from PIL import Image

        from ._images import read_rgb

        classes = int(getattr(pl_module, "num_classes", 0))
        dtype = np.uint16 if classes > 256 else np.uint8
        for item in prediction:
            labels = item["label_map"].detach().cpu().numpy()
            stem = Path(item["path"]).stem
            Image.fromarray(labels.astype(dtype)).save(self._staging / f"{stem}.png")
            if self.overlay:
                if self._palette is None:
                    self._palette = palette(max(classes, int(labels.max()) + 1))
                image = np.asarray(read_rgb(item["path"]), dtype=np.float32)
                blend = 0.5 * image + 0.5 * self._palette[labels].astype(np.float32)
                Image.fromarray(blend.round().astype(np.uint8)).save(self._staging / "overlay" / f"{stem}.png")
            self._seen += 1

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
        if self._kind == "detection":
            images = merge_json_parts([part_path(out, rank) for rank in range(trainer.world_size)], out)
            rank_zero_info(f"predictions: wrote the COCO results of {images} images to {out}")
            return
        if self._kind == "segmentation":
            self._publish_folder(out)
            count = sum(1 for p in out.iterdir() if p.suffix == ".png")
            rank_zero_info(f"predictions: wrote the label maps of {count} images to {out}")
            return
        parts = [part_path(out, rank) for rank in range(trainer.world_size)]
        rows = merge_parts(parts, out, self.header())
        rank_zero_info(f"predictions: wrote the top-{self._k} classes of {rows} images to {out}")

    def _publish_folder(self, out: Path) -> None:
        """The hidden folder renamed into place; an earlier folder (``overwrite``) is moved aside, then deleted."""
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(self._staging, out)
        self._staging = None
        shutil.rmtree(old, ignore_errors=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """An interrupted predict leaves no part or half-written folder behind (earlier outputs untouched)."""
        self._close(remove=True)
        self._remove_staging()

    def _remove_staging(self) -> None:
        staging = getattr(self, "_staging", None)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            self._staging = None

    def _close(self, remove: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._csv = None
        if remove and self._part is not None:
            self._part.unlink(missing_ok=True)
