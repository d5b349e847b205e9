"""ADE20K-style segmentation folders as a LightningDataModule, with mmsegmentation's pipeline in torchvision's v2.

``images/{training,validation}/*`` with PNG label maps of the same stem under ``annotations/...``. Training:
random rescale of the base scale by 0.5-2.0, random crop, flip, colour jitter; evaluation: a resize with kept
aspect. ``reduce_zero_label`` maps ADE20K's "unlabelled" 0 to the ignore index 255 and shifts the classes down
by one, as every ADE20K recipe does. Label maps are read at their full depth (8- or 16-bit); a value that is neither
a class nor the ignore index is an error naming the file.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ._images import IMAGE_EXTENSIONS, list_images, read_label_map, read_rgb
from ._splits import SplitDataModule
from .synthetic import write_ade_shapes

__all__ = ["IGNORE_INDEX", "SegFolderData", "int_pair", "pad_collate"]

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def int_pair(value: int | list[int] | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or [height, width], got {value}")
    return int(pair[0]), int(pair[1])


class _RescaleKeepRatio:
    """mmseg's ``Resize(img_scale=(long, short), ratio_range)``: fit inside ``ratio * (long, short)``, keep aspect."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] | None):
        self.long, self.short = max(scale), min(scale)
        self.ratio_range = ratio_range

    def size_for(self, h: int, w: int, ratio: float = 1.0) -> list[int]:
        factor = min(self.long * ratio / max(h, w), self.short * ratio / min(h, w))
        return [max(1, round(h * factor)), max(1, round(w * factor))]

    def __call__(self, image, mask):
        ratio = random.uniform(*self.ratio_range) if self.ratio_range else 1.0
        size = self.size_for(*image.shape[-2:], ratio)
        return v2.functional.resize(image, size, antialias=True), v2.functional.resize(mask, size)


def _class_indices(values: np.ndarray, num_classes: int, reduce_zero_label: bool, path: Path) -> np.ndarray:
    """A label map's values -> class indices in ``[0, num_classes)`` or ``IGNORE_INDEX``; others raise naming the file.

    ``reduce_zero_label`` (ADE20K: 0 is "other", not a class): 0 becomes the ignore index and the classes shift down
    by one; a 255 stays the ignore index, as in mmsegmentation. A value that is no class would otherwise be trained
    on as a wrong class or crash the loss far from here.
    """
    ignored = (values == IGNORE_INDEX) | (reduce_zero_label & (values == 0))
    classes = values - 1 if reduce_zero_label else values
    bad = ~ignored & ((classes < 0) | (classes >= num_classes))
    if bad.any():
        first = int(reduce_zero_label)
        unlabelled = ", 0 unlabelled" if reduce_zero_label else ""
        raise ValueError(
            f"label map {str(path)!r}: values {np.unique(values[bad])[:10].tolist()} are neither classes "
            f"({first}..{num_classes - 1 + first}{unlabelled}) nor the ignore index {IGNORE_INDEX} (num_classes is "
            f"{num_classes})"
        )
    return np.where(ignored, IGNORE_INDEX, classes)


class _SegDataset(Dataset):
    """Image / label-map pairs matched by file stem; ``transform(image, mask)`` gets tv_tensors."""

    def __init__(
        self, images: Path, annotations: Path, num_classes: int, reduce_zero_label: bool, transform, what: str
    ):
        if not images.is_dir():
            raise FileNotFoundError(f"{what}: no image folder {str(images)!r}")
        if not annotations.is_dir():
            raise FileNotFoundError(f"{what}: no annotation folder {str(annotations)!r}")
        labels = {p.stem: p for p in annotations.iterdir() if p.suffix.lower() == ".png"}
        self.items = []
        for path in sorted(images.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                if path.stem not in labels:
                    raise FileNotFoundError(f"image {str(path)!r} has no label map {path.stem}.png in {annotations}")
                self.items.append((path, labels[path.stem]))
        if not self.items:
            raise ValueError(f"{str(images)!r} holds no images")
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, label_path = self.items[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(read_rgb(image_path)))
        label = torch.from_numpy(
            _class_indices(read_label_map(label_path), self.num_classes, self.reduce_zero_label, label_path)
        )
        return self.transform(image, tv_tensors.Mask(label[None]))


class _Pipeline:
    """Train or eval preprocessing of one (image, mask) pair; returns ``(float image CHW, long mask HW)``."""

    def __init__(self, scale, ratio_range, crop_size, hflip, color_jitter, mean, std, training: bool):
        self.rescale = _RescaleKeepRatio(scale, ratio_range if training else None)
        self.crop_size = crop_size if training else None
        self.flip = v2.RandomHorizontalFlip(hflip) if training and hflip > 0 else None
        self.jitter = (
            v2.ColorJitter(color_jitter, color_jitter, color_jitter, min(color_jitter, 0.5) / 2)
            if training and color_jitter
            else None
        )
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, image, mask):
        image, mask = self.rescale(image, mask)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            h, w = image.shape[-2:]
            pad = [0, 0, max(cw - w, 0), max(ch - h, 0)]
            if any(pad):
                image = v2.functional.pad(image, pad, fill=0)
                mask = v2.functional.pad(mask, pad, fill=IGNORE_INDEX)
            top, left, _, _ = v2.RandomCrop.get_params(image, (ch, cw))
            image = v2.functional.crop(image, top, left, ch, cw)
            mask = v2.functional.crop(mask, top, left, ch, cw)
        if self.flip is not None:
            image, mask = self.flip(image, mask)
        if self.jitter is not None:
            image = self.jitter(image)
        return self.normalize(image), mask[0].long()


class _PredictDataset(Dataset):
    """The images of a folder (label maps not needed) with evaluation's resize and normalisation; each item is
    ``(image, {"path", "orig_size", "size"})`` so that predictions can be mapped back to the original pixels."""

    def __init__(self, images: Path, pipeline: _Pipeline, what: str):
        if not images.is_dir():
            raise FileNotFoundError(f"{what}: no image folder {str(images)!r}")
        self.paths = list_images(images, what)
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(read_rgb(path)))
        orig_size = tuple(image.shape[-2:])
        image = v2.functional.resize(image, self.pipeline.rescale.size_for(*orig_size), antialias=True)
        meta = {"path": str(path), "orig_size": orig_size, "size": tuple(image.shape[-2:])}
        return self.pipeline.normalize(image).as_subclass(torch.Tensor), meta


def predict_collate(batch: list[tuple[torch.Tensor, dict]], multiple: int = 32):
    """Images padded like :func:`pad_collate` (zeros), with their metadata as a list."""
    images, metas = zip(*batch, strict=True)
    height = math.ceil(max(image.shape[-2] for image in images) / multiple) * multiple
    width = math.ceil(max(image.shape[-1] for image in images) / multiple) * multiple
    out = torch.zeros(len(images), images[0].shape[0], height, width)
    for i, image in enumerate(images):
        out[i, :, : image.shape[-2], : image.shape[-1]] = image
    return out, list(metas)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]], multiple: int = 32):
    """Stack variable-size pairs, padding to the batch's largest size rounded up to ``multiple`` (mask: 255)."""
    height = math.ceil(max(image.shape[-2] for image, _ in batch) / multiple) * multiple
    width = math.ceil(max(image.shape[-1] for image, _ in batch) / multiple) * multiple
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long)
    for i, (image, mask) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


class SegFolderData(SplitDataModule):
    """ADE20K-style folders (``images/<split>/*`` + ``annotations/<split>/*.png``) as a LightningDataModule.

    Args:
        root: the data set folder, e.g. ``/data/ADEChallengeData2016``.
        num_classes: classes after ``reduce_zero_label`` (ADE20K: 150), at most 255 (the ignore index); the CLI
            links it to the task.
        reduce_zero_label: label 0 is "unlabelled": map it to 255 (ignored) and shift the rest down by one (a 255
            stays ignored).
        train_split, val_split: sub-folder names under ``images/`` and ``annotations/``; ``test_split``
            defaults to ``val_split``.
        predict_split: the folder under ``images/`` that ``predict`` reads (label maps not needed); ``None``: the
            test split. Predictions are mapped back to each image's own size.
        scale: the base ``[long, short]`` side (mmseg's ``img_scale=(2048, 512)``); evaluation resizes to it.
        ratio_range: random factor on ``scale`` for training (mmseg: 0.5-2.0); ``null``: none.
        crop_size: training crop (an int or ``[height, width]``); images smaller than it are padded (label 255).
        hflip, color_jitter: flip probability and a ColorJitter strength standing in for mmseg's photometric
            distortion (0: off).
        mean, std: normalisation (ImageNet's by default, as the backbones were pretrained).
        batch_size, eval_batch_size, num_workers: DataLoader settings; evaluation batches of different-size
            images are padded to the largest (label 255), so any eval batch size works.
        synthetic: write :func:`~attnzoo.train.synthetic.write_ade_shapes` to ``root`` in ``prepare_data`` when
            ``root`` has no ``images/`` folder yet (the offline demo and the tests).
    """

    collate_fn = staticmethod(pad_collate)

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 150,
        reduce_zero_label: bool = True,
        train_split: str = "training",
        val_split: str = "validation",
        test_split: str | None = None,
        predict_split: str | None = None,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] | None = (0.5, 2.0),
        crop_size: int | tuple[int, int] = 512,
        hflip: float = 0.5,
        color_jitter: float = 0.2,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 2,
        eval_batch_size: int | None = 1,
        num_workers: int = 4,
        synthetic: bool = False,
    ):
        super().__init__()
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise ValueError(
                f"num_classes must be in 1..{IGNORE_INDEX} ({IGNORE_INDEX} is the ignore index), got {num_classes}"
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (eval_batch_size {eval_batch_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if ratio_range is not None and not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be [low, high] with 0 < low <= high, got {ratio_range}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        self.root = Path(root).expanduser()
        self.scale = int_pair(scale, "scale")
        self.crop_size = int_pair(crop_size, "crop_size")
        self.num_classes = int(num_classes)
        self.save_hyperparameters(ignore=["num_classes"])

    def prepare_data(self) -> None:
        if self.hparams.synthetic and not (self.root / "images").is_dir():
            write_ade_shapes(self.root)
            rank_zero_info(f"wrote the synthetic ADE-style shapes set to {self.root}")

    def split_names(self) -> dict[str, str]:
        names = super().split_names()
        names["predict"] = self.hparams.get("predict_split") or names["predict"]
        return names

    def _dataset(self, split: str, what: str, training: bool) -> _SegDataset | _PredictDataset:
        hp = self.hparams
        pipeline = _Pipeline(
            self.scale, hp.ratio_range, self.crop_size, hp.hflip, hp.color_jitter, hp.mean, hp.std, training
        )
        images, annotations = self.root / "images" / split, self.root / "annotations" / split
        if what == "predict_split":
            return _PredictDataset(images, pipeline, what)
        return _SegDataset(images, annotations, self.num_classes, hp.reduce_zero_label, pipeline, what)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["predict"], **{**self.loader_kwargs(False), "collate_fn": predict_collate})

    def setup(self, stage: str) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no such folder {str(self.root)!r} (synthetic: true writes a demo set)")
        super().setup(stage)
