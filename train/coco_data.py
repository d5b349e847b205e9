"""COCO-format detection data as a LightningDataModule, through torchvision's v2 transforms.

Boxes, labels and instance masks are tv_tensors, so flips and the aspect-keeping resize move them with the
image. COCO's category ids (1..90 with gaps) become contiguous labels 1..K: torchvision's detectors reserve 0
for the background and need ``num_classes = K + 1`` (RetinaNet crashes on K). Images keep their own sizes and
are not normalised here: the detector's ``GeneralizedRCNNTransform`` pads, resizes and normalises them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as coco_mask
from lightning.pytorch.utilities import rank_zero_info
from torchvision import tv_tensors
from torchvision.transforms import v2

from ._images import list_images, read_rgb
from ._splits import SplitDataModule
from .synthetic import write_coco_shapes

__all__ = ["CocoData", "detection_collate"]


def detection_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Variable-size images stay a list; torchvision's detectors batch (and pad) them themselves."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class _CocoPipeline:
    """COCO category id -> label 1..K, crowd boxes dropped for training, v2 transforms, plain tensors out."""

    def __init__(self, transforms: v2.Transform, category_to_label: dict[int, int], training: bool):
        self.transforms = transforms
        self.category_to_label = category_to_label
        self.lookup = torch.zeros(max(category_to_label) + 1, dtype=torch.int64)
        for category, label in category_to_label.items():
            self.lookup[category] = label
        self.training = training

    def __call__(self, image, target: dict[str, Any]):
        if self.training and "iscrowd" in target:  # crowd regions are ignored by the metric, never trained on
            keep = target["iscrowd"] == 0
            target = {
                k: (tv_tensors.wrap(v[keep], like=v) if isinstance(v, tv_tensors.TVTensor) else v[keep])
                if k in ("boxes", "labels", "masks", "iscrowd")
                else v
                for k, v in target.items()
            }
        target["labels"] = self.lookup[torch.as_tensor(target["labels"], dtype=torch.int64)]
        image, target = self.transforms(image, target)
        out = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return image.as_subclass(torch.Tensor), out


def _labels_and_crowd(inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``SanitizeBoundingBoxes`` filters with the boxes (masks it finds itself): labels and ``iscrowd``."""
    target = inputs[1]
    return target["labels"], target["iscrowd"]


def _categories(ann_file: Path) -> list[dict[str, Any]]:
    with open(ann_file) as f:
        return json.load(f)["categories"]


class CocoData(SplitDataModule):
    """COCO-format detection data (``root/<split>/*`` + ``root/<ann_file>``) as a LightningDataModule.

    Args:
        root: the data set folder, e.g. ``/data/coco`` with ``train2017/``, ``val2017/`` and ``annotations/``.
        ann_file: the annotation file per split relative to ``root``; ``{split}`` is replaced by the split.
        train_split, val_split: image folder names (and ``{split}`` values); ``test_split``: ``val_split``.
        predict_split: the image folder ``predict`` reads; ``None``: the test split. With an annotation file
            (``ann_file`` of that split) the results' ``image_id`` are the file's ids; without one it is a plain
            folder of images whose ids are the file names (the categories then come from ``val_split``'s file).
        num_classes: object classes K (without the background); ``None``: the categories of the validation
            annotation file are counted now. The CLI links it to the task, which adds the background.
        min_size, max_size: resize keeping the aspect so that the short side is ``min_size`` unless the long
            side would pass ``max_size`` (COCO recipes: 800 / 1333); a list of short sides draws one per training
            image (multi-scale) and evaluates at the largest. Give the task the same values: the
            detector's own transform resizes to its ``min_size``/``max_size`` again (a no-op when they agree).
        hflip: training flip probability.
        masks: load instance masks (needed by Mask R-CNN and the segm metric; off saves decoding time).
        batch_size, eval_batch_size, num_workers: DataLoader settings (per process).
        synthetic: write :func:`~attnzoo.train.synthetic.write_coco_shapes` to ``root`` in ``prepare_data``
            when its annotation files are missing (with ``train_split: train``, ``val_split: val``).
    """

    collate_fn = staticmethod(detection_collate)

    def __init__(
        self,
        root: str | Path,
        ann_file: str = "annotations/instances_{split}.json",
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str | None = None,
        predict_split: str | None = None,
        num_classes: int | None = None,
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        hflip: float = 0.5,
        masks: bool = True,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        synthetic: bool = False,
    ):
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (eval_batch_size {eval_batch_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        sizes = list(min_size) if isinstance(min_size, (list, tuple)) else [min_size]
        if not sizes or min(sizes) < 1 or max_size < max(sizes):
            raise ValueError(f"min_size/max_size must satisfy 1 <= min_size <= max_size, got {min_size}/{max_size}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        if "{split}" not in ann_file:
            raise ValueError(f"ann_file must contain '{{split}}', got {ann_file!r}")
        self.root = Path(root).expanduser()
        self.ann_file = ann_file
        if num_classes is None:
            if synthetic and not self.root.exists():
                write_coco_shapes(self.root)  # counting the classes needs the files now
            path = self.ann_path(val_split)
            if not path.is_file():
                raise FileNotFoundError(f"ann_file: no such file {str(path)!r} to count the classes in")
            num_classes = len(_categories(path))
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.save_hyperparameters(ignore=["num_classes"])
        self.category_to_label: dict[int, int] | None = None
        self.categories: dict[int, str] = {}  # category id -> name, read with the labels

    def ann_path(self, split: str) -> Path:
        """The annotation file of ``split``."""
        return self.root / self.ann_file.format(split=split)

    def split_names(self) -> dict[str, str]:
        names = super().split_names()
        names["predict"] = self.hparams.get("predict_split") or names["predict"]
        return names

    def prepare_data(self) -> None:
        if self.hparams.synthetic and not self.ann_path(self.hparams.train_split).is_file():
            write_coco_shapes(self.root)
            rank_zero_info(f"wrote the synthetic COCO shapes set to {self.root}")

    def _dataset(self, split: str, what: str, training: bool):
        hp = self.hparams
        images, ann = self.root / split, self.ann_path(split)
        if not images.is_dir():
            raise FileNotFoundError(f"{what}: no image folder {str(images)!r}")
        if what == "predict_split" and not ann.is_file():  # a plain folder of images: ids are the file names
            ann = self.ann_path(hp.val_split)
            if not ann.is_file():
                raise FileNotFoundError(f"ann_file: no such file {str(ann)!r} to read the categories from")
            self._read_categories(ann)
            return _ImageFolder(images, v2.Compose(self._eval_steps()), what)
        if not ann.is_file():
            raise FileNotFoundError(f"ann_file: no such file {str(ann)!r}")
        self._read_categories(ann)
        steps = self._eval_steps()
        if training and isinstance(hp.min_size, (list, tuple)):  # multi-scale: a short side drawn per image
            steps[0] = v2.RandomShortestSize(list(hp.min_size), max_size=hp.max_size, antialias=True)
        if training and hp.hflip > 0:
            steps.insert(1, v2.RandomHorizontalFlip(hp.hflip))
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd))
        pipeline = _CocoPipeline(v2.Compose(steps), self.category_to_label, training)
        return _CocoDataset(images, ann, hp.masks, pipeline)

    def _eval_steps(self) -> list[Any]:
        hp = self.hparams
        size = max(hp.min_size) if isinstance(hp.min_size, (list, tuple)) else hp.min_size  # multi-scale: the largest
        return [v2.Resize(size, max_size=hp.max_size, antialias=True), v2.ToDtype(torch.float32, scale=True)]

    def _read_categories(self, ann: Path) -> None:
        """Labels 1..K from the sorted category ids of ``ann`` (once), and ``categories`` (id -> name)."""
        if self.category_to_label is None:
            categories = _categories(ann)
            self.categories = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
            ids = sorted(c["id"] for c in categories)
            if len(ids) != self.num_classes:
                raise ValueError(f"num_classes is {self.num_classes} but {str(ann)!r} has {len(ids)} categories")
            self.category_to_label = {category: index + 1 for index, category in enumerate(ids)}


class _ImageFolder(torch.utils.data.Dataset):
    """The images of a folder without annotations, for ``predict``: ``(image, {"image_id": file name,
    "orig_size"})``, resized like evaluation images."""

    def __init__(self, images: Path, transform: v2.Transform, what: str):
        self.paths = list_images(images, what)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(read_rgb(path)))
        target = {"image_id": path.name, "orig_size": (int(image.shape[-2]), int(image.shape[-1]))}
        return self.transform(image).as_subclass(torch.Tensor), target


def _check_category_ids(coco: COCO, ann_file: Path, category_to_label: dict[int, int]) -> None:
    """Every annotation's ``category_id`` must be a category the labels were made from.

    An id outside them was looked up as 0 (the background) or, negative, as another class: a silent relabel.
    """
    unknown = sorted({a["category_id"] for a in coco.anns.values()} - set(category_to_label))
    if unknown:
        count = sum(a["category_id"] in unknown for a in coco.anns.values())
        raise ValueError(
            f"ann_file {str(ann_file)!r}: {count} annotations have a category_id not among the "
            f"{len(category_to_label)} categories: {unknown[:10]}"
        )


class _CocoDataset(torch.utils.data.Dataset):
    """COCO json + image folder -> ``(tv_tensors.Image, target)`` with boxes (xyxy), category ids, masks.

    Read with faster-coco-eval's ``COCO`` and mask codec (pycocotools' API, which torchvision's
    ``CocoDetection`` would need but this project does not depend on); polygons and RLE both decode.
    """

    def __init__(self, images: Path, ann_file: Path, masks: bool, pipeline: _CocoPipeline):
        self.images, self.masks, self.pipeline = images, masks, pipeline
        self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs)
        _check_category_ids(self.coco, ann_file, pipeline.category_to_label)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(read_rgb(self.images / info["file_name"])))
        height, width = image.shape[-2:]
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target: dict[str, Any] = {
            "image_id": image_id,
            "orig_size": (int(height), int(width)),  # predictions are mapped back to it
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in annotations], dtype=torch.int64),
        }
        if self.masks:
            decoded = [self._mask(a["segmentation"], height, width) for a in annotations]
            stacked = np.stack(decoded) if decoded else np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(stacked))
        return self.pipeline(image, target)

    @staticmethod
    def _mask(segmentation: Any, height: int, width: int) -> np.ndarray:
        if isinstance(segmentation, list):  # polygons
            rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        mask = coco_mask.decode(rle)
        return (mask[..., 0] if mask.ndim == 3 else mask).astype(np.uint8)
