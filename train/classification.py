"""Image classification with any timm model (attnzoo's included) as a LightningModule.

The recipe is timm's own, so a YAML config reproduces a paper trained with timm's ``train.py`` (NAT, DiNAT)
or a Swin-style script (LITv2) setting for setting: timm's optimiser, weight-decay groups, layer decay and
per-update schedule (:mod:`.optim`), a module's own ``lr_scale`` (LITv2's offsets train at 0.01x),
Mixup/CutMix with label smoothing, an EMA validated next to the trained weights every epoch (timm's
practice: one run tells whether the EMA is better), and top-1/top-5 as the fraction of images.

Pretrained weights load at ``setup`` and only when no Lightning checkpoint is being restored, so
``validate --ckpt_path`` never re-downloads weights the checkpoint overwrites anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from attnzoo._names import unknown_model_message
from attnzoo.weights import WeightsDownloadError, WeightsHashError, WeightsLoadError, verified_download

from .optim import check_opt_and_sched, param_groups, per_update_schedule

__all__ = ["ClassificationTask"]

_SOURCES = ("local-dir:", "hf-hub:")


def _check_model_name(name: str) -> None:
    """``ValueError`` naming the argument and close names for a model timm cannot build."""
    if name.startswith(_SOURCES):
        if name.startswith("local-dir:") and not (Path(name.split(":", 1)[1]) / "config.json").is_file():
            raise FileNotFoundError(f"model: {name!r} has no config.json (write one with `attnzoo export`)")
        return
    message = unknown_model_message(name)
    if message is not None:
        raise ValueError(f"model: {message}")


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


def _download_pretrained_file(url: str) -> str:
    """The cached file of a ``pretrained_file`` URL, through the zoo's one verified download (bounded, retried,
    checked against its Content-Length, loaded and hash-checked before it is trusted); its errors name the argument."""
    try:
        return str(verified_download(url))
    except (WeightsDownloadError, WeightsLoadError, WeightsHashError) as error:
        raise type(error)(f"pretrained_file: {error}") from None


def _classifier_rows(state_dict: dict[str, torch.Tensor], classifier: str | None) -> int | None:
    """Rows of the classifier weight in a checkpoint (its number of classes), ``None`` if it has none."""
    if not classifier:
        return None
    weight = state_dict.get(f"{classifier}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def _with_module_lr_scale(model: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Move the ``weight`` of every module that has an ``lr_scale`` attribute into a group of its own.

    The new group copies the settings of the group the weight came from (weight decay, layer-decay scale)
    and multiplies its ``lr_scale`` by the module's factor; timm's schedulers multiply each group's lr by it.
    This is how LITv2's ``conv_offset.lr_scale = 0.01`` (the authors' ``OFFSET_LR_MULTI``) takes effect.
    """
    scaled = {
        id(module.weight): float(module.lr_scale)
        for module in model.modules()
        if isinstance(getattr(module, "lr_scale", None), (int, float))
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and module.weight.requires_grad
    }
    if not scaled:
        return groups
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        keep = [p for p in params if id(p) not in scaled]
        moved = [p for p in params if id(p) in scaled]
        settings = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        if keep:
            out.append({**settings, "params": keep})
        for factor in sorted({scaled[id(p)] for p in moved}):
            same = [p for p in moved if scaled[id(p)] == factor]
            out.append({**settings, "params": same, "lr_scale": settings.get("lr_scale", 1.0) * factor})
    return out


class ClassificationTask(LightningModule):
    """Train, validate, test and predict an image classifier built by ``timm.create_model``.

    Args:
        model: a timm model name, attnzoo's included (``nat_tiny``, ``dinat_large.in22k``, ``resnet18``), or
            ``local-dir:PATH`` / ``hf-hub:ID`` (a folder written by ``attnzoo export``, a Hub repo).
        model_kwargs: more keyword arguments for ``timm.create_model`` (``embed_dim``, ``depths``...).
        num_classes: classes of the head; the CLI links it from the data module. ``None``: the model's default.
        pretrained: start from the model's registered weights (or ``pretrained_file``). The classifier is
            kept when it has ``num_classes`` rows and reset (freshly initialised) otherwise.
        pretrained_file: a local file or URL of weights for this architecture, in timm's layout or the
            authors' (the family's ``checkpoint_filter_fn`` converts it); implies ``pretrained``.
        freeze_backbone: linear probe — train only the classifier; the backbone stays frozen in eval mode.
        drop_path_rate: stochastic depth; ``None`` keeps the model's default.
        opt, lr, weight_decay, opt_kwargs: ``timm.optim.create_optimizer_v2`` (``opt_kwargs``: betas, eps, ...).
        layer_decay: layer-wise lr decay factor over the model's ``group_matcher`` (e.g. 0.75), ``None``: off.
        sched: a ``timm.scheduler.create_scheduler_v2`` name, stepped per optimizer update.
        warmup_epochs, warmup_lr, min_lr, cooldown_epochs: the schedule in epochs (fractions allowed). The
            decay spans the run (``max_epochs``/``max_steps``) minus ``cooldown_epochs`` held at ``min_lr``,
            as timm's ``train.py`` does with ``--epochs E --cooldown-epochs C`` (``max_epochs = E + C``).
        sched_kwargs: more ``create_scheduler_v2`` arguments (``decay_epochs``, ``decay_rate``, ...).
        mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode: ``timm.data.Mixup`` (off when both alphas
            are 0); ``mixup_off_epoch`` turns it off from that epoch on (0: never).
        label_smoothing: folded into Mixup's soft targets, or ``LabelSmoothingCrossEntropy`` without Mixup.
        ema_decay: EMA of the weights (``ModelEmaV3``) with this decay, validated alongside; ``None``: off.
        ema_warmup: ``ModelEmaV3``'s decay warmup (useful for short runs).
    """

    def __init__(
        self,
        model: str = "nat_tiny",
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int | None = None,
        pretrained: bool = False,
        pretrained_file: str | None = None,
        freeze_backbone: bool = False,
        drop_path_rate: float | None = None,
        opt: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        opt_kwargs: dict[str, Any] | None = None,
        layer_decay: float | None = None,
        sched: str = "cosine",
        warmup_epochs: float = 0.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 0.0,
        cooldown_epochs: float = 0.0,
        sched_kwargs: dict[str, Any] | None = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        mixup_off_epoch: int = 0,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
        ema_warmup: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        _check_model_name(model)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if pretrained_file is not None and not _is_url(pretrained_file) and not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"pretrained_file: no such file {pretrained_file!r}")
        check_opt_and_sched(opt, sched)
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {ema_decay}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

        kwargs = dict(model_kwargs or {})
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        self._create_kwargs = kwargs
        self.model = timm.create_model(model, pretrained=False, **kwargs)
        self.num_classes = int(self.model.num_classes)
        if self.num_classes < 1:
            raise ValueError(f"model {model!r} was built without a classifier (num_classes=0)")
        self._pretrained_loaded = False
        # the class names, saved in checkpoints (from the data module) and restored from them; ``None``: unknown
        self.label_names: list[str] | None = None

        if freeze_backbone:
            heads = self.model.get_classifier()
            heads = heads if isinstance(heads, (tuple, list)) else (heads,)
            head = {p for h in heads for p in h.parameters()}
            if not head:
                raise ValueError(f"freeze_backbone: model {model!r} has no classifier parameters to train")
            for param in self.model.parameters():
                param.requires_grad_(param in head)

        # EMA after freezing, so it starts from the same module; re-synced after pretrained weights load.
        self.model_ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=ema_warmup) if ema_decay else None

        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            self.mixup_fn = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                mode=mixup_mode,
                label_smoothing=label_smoothing,
                num_classes=self.num_classes,
            )
            self.train_loss = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.train_loss = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss()
        self.eval_loss = nn.CrossEntropyLoss()

        metrics = MetricCollection(
            {
                "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(self.num_classes, top_k=min(5, self.num_classes), average="micro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        if self.model_ema is not None:
            self.val_ema_metrics = metrics.clone(prefix="val/ema_")
            self.test_ema_metrics = metrics.clone(prefix="test/ema_")

    # --- weights ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load pretrained weights once, unless a Lightning checkpoint is about to overwrite them."""
        hp = self.hparams
        if not (hp.pretrained or hp.pretrained_file) or self._pretrained_loaded:
            return
        if self._trainer is not None and self.trainer.ckpt_path:
            rank_zero_info(f"not loading pretrained weights: restoring {self.trainer.ckpt_path}")
            self._pretrained_loaded = True
            return
        self.load_pretrained()

    def load_pretrained(self) -> None:
        """Copy the registered weights (or ``pretrained_file``) into the model through ``timm.create_model``.

        timm applies the family's ``checkpoint_filter_fn`` (so the authors' files load too). The source head
        is kept when its classes match ``num_classes`` and dropped otherwise (the model keeps its fresh head).
        """
        hp = self.hparams
        overlay: dict[str, Any] = {}
        source_classes = self.model.pretrained_cfg.get("num_classes")
        if hp.pretrained_file:
            path = hp.pretrained_file
            if _is_url(path):
                path = _download_pretrained_file(path)
            state_dict = timm.models.load_state_dict(path, use_ema=False)
            if state_dict and all(k.startswith(("model.", "model_ema.")) for k in state_dict):
                raise ValueError(
                    f"pretrained_file: {hp.pretrained_file!r} is a Lightning checkpoint of attnzoo-train; "
                    "resume it with --ckpt_path, or `attnzoo export` it and pass the model.safetensors"
                )
            source_classes = _classifier_rows(state_dict, self.model.pretrained_cfg.get("classifier"))
            overlay = dict(file=str(path))
            if source_classes is not None:
                overlay["num_classes"] = source_classes
        keep_head = source_classes == self.num_classes
        kwargs = {**self._create_kwargs, "num_classes": self.num_classes if keep_head else 0}
        source = timm.create_model(hp.model, pretrained=True, pretrained_cfg_overlay=overlay or None, **kwargs)
        missing, unexpected = self.model.load_state_dict(source.state_dict(), strict=False)
        allowed = set() if keep_head else self._classifier_keys()
        if unexpected or set(missing) - allowed:
            raise RuntimeError(
                f"pretrained weights do not fit {hp.model}: missing {sorted(set(missing) - allowed)}, "
                f"unexpected {sorted(unexpected)}"
            )
        if self.model_ema is not None:
            self.model_ema.set(self.model)
        self._pretrained_loaded = True
        what = "with its classifier" if keep_head else f"classifier reset to {self.num_classes} classes"
        source_name = hp.pretrained_file or "its pretrained config's weights"
        rank_zero_info(f"loaded {hp.model} from {source_name}, {what}")

    def _classifier_keys(self) -> set[str]:
        heads = self.model.get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        ids = {id(t) for head in heads for t in [*head.parameters(), *head.buffers()]}
        named = [*self.model.named_parameters(), *self.model.named_buffers()]
        return {name for name, tensor in named if id(tensor) in ids}

    def train(self, mode: bool = True) -> ClassificationTask:
        """A linear probe keeps the frozen backbone in eval mode (BatchNorm statistics, dropout, drop path)."""
        super().train(mode)
        if mode and self.hparams.freeze_backbone:
            self.model.eval()
            heads = self.model.get_classifier()
            for head in heads if isinstance(heads, (tuple, list)) else (heads,):
                head.train()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # --- optimisation -----------------------------------------------------------------------------
    def _param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return _with_module_lr_scale(model, param_groups(model, self.hparams.weight_decay, self.hparams.layer_decay))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = create_optimizer_v2(
            self.model,
            opt=hp.opt,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            param_group_fn=self._param_groups,
            **(hp.opt_kwargs or {}),
        )
        return per_update_schedule(
            self,
            optimizer,
            hp.sched,
            hp.warmup_lr,
            hp.min_lr,
            hp.sched_kwargs,
            warmup_epochs=hp.warmup_epochs,
            cooldown_epochs=hp.cooldown_epochs,
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """timm schedulers take the update count (Lightning calls this after each optimizer step)."""
        scheduler.step_update(num_updates=self.global_step)

    # --- steps ------------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        off = self.hparams.mixup_off_epoch
        if self.mixup_fn is not None and off and self.current_epoch >= off:
            self.mixup_fn.mixup_enabled = False

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup_fn is not None:  # also after mixup_off_epoch: it still makes the smoothed soft targets
            if x.shape[0] % 2:
                raise ValueError(f"Mixup/CutMix need an even batch size, got {x.shape[0]} (use drop_last)")
            x, y = self.mixup_fn(x, y)
        loss = self.train_loss(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        lr = max(group["lr"] for group in self.optimizers().param_groups)
        self.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.model_ema is not None and self.global_step > getattr(self, "_ema_step", -1):
            self.model_ema.update(self.model, step=self.global_step)
            self._ema_step = self.global_step

    def _evaluate(self, batch, metrics: MetricCollection, ema_metrics: MetricCollection | None, stage: str) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{stage}/loss", self.eval_loss(logits, y), prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        metrics.update(logits, y)
        self.log_dict(metrics, prog_bar=True, batch_size=x.shape[0])
        if ema_metrics is not None:
            ema_metrics.update(self.model_ema.module(x), y)
            self.log_dict(ema_metrics, batch_size=x.shape[0])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, getattr(self, "val_ema_metrics", None), "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, getattr(self, "test_ema_metrics", None), "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities ``(B, num_classes)`` of the trained (not EMA) weights; ``attnzoo-train predict``
        writes their top-k with class names to a CSV (:class:`~attnzoo.train.predict_writer.PredictionWriter`)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.model(x).softmax(dim=-1)

    # --- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the preprocessing the weights were trained with and the class names (the data module's, else
        those restored from the checkpoint the run started from), for ``attnzoo export`` and ``predict``.

        Top-level keys of plain types, so that ``read_checkpoint`` finds them without Lightning or the data module.
        """
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_config = getattr(datamodule, "data_config", None)
        if data_config:
            checkpoint["data_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
        names = getattr(datamodule, "label_names", None)
        names = names if names and len(names) == self.num_classes else self.label_names
        if names:
            checkpoint["label_names"] = [str(name) for name in names]
        checkpoint["timm_version"] = timm.__version__

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The class names the checkpoint's weights were trained with (``None`` in a checkpoint without them)."""
        names = checkpoint.get("label_names")
        self.label_names = [str(name) for name in names] if names else None
