"""Semantic segmentation with any timm backbone (attnzoo's included): decoders from segmentation-models-pytorch.

``smp.UPerNet(encoder_name="tu-<backbone>")``, ``smp.FPN`` (the Semantic FPN head LITv2, QuadTree and Agent-PVT
report) or ``smp.DPT`` (plain ViTs such as Agent-DeiT and Sparsifiner): smp's universal timm encoder asks timm
for ``features_only`` maps (DPT reads ``forward_intermediates``), so the decoder is smp's, not hand-written.
Cross-entropy with the ignore index; mIoU over the classes present and micro pixel accuracy, as mmseg reports
them (``mIoU``, ``aAcc``); evaluation on whole images or with mmseg's sliding window.
"""

from __future__ import annotations

import math
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ._backbone import apply_graft, backbone_kwargs, check_strides, pad_to_input_size
from .dense import DenseTask
from .segfolder_data import IGNORE_INDEX, int_pair

__all__ = ["SegmentationTask"]

DECODERS = ("upernet", "fpn", "dpt")


class SegmentationTask(DenseTask):
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
        opt, lr, weight_decay, opt_kwargs, layer_decay, backbone_lr_mult: the optimiser (:class:`DenseTask`).
        sched, warmup_steps, warmup_lr, min_lr, sched_kwargs: the schedule (mmseg 160k: ``poly``, power 1,
            1,500 warmup iterations; give ``trainer.max_steps``).
        inference: ``whole`` (the image padded to a multiple of 32) or ``slide`` (windows of ``slide_crop`` every
            ``slide_stride`` pixels, logits averaged where they overlap).
    """

    pretrained_into = "encoder"

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
        self.input_size = self.check_dense_args()
        if decoder not in DECODERS:
            raise ValueError(f"decoder: {decoder!r} is not one of {', '.join(DECODERS)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if inference not in ("whole", "slide"):
            raise ValueError(f"inference must be 'whole' or 'slide', got {inference!r}")
        if decoder == "fpn" and (decoder_channels < 64 or decoder_channels % 64):
            raise ValueError(f"decoder_channels must be a multiple of 64 for decoder 'fpn', got {decoder_channels}")
        self.slide_crop = int_pair(slide_crop, "slide_crop")
        self.slide_stride = int_pair(slide_stride, "slide_stride")
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

    # --- DenseTask's hooks --------------------------------------------------------------------------
    def _load_pretrained(self) -> None:
        self.model.encoder.load_state_dict(self._build(pretrained=True).encoder.state_dict())

    def optimizer_modules(self) -> tuple[nn.Module, nn.Module]:
        return self.model.encoder, nn.ModuleList([self.model.decoder, self.model.segmentation_head])

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

    # --- steps -------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log_train(loss, images.shape[0])
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

    prediction_kind = "segmentation"  # what the predictions writer makes of predict_step's output

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor | list[dict[str, Any]]:
        """Per image ``{"path", "label_map"}``, the class map at the image's original size (logits resized
        bilinearly before the argmax, as mmseg does) when the batch carries ``SegFolderData``'s predict metadata;
        else class maps ``(B, H, W)`` of the padded batch."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self.predict_logits(images)
        metas = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if not (isinstance(metas, list) and all(isinstance(m, dict) and "orig_size" in m for m in metas)):
            return logits.argmax(1)
        results = []
        for i, meta in enumerate(metas):
            (h, w), size = meta["size"], tuple(int(v) for v in meta["orig_size"])
            one = logits[i : i + 1, :, :h, :w]
            if (h, w) != size:
                one = F.interpolate(one, size=size, mode="bilinear", align_corners=False)
            results.append({"path": meta["path"], "label_map": one[0].argmax(0)})
        return results
