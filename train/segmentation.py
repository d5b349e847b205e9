"""Semantic segmentation with any timm backbone (attnzoo's included): UPerNet from segmentation-models-pytorch.

* :class:`SegFolderData` reads ADE20K's layout (``images/{training,validation}/*`` with PNG label maps of
  the same stem under ``annotations/...``) with mmsegmentation's pipeline re-expressed in torchvision's v2
  transforms: random rescale of the base scale by 0.5-2.0, random crop, flip, colour jitter for training;
  a resize with kept aspect for evaluation. ``reduce_zero_label`` maps ADE20K's "unlabelled" 0 to the
  ignore index 255 and shifts the classes down by one, as every ADE20K recipe does.
* :class:`SegmentationTask` builds ``smp.UPerNet(encoder_name="tu-<backbone>")`` (or ``smp.FPN``, the
  Semantic FPN head that LITv2, QuadTree and Agent-PVT report; or ``smp.DPT`` for plain ViTs such as Agent-DeiT
  and Sparsifiner): smp's universal timm encoder asks timm for ``features_only`` maps (strides 4-32; DPT reads
  ``forward_intermediates``), so the decoder is smp's, not hand-written, and ``model_kwargs`` reach
  ``timm.create_model``. Cross-entropy with the ignore index; metrics are
  torchmetrics' ``MulticlassJaccardIndex(ignore_index=255)`` (mIoU over the classes present, as mmseg
  reports it) and micro-averaged pixel accuracy (mmseg's ``aAcc``). Evaluation runs on whole images
  (padded to a multiple of 32) or with a sliding window (``inference="slide"``, mmseg's ``mode='slide'``).
* The optimiser is timm's AdamW (or any timm optimiser) with weight-decay groups, layer-wise lr decay over
  the backbone's ``group_matcher`` when ``layer_decay`` is set, and a timm scheduler stepped per update whose
  warmup is given in steps, as the dense-prediction recipes give it (``poly`` for mmseg's 160k schedule).
  :func:`dense_optimizer` is shared with :class:`~attnzoo.train.DetectionTask`.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchvision import tv_tensors
from torchvision.transforms import v2

import attnzoo  # noqa: F401  (registers attnzoo's models in timm, so smp's ``tu-`` encoders find them)

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
from .classification import SCHEDULERS, _check_model_name
from .synthetic import write_ade_shapes

__all__ = ["SegFolderData", "SegmentationTask", "check_backbone", "dense_optimizer"]

IGNORE_INDEX = 255
DECODERS = ("upernet", "fpn", "dpt")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- optimisation shared by the dense tasks ------------------------------------------------------------
def _backbone_groups(backbone: nn.Module, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
    """timm's groups for the backbone: no decay on norms/biases/``no_weight_decay()``, layer decay if asked."""
    inner = getattr(backbone, "model", backbone)  # smp's TimmUniversalEncoder keeps the timm model in .model
    no_decay = set(getattr(inner, "no_weight_decay", lambda: ())())
    if layer_decay is not None:
        if not hasattr(inner, "group_matcher"):
            raise ValueError(f"layer_decay: the backbone {type(inner).__name__} has no group_matcher")
        return param_groups_layer_decay(
            inner, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=no_decay
        )
    return param_groups_weight_decay(inner, weight_decay=weight_decay, no_weight_decay_list=no_decay)


def dense_optimizer(task: LightningModule, backbone: nn.Module, rest: nn.Module) -> dict[str, Any]:
    """timm optimiser + per-update timm scheduler for a backbone and the modules on top of it.

    Reads ``opt, lr, weight_decay, opt_kwargs, layer_decay, backbone_lr_mult, sched, warmup_steps, warmup_lr,
    min_lr, sched_kwargs`` from ``task.hparams``. Milestones in ``sched_kwargs`` (``decay_milestones``) are in
    epochs, like timm's; the warmup is in optimizer steps (mmdet/mmseg give it in iterations). ``poly`` defaults to
    power 1 (``decay_rate``), mmseg's, where timm's own default is 0.1.
    """
    hp = task.hparams
    sched_kwargs = dict(hp.sched_kwargs or {})
    if hp.sched == "poly":  # timm's poly power is ``decay_rate`` (default 0.1); mmseg's poly is linear (power 1)
        sched_kwargs.setdefault("decay_rate", 1.0)
    groups = _backbone_groups(backbone, hp.weight_decay, hp.layer_decay)
    for group in groups:
        group["lr_scale"] = group.get("lr_scale", 1.0) * hp.backbone_lr_mult
    groups += param_groups_weight_decay(rest, weight_decay=hp.weight_decay)
    groups = [g for g in groups if g["params"]]
    optimizer = create_optimizer_v2(groups, opt=hp.opt, lr=hp.lr, weight_decay=hp.weight_decay, **(hp.opt_kwargs or {}))
    total = int(task.trainer.estimated_stepping_batches)
    batches = task.trainer.num_training_batches
    per_epoch = (
        float(math.ceil(batches / task.trainer.accumulate_grad_batches))
        if math.isfinite(batches) and batches > 0
        else float(total)
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=hp.sched,
        num_epochs=max(total / per_epoch, 1.0 / per_epoch),
        warmup_epochs=hp.warmup_steps / per_epoch,
        warmup_lr=hp.warmup_lr,
        min_lr=hp.min_lr,
        step_on_epochs=False,
        updates_per_epoch=per_epoch,
        **sched_kwargs,
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_backbone(name: str) -> None:
    """``ValueError`` naming ``backbone`` (with close names) for a model timm cannot build; no local/Hub sources."""
    if name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"backbone: give a registered timm model name, got {name!r}")
    try:
        _check_model_name(name)
    except ValueError as error:
        raise ValueError(f"backbone: {str(error).removeprefix('model: ')}") from None


def check_optim_args(opt: str, sched: str, lr: float, warmup_steps: int, backbone_lr_mult: float) -> None:
    """The optimisation arguments both dense tasks share, each error naming its argument."""
    if opt.lower().split("_")[-1] not in list_optimizers():
        raise ValueError(f"opt: unknown timm optimizer {opt!r}; see timm.optim.list_optimizers()")
    if sched not in SCHEDULERS:
        raise ValueError(f"sched: {sched!r} is not one of {', '.join(SCHEDULERS)}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if backbone_lr_mult < 0:
        raise ValueError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult}")


# --- data ------------------------------------------------------------------------------------------
def _pair(value: int | list[int] | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or [height, width], got {value}")
    return int(pair[0]), int(pair[1])


class _RescaleKeepRatio:
    """mmseg's ``Resize(img_scale=(long, short), ratio_range)``: fit inside ``ratio * (long, short)``, keep aspect."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float] | None):
        self.long, self.short = max(scale), min(scale)
        self.ratio_range = ratio_range

    def __call__(self, image, mask):
        ratio = random.uniform(*self.ratio_range) if self.ratio_range else 1.0
        h, w = image.shape[-2:]
        factor = min(self.long * ratio / max(h, w), self.short * ratio / min(h, w))
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        return v2.functional.resize(image, size, antialias=True), v2.functional.resize(mask, size)


class _SegDataset(Dataset):
    """Image / label-map pairs matched by file stem; ``transform(image, mask)`` gets tv_tensors."""

    def __init__(self, images: Path, annotations: Path, reduce_zero_label: bool, transform, what: str):
        if not images.is_dir():
            raise FileNotFoundError(f"{what}: no image folder {str(images)!r}")
        if not annotations.is_dir():
            raise FileNotFoundError(f"{what}: no annotation folder {str(annotations)!r}")
        labels = {p.stem: p for p in annotations.iterdir() if p.suffix.lower() == ".png"}
        self.items = []
        for path in sorted(images.iterdir()):
            if path.suffix.lower() in _IMAGE_EXTENSIONS:
                if path.stem not in labels:
                    raise FileNotFoundError(f"image {str(path)!r} has no label map {path.stem}.png in {annotations}")
                self.items.append((path, labels[path.stem]))
        if not self.items:
            raise ValueError(f"{str(images)!r} holds no images")
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, label_path = self.items[index]
        image = tv_tensors.Image(v2.functional.pil_to_tensor(Image.open(image_path).convert("RGB")))
        label = torch.from_numpy(np.array(Image.open(label_path), dtype=np.uint8)).long()
        if self.reduce_zero_label:  # ADE20K: 0 is "other", not a class
            label = torch.where(label == 0, IGNORE_INDEX, label - 1)
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
        num_classes: classes after ``reduce_zero_label`` (ADE20K: 150); the CLI links it to the task.
        reduce_zero_label: label 0 is "unlabelled": map it to 255 (ignored) and shift the rest down by one.
        train_split, val_split: sub-folder names under ``images/`` and ``annotations/``; ``test_split``
            defaults to ``val_split``.
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
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be >= 1, got {batch_size} (eval_batch_size {eval_batch_size})")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if ratio_range is not None and not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be [low, high] with 0 < low <= high, got {ratio_range}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability, got {hflip}")
        self.root = Path(root).expanduser()
        self.scale = _pair(scale, "scale")
        self.crop_size = _pair(crop_size, "crop_size")
        self.num_classes = int(num_classes)
        self.save_hyperparameters(ignore=["num_classes"])

    def prepare_data(self) -> None:
        if self.hparams.synthetic and not (self.root / "images").is_dir():
            write_ade_shapes(self.root)
            rank_zero_info(f"wrote the synthetic ADE-style shapes set to {self.root}")

    def _dataset(self, split: str, what: str, training: bool) -> _SegDataset:
        hp = self.hparams
        pipeline = _Pipeline(
            self.scale, hp.ratio_range, self.crop_size, hp.hflip, hp.color_jitter, hp.mean, hp.std, training
        )
        return _SegDataset(
            self.root / "images" / split, self.root / "annotations" / split, hp.reduce_zero_label, pipeline, what
        )

    def setup(self, stage: str) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: no such folder {str(self.root)!r} (synthetic: true writes a demo set)")
        super().setup(stage)


# --- task ------------------------------------------------------------------------------------------
class SegmentationTask(LightningModule):
    """UPerNet (segmentation-models-pytorch) over a timm backbone, trained with cross-entropy.

    Args:
        backbone: a timm model name with ``features_only`` strides 4-32 (every attnzoo family, ResNets...).
        model_kwargs: more ``timm.create_model`` arguments for the backbone (``embed_dim``, ``depths``...).
        decoder: ``upernet`` (smp's ``UPerNet``, mmseg's UPerHead) or ``fpn`` (smp's ``FPN``: mmseg's Semantic FPN,
            pyramid width ``decoder_channels`` and a head of half that; GroupNorm where mmseg has SyncBN), or ``dpt``
            (smp's ``DPT``, fusion width ``decoder_channels``: the decoder for plain ViTs, which have one stride).
        num_classes: output classes (the CLI links it from the data module).
        pretrained: start the backbone from timm's registered weights (loaded at ``setup``, not when a checkpoint
            is being restored).
        decoder_channels: UPerNet's width (mmseg's UPerHead: 512), the FPN's (Semantic FPN: 256, a multiple of 64) or
            DPT's fusion width (256).
        drop_path_rate: the backbone's stochastic depth.
        graft: run an attnzoo mixer inside the backbone: :func:`attnzoo.graft`'s arguments as a dict
            (``{mixer: focal}`` in timm's FocalNet); the pretrained weights are carried over.
        input_size: ``[height, width]`` (multiples of 32) for backbones built for one input size (Agent-Swin,
            Agent-PVT): passed as ``img_size``, and every input is zero-padded to it (the logits cropped back).
            Larger inputs are an error: train with ``crop_size`` <= it and evaluate with ``inference: slide``.
        opt, lr, weight_decay, opt_kwargs, layer_decay, backbone_lr_mult: see :func:`dense_optimizer`.
        sched, warmup_steps, warmup_lr, min_lr, sched_kwargs: the schedule (mmseg 160k: ``poly``, power 1,
            1,500 warmup iterations; give ``trainer.max_steps``).
        inference: ``whole`` (the image padded to a multiple of 32) or ``slide`` (windows of ``slide_crop`` every
            ``slide_stride`` pixels, logits averaged where they overlap).
    """

    def __init__(
        self,
        backbone: str = "nat_tiny",
        model_kwargs: dict[str, Any] | None = None,
        decoder: str = "upernet",
        num_classes: int = 150,
        pretrained: bool = False,
        decoder_channels: int = 512,
        drop_path_rate: float | None = None,
        graft: dict[str, Any] | None = None,
        input_size: list[int] | None = None,
        opt: str = "adamw",
        lr: float = 6e-5,
        weight_decay: float = 0.01,
        opt_kwargs: dict[str, Any] | None = None,
        layer_decay: float | None = None,
        backbone_lr_mult: float = 1.0,
        sched: str = "poly",
        warmup_steps: int = 1500,
        warmup_lr: float = 1e-6,
        min_lr: float = 0.0,
        sched_kwargs: dict[str, Any] | None = None,
        inference: str = "whole",
        slide_crop: int | tuple[int, int] = 512,
        slide_stride: int | tuple[int, int] = 341,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_backbone(backbone)
        if decoder not in DECODERS:
            raise ValueError(f"decoder: {decoder!r} is not one of {', '.join(DECODERS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if inference not in ("whole", "slide"):
            raise ValueError(f"inference must be 'whole' or 'slide', got {inference!r}")
        if decoder == "fpn" and (decoder_channels < 64 or decoder_channels % 64):
            raise ValueError(f"decoder_channels must be a multiple of 64 for decoder 'fpn', got {decoder_channels}")
        check_optim_args(opt, sched, lr, warmup_steps, backbone_lr_mult)
        check_graft(graft)
        self.input_size = check_input_size(input_size)
        self.slide_crop = _pair(slide_crop, "slide_crop")
        self.slide_stride = _pair(slide_stride, "slide_stride")
        if (
            self.input_size is not None
            and inference == "slide"
            and any(c > s for c, s in zip(self.slide_crop, self.input_size, strict=True))
        ):
            raise ValueError(f"slide_crop {list(self.slide_crop)} is larger than input_size {list(self.input_size)}")
        self.num_classes = int(num_classes)
        self._create_kwargs = backbone_kwargs(model_kwargs, drop_path_rate, self.input_size)
        if decoder != "dpt":  # smp's own error would not say which strides are missing
            check_strides(backbone, (4, 8, 16, 32), self._create_kwargs, "plain ViTs need decoder: dpt")
        self.model = self._build(pretrained=False)
        self.loss = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        metrics = MetricCollection(
            {
                "miou": MulticlassJaccardIndex(self.num_classes, ignore_index=IGNORE_INDEX),
                "pixel_acc": MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE_INDEX),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def _build(self, pretrained: bool) -> smp.UPerNet | smp.FPN:
        hp = self.hparams
        common = dict(
            encoder_name=f"tu-{hp.backbone}",
            encoder_weights="imagenet" if pretrained else None,  # smp's tu- encoders pass pretrained=True to timm
            classes=self.num_classes,
            **self._create_kwargs,
        )
        if hp.decoder == "dpt":
            model = smp.DPT(decoder_fusion_channels=hp.decoder_channels, **common)
        elif hp.decoder == "fpn":  # mmseg's FPNHead: 128 channels over a 256-wide FPN, dropout 0.1
            model = smp.FPN(
                decoder_pyramid_channels=hp.decoder_channels,
                decoder_segmentation_channels=hp.decoder_channels // 2,
                decoder_dropout=0.1,
                **common,
            )
        else:
            model = smp.UPerNet(decoder_channels=hp.decoder_channels, **common)
        apply_graft(model.encoder.model, hp.graft)  # smp's TimmUniversalEncoder keeps the timm model in .model
        return model

    # --- weights -----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load the backbone's pretrained weights once, unless a Lightning checkpoint is about to overwrite them."""
        load_pretrained_once(self, self._load_pretrained, "encoder")

    def _load_pretrained(self) -> None:
        self.model.encoder.load_state_dict(self._build(pretrained=True).encoder.state_dict())

    # --- inference ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W)`` for any input size (padded to a multiple of 32 or to ``input_size``,
        then cropped)."""
        h, w = x.shape[-2:]
        if self.input_size is not None:
            x = pad_to_input_size(x, self.input_size)
        elif (-h) % 32 or (-w) % 32:
            x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32))
        return self.model(x)[..., :h, :w]

    def slide_inference(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg's sliding window: logits averaged over overlapping ``slide_crop`` windows."""
        (ch, cw), (sh, sw) = self.slide_crop, self.slide_stride
        h, w = x.shape[-2:]
        rows = max(math.ceil((h - ch) / sh), 0) + 1
        cols = max(math.ceil((w - cw) / sw), 0) + 1
        logits = x.new_zeros(x.shape[0], self.num_classes, h, w)
        count = x.new_zeros(1, 1, h, w)
        for r in range(rows):
            for c in range(cols):
                y0, x0 = min(r * sh, max(h - ch, 0)), min(c * sw, max(w - cw, 0))
                y1, x1 = min(y0 + ch, h), min(x0 + cw, w)
                logits[..., y0:y1, x0:x1] += self(x[..., y0:y1, x0:x1])
                count[..., y0:y1, x0:x1] += 1
        return logits / count

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.slide_inference(x) if self.hparams.inference == "slide" else self(x)

    # --- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        rest = nn.ModuleList([self.model.decoder, self.model.segmentation_head])
        return dense_optimizer(self, self.model.encoder, rest)

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        lr = max(group["lr"] for group in self.optimizers().param_groups)
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return loss

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> None:
        images, masks = batch
        logits = self.predict_logits(images)
        self.log(f"{stage}/loss", self.loss(logits, masks), sync_dist=True, batch_size=images.shape[0])
        metrics.update(logits.argmax(1), masks)
        self.log_dict(metrics, prog_bar=True, batch_size=images.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class maps ``(B, H, W)`` (of the padded batch)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_logits(images).argmax(1)
