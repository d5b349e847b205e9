"""Object detection and instance segmentation with any timm backbone: torchvision's detectors over an FPN.

:class:`DetectionTask` puts torchvision's ``MaskRCNN``, ``FasterRCNN`` or ``RetinaNet`` on :class:`TimmFPN`: the
backbone's ``features_only`` maps picked by stride (4-32 for the R-CNNs, 8-32 for RetinaNet, as the papers'
FPNs), torchvision's ``FeaturePyramidNetwork`` and its extra level (max-pool P6 for the R-CNNs, P6/P7 from P5
for RetinaNet). torchvision's ``BackboneWithFPN`` only fits ResNet-like modules, hence this small adapter.
Metrics: torchmetrics ``MeanAveragePrecision`` (faster-coco-eval backend), boxes and (Mask R-CNN) masks.
The optimiser and schedule are the detection papers' (mmdet's AdamW, 1x = 12 epochs with steps at 8 and 11,
linear warmup in iterations), through :class:`~attnzoo.train.dense.DenseTask`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ._backbone import apply_graft, backbone_kwargs, check_strides, pad_to_input_size
from .dense import DenseTask

__all__ = ["DetectionTask", "TimmFPN"]

DETECTORS = {"mask_rcnn": MaskRCNN, "faster_rcnn": FasterRCNN, "retinanet": RetinaNet}
# the feature strides each detector's FPN is built on (the papers' and torchvision's choices)
DETECTOR_STRIDES = {"mask_rcnn": (4, 8, 16, 32), "faster_rcnn": (4, 8, 16, 32), "retinanet": (8, 16, 32)}
METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


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


class DetectionTask(DenseTask):
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
            sched_kwargs: :class:`~attnzoo.train.dense.DenseTask`'s (mmdet 1x: ``multistep`` with
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
        size = self.check_dense_args()
        if detector not in DETECTORS:
            raise ValueError(f"detector: {detector!r} is not one of {', '.join(DETECTORS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, without the background), got {num_classes}")
        if anchor_sizes is not None and len(anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes must give 5 sizes (one per FPN level), got {anchor_sizes}")
        unknown = set(detector_kwargs or {}) - _detector_arguments(detector)
        if unknown:
            raise ValueError(f"detector_kwargs: {sorted(unknown)} are not arguments of torchvision's {detector}")
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

    # --- DenseTask's hooks --------------------------------------------------------------------------
    def _load_pretrained(self) -> None:
        source = TimmFPN(*self._fpn_args, pretrained=True, **self._create_kwargs)
        self.detector.backbone.body.load_state_dict(source.body.state_dict())

    def optimizer_modules(self) -> tuple[nn.Module, nn.Module]:
        rest = nn.ModuleList([m for name, m in self.detector.named_children() if name != "backbone"])
        rest.append(self.detector.backbone.fpn)
        return self.detector.backbone.body, rest

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image (``boxes`` xyxy in input pixels, ``labels`` 1..K, ``scores``, ``masks``)."""
        return self.detector(images)

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        self.log_train(loss, len(images), parts=losses)
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

    prediction_kind = "detection"  # what the predictions writer makes of predict_step's output

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Any]]:
        """Detections per image; with ``CocoData``'s targets (``image_id``, ``orig_size``) also the ``image_id``,
        and boxes (xyxy) and masks (``(N, H, W)`` booleans, Mask R-CNN) in the original image's pixels."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        targets = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        outputs = self.detector(images)
        if not (isinstance(targets, list) and all(isinstance(t, dict) and "orig_size" in t for t in targets)):
            return outputs
        results = []
        for image, output, target in zip(images, outputs, targets, strict=True):
            h, w = image.shape[-2:]
            oh, ow = (int(v) for v in target["orig_size"])
            scale = output["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])
            boxes = output["boxes"] * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
            result = {"image_id": target["image_id"], "boxes": boxes, "scores": output["scores"]}
            result["labels"] = output["labels"]
            if "masks" in output:
                masks = output["masks"]  # (N, 1, h, w) probabilities at the input's size
                if (h, w) != (oh, ow) and masks.shape[0]:
                    masks = F.interpolate(masks, size=(oh, ow), mode="bilinear", align_corners=False)
                result["masks"] = masks.reshape(-1, oh, ow) > 0.5 if masks.shape[0] else masks.new_zeros(0, oh, ow)
            results.append(result)
        return results
