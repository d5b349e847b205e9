"""Object detection and instance segmentation with any timm backbone: torchvision's detectors over an FPN.

* :class:`CocoData` loads COCO-format json through torchvision's ``CocoDetection`` wrapped for the v2
  transforms (boxes, labels, instance masks as tv_tensors), so flips and the aspect-keeping resize move the
  boxes and masks with the image. COCO's category ids (1..90 with gaps) become contiguous labels 1..K,
  because torchvision's detectors reserve 0 for the background and need ``num_classes = K + 1`` (RetinaNet
  crashes on K). Images keep their own sizes; batches are lists (the detector pads them itself).
  Images are not normalised here: the detector's ``GeneralizedRCNNTransform`` resizes and normalises.
* :class:`DetectionTask` puts torchvision's ``MaskRCNN``, ``FasterRCNN`` or ``RetinaNet`` on
  :class:`TimmFPN`: the backbone's ``timm`` ``features_only`` maps picked by stride (4-32 for the R-CNNs,
  8-32 for RetinaNet, as the papers' FPNs), torchvision's ``FeaturePyramidNetwork`` and its extra level
  (max-pool P6 for the R-CNNs, P6/P7 from P5 for RetinaNet). torchvision's ``BackboneWithFPN`` only fits
  ResNet-like modules, hence this small adapter. Metrics: torchmetrics ``MeanAveragePrecision`` with the
  faster-coco-eval backend, boxes and (Mask R-CNN) masks, logged as ``val/map``, ``val/map_50``,
  ``val/map_75``, ``val/map_{small,medium,large}`` and ``val/segm_map...``.
* The optimiser and schedule are the detection papers' (mmdet's AdamW, 1x = 12 epochs with steps at 8 and
  11, linear warmup in iterations) through :func:`~attnzoo.train.segmentation.dense_optimizer`, with layer
  decay over the backbone's ``group_matcher`` when set.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as coco_mask
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.transforms import v2

import attnzoo  # noqa: F401  (registers attnzoo's models in timm)

from ._backbone import (
    apply_graft,
    backbone_kwargs,
    check_graft,
    check_input_size,
    check_strides,
    load_pretrained_once,
    pad_to_input_size,
)
from ._splits import SplitDataModule
from .segmentation import check_backbone, check_optim_args, dense_optimizer
from .synthetic import write_coco_shapes

__all__ = ["CocoData", "DetectionTask", "TimmFPN", "detection_collate"]

DETECTORS = {"mask_rcnn": MaskRCNN, "faster_rcnn": FasterRCNN, "retinanet": RetinaNet}
# the feature strides each detector's FPN is built on (the papers' and torchvision's choices)
DETECTOR_STRIDES = {"mask_rcnn": (4, 8, 16, 32), "faster_rcnn": (4, 8, 16, 32), "retinanet": (8, 16, 32)}
METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


# --- data ------------------------------------------------------------------------------------------
def detection_collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Variable-size images stay a list; torchvision's detectors batch (and pad) them themselves."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class _CocoPipeline:
    """COCO category id -> label 1..K, crowd boxes dropped for training, v2 transforms, plain tensors out."""

    def __init__(self, transforms: v2.Transform, category_to_label: dict[int, int], training: bool):
        self.transforms = transforms
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
        num_classes: object classes K (without the background); ``None``: the categories of the validation
            annotation file are counted now. The CLI links it to the task, which adds the background.
        min_size, max_size: resize keeping the aspect so that the short side is ``min_size`` unless the long
            side would pass ``max_size`` (COCO recipes: 800 / 1333). Give the task the same values: the
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
        num_classes: int | None = None,
        min_size: int = 800,
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
        if min_size < 1 or max_size < min_size:
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

    def ann_path(self, split: str) -> Path:
        """The annotation file of ``split``."""
        return self.root / self.ann_file.format(split=split)

    def prepare_data(self) -> None:
        if self.hparams.synthetic and not self.ann_path(self.hparams.train_split).is_file():
            write_coco_shapes(self.root)
            rank_zero_info(f"wrote the synthetic COCO shapes set to {self.root}")

    def _dataset(self, split: str, what: str, training: bool):
        hp = self.hparams
        images, ann = self.root / split, self.ann_path(split)
        if not images.is_dir():
            raise FileNotFoundError(f"{what}: no image folder {str(images)!r}")
        if not ann.is_file():
            raise FileNotFoundError(f"ann_file: no such file {str(ann)!r}")
        if self.category_to_label is None:
            ids = sorted(c["id"] for c in _categories(ann))
            if len(ids) != self.num_classes:
                raise ValueError(f"num_classes is {self.num_classes} but {str(ann)!r} has {len(ids)} categories")
            self.category_to_label = {category: index + 1 for index, category in enumerate(ids)}
        steps: list[Any] = [v2.Resize(hp.min_size, max_size=hp.max_size, antialias=True)]
        if training and hp.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hp.hflip))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd)]
        pipeline = _CocoPipeline(v2.Compose(steps), self.category_to_label, training)
        return _CocoDataset(images, ann, hp.masks, pipeline)


class _CocoDataset(torch.utils.data.Dataset):
    """COCO json + image folder -> ``(tv_tensors.Image, target)`` with boxes (xyxy), category ids, masks.

    Read with faster-coco-eval's ``COCO`` and mask codec (pycocotools' API, which torchvision's
    ``CocoDetection`` would need but this project does not depend on); polygons and RLE both decode.
    """

    def __init__(self, images: Path, ann_file: Path, masks: bool, pipeline: _CocoPipeline):
        self.images, self.masks, self.pipeline = images, masks, pipeline
        self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = tv_tensors.Image(
            v2.functional.pil_to_tensor(Image.open(self.images / info["file_name"]).convert("RGB"))
        )
        height, width = image.shape[-2:]
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        target: dict[str, Any] = {
            "image_id": image_id,
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


# --- model -----------------------------------------------------------------------------------------
class TimmFPN(nn.Module):
    """A timm ``features_only`` backbone picked at ``strides`` + torchvision's FPN; has ``out_channels``.

    ``graft`` runs an attnzoo mixer inside the backbone (:func:`attnzoo.graft`'s arguments). ``input_size``
    is for backbones built for one input size (Agent-Swin/PVT): every batch is zero-padded to it and the
    feature maps are cropped back to the batch's own extent, so the detector never sees the padding.
    """

    def __init__(
        self,
        backbone: str,
        strides: tuple[int, ...],
        out_channels: int = 256,
        extra: str = "pool",
        pretrained: bool = False,
        graft: dict[str, Any] | None = None,
        input_size: tuple[int, int] | None = None,
        **model_kwargs: Any,
    ):
        super().__init__()
        self.input_size = input_size
        model_kwargs = backbone_kwargs(model_kwargs, None, input_size)
        reductions = check_strides(backbone, strides, model_kwargs, "torchvision has no pyramid for plain ViTs")
        out_indices = tuple(reductions.index(s) for s in strides)  # only the maps the FPN uses: none unused (DDP)
        self.body = timm.create_model(
            backbone, features_only=True, out_indices=out_indices, pretrained=pretrained, **model_kwargs
        )
        apply_graft(self.body, graft)
        self.strides = strides
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        extra_blocks = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        features = self.body(pad_to_input_size(x, self.input_size))
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        if self.input_size is not None:
            features = [f[..., : -(-h // s), : -(-w // s)] for f, s in zip(features, self.strides, strict=True)]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _detector_arguments(detector: str) -> set[str]:
    """Keyword arguments the detector really uses (torchvision swallows misspelled ones in ``**kwargs``)."""
    classes = (FasterRCNN, MaskRCNN) if detector == "mask_rcnn" else (DETECTORS[detector],)
    names = {p for cls in classes for p in inspect.signature(cls.__init__).parameters}
    return names - {"self", "backbone", "num_classes", "min_size", "max_size", "kwargs"}


class DetectionTask(LightningModule):
    """torchvision's Mask R-CNN / Faster R-CNN / RetinaNet over :class:`TimmFPN` of a timm backbone.

    Args:
        backbone: a timm model name with ``features_only`` maps at the detector's strides (any zoo family).
        model_kwargs: more ``timm.create_model`` arguments for the backbone.
        detector: ``mask_rcnn``, ``faster_rcnn`` or ``retinanet``.
        num_classes: object classes K without the background (the CLI links it from the data module); the
            detector gets K + 1.
        pretrained: load the backbone's registered timm weights (ImageNet), as the papers initialise; loaded at
            ``setup``, not when a checkpoint is being restored.
        fpn_channels: FPN width (256 in the papers).
        min_size, max_size: the detector's resize (an int, or a list of short sides to pick from per training
            batch: multi-scale training); match the data module's.
        anchor_sizes: base anchor size per FPN level (5 levels); ``None``: torchvision's 32-512.
        detector_kwargs: more arguments of the torchvision detector (``box_batch_size_per_image``,
            ``rpn_post_nms_top_n_train``...); unknown names are an error.
        drop_path_rate: the backbone's stochastic depth (the papers use 0.2-0.5 for detection).
        graft: run an attnzoo mixer inside the backbone: :func:`attnzoo.graft`'s arguments as a dict
            (``{mixer: dual}`` in timm's DaViT); the pretrained weights are carried over.
        input_size: ``[height, width]`` (multiples of 32) for backbones built for one input size (Agent-Swin,
            Agent-PVT): passed as ``img_size`` and every batch is zero-padded to it, like ViTDet's fixed square
            padding (COCO at 800/1333: ``[1344, 1344]``). Larger inputs are an error.
        opt, lr, weight_decay, opt_kwargs, layer_decay, backbone_lr_mult, sched, warmup_steps, warmup_lr, min_lr,
            sched_kwargs: :func:`~attnzoo.train.segmentation.dense_optimizer` (mmdet 1x: ``multistep`` with
            ``sched_kwargs: {decay_milestones: [8, 11], decay_rate: 0.1}``, 500 warmup steps).
    """

    def __init__(
        self,
        backbone: str = "nat_tiny",
        model_kwargs: dict[str, Any] | None = None,
        detector: str = "mask_rcnn",
        num_classes: int = 80,
        pretrained: bool = False,
        fpn_channels: int = 256,
        min_size: int | list[int] = 800,
        max_size: int = 1333,
        anchor_sizes: list[int] | None = None,
        detector_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float | None = None,
        graft: dict[str, Any] | None = None,
        input_size: list[int] | None = None,
        opt: str = "adamw",
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        opt_kwargs: dict[str, Any] | None = None,
        layer_decay: float | None = None,
        backbone_lr_mult: float = 1.0,
        sched: str = "multistep",
        warmup_steps: int = 500,
        warmup_lr: float = 1e-7,
        min_lr: float = 0.0,
        sched_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_backbone(backbone)
        if detector not in DETECTORS:
            raise ValueError(f"detector: {detector!r} is not one of {', '.join(DETECTORS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, without the background), got {num_classes}")
        if anchor_sizes is not None and len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes must give 5 sizes (one per FPN level), got {anchor_sizes}")
        unknown = set(detector_kwargs or {}) - _detector_arguments(detector)
        if unknown:
            raise ValueError(f"detector_kwargs: {sorted(unknown)} are not arguments of torchvision's {detector}")
        check_optim_args(opt, sched, lr, warmup_steps, backbone_lr_mult)
        check_graft(graft)
        size = check_input_size(input_size)
        if size is not None and isinstance(max_size, int) and max_size > max(size):
            raise ValueError(f"input_size {list(size)} is smaller than max_size {max_size}: images would not fit")
        self.num_classes = int(num_classes)
        extra = "p6p7" if detector == "retinanet" else "pool"
        self._fpn_args = (backbone, DETECTOR_STRIDES[detector], fpn_channels, extra)
        # TimmFPN itself turns input_size into the backbone's img_size
        self._create_kwargs = dict(backbone_kwargs(model_kwargs, drop_path_rate, None), graft=graft, input_size=size)
        fpn = TimmFPN(*self._fpn_args, pretrained=False, **self._create_kwargs)
        det_kwargs = dict(detector_kwargs or {})
        if anchor_sizes is not None:
            if detector == "retinanet":
                sizes = tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in anchor_sizes)
                det_kwargs["anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
            else:
                sizes = tuple((s,) for s in anchor_sizes)
                det_kwargs["rpn_anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
        min_sizes = tuple(min_size) if isinstance(min_size, (list, tuple)) else min_size
        self.detector = DETECTORS[detector](
            fpn, num_classes=self.num_classes + 1, min_size=min_sizes, max_size=max_size, **det_kwargs
        )
        iou_types = ("bbox", "segm") if detector == "mask_rcnn" else ("bbox",)
        with torch.device("cpu"):  # its constructor computes on tensors: not possible under a meta-device context
            self.val_map = MeanAveragePrecision(iou_type=iou_types, backend="faster_coco_eval")
            self.test_map = MeanAveragePrecision(iou_type=iou_types, backend="faster_coco_eval")

    # --- weights -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the backbone's pretrained weights once, unless a Lightning checkpoint is about to overwrite them."""
        load_pretrained_once(self, self._load_pretrained, "backbone")

    def _load_pretrained(self) -> None:
        source = TimmFPN(*self._fpn_args, pretrained=True, **self._create_kwargs)
        self.detector.backbone.body.load_state_dict(source.body.state_dict())

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes`` xyxy in input pixels, ``labels`` 1..K, ``scores``, ``masks``)."""
        return self.detector(images)

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        body = self.detector.backbone.body
        rest = nn.ModuleList([m for name, m in self.detector.named_children() if name != "backbone"])
        rest.append(self.detector.backbone.fpn)
        return dense_optimizer(self, body, rest)

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        size = len(images)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_step=True, on_epoch=False, batch_size=size)
        lr = max(group["lr"] for group in self.optimizers().param_groups)
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _update(self, batch, metric: MeanAveragePrecision) -> None:
        images, targets = batch
        predictions = self.detector(images)
        preds, gts = [], []
        for prediction, target in zip(predictions, targets, strict=True):
            pred = {k: prediction[k] for k in ("boxes", "scores", "labels")}
            gt = {k: target[k] for k in ("boxes", "labels")}
            if "iscrowd" in target:
                gt["iscrowd"] = target["iscrowd"]
            if "segm" in metric.iou_type:
                pred["masks"] = prediction["masks"][:, 0] > 0.5
                gt["masks"] = target["masks"].bool()
            preds.append(pred)
            gts.append(gt)
        metric.update(preds, gts)

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        result = metric.compute()
        values = {}
        for iou_type in metric.iou_type:
            prefix = f"{iou_type}_" if len(metric.iou_type) > 1 else ""
            name = "" if iou_type == "bbox" else "segm_"
            for key in METRIC_KEYS:
                values[f"{stage}/{name}{key}"] = result[f"{prefix}{key}"].float()
        self.log_dict(values, prog_bar=False, sync_dist=False)
        metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.val_map)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._update(batch, self.test_map)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.detector(images)
