"""A ``ClassificationTask`` checkpoint read without Lightning: the interface the tools floor (``attnzoo export``) uses.

The layout (``hyper_parameters``, ``state_dict`` under ``model.`` / ``model_ema.module.``, ``data_config``,
``label_names``) is the task's, so it is read here, next to the task. ``torch.load(weights_only=True)``: a
Lightning checkpoint holds only tensors and plain containers, so nothing in it is executed. This module never
imports Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

__all__ = ["CheckpointContents", "read_checkpoint"]

_PREFIXES = {False: "model.", True: "model_ema.module."}


@dataclass
class CheckpointContents:
    """The model of a ``ClassificationTask`` checkpoint: its timm name, arguments, classes, weights, preprocessing.

    ``label_names``: the class names by class index (an ImageFolder run's class folders), ``None`` when the run
    did not know them (or the checkpoint predates them).
    """

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    data_config: dict[str, Any] = field(default_factory=dict)
    ema: bool = False
    label_names: list[str] | None = None


def read_checkpoint(path: str | Path, ema: bool = False) -> CheckpointContents:
    """The model name, its kwargs, its classes and weights (EMA weights with ``ema=True``) from a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle of something that is not plain data
        raise ValueError(f"checkpoint: {str(path)!r} cannot be read with weights_only=True: {error}") from error
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "model" not in hparams or "state_dict" not in ckpt:
        raise ValueError(
            f"checkpoint: {str(path)!r} is not a ClassificationTask checkpoint (no hyper_parameters.model/state_dict)"
        )
    prefix = _PREFIXES[ema]
    state_dict = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state_dict:
        if ema:
            raise ValueError(f"checkpoint: {str(path)!r} has no EMA weights (the run had ema_decay: null)")
        raise ValueError(f"checkpoint: {str(path)!r} has no weights under {prefix!r}")
    model_kwargs = dict(hparams.get("model_kwargs") or {})
    if hparams.get("drop_path_rate") is not None:
        model_kwargs["drop_path_rate"] = hparams["drop_path_rate"]
    num_classes = hparams.get("num_classes")
    if num_classes is None:  # the model's default head; its size is in the weights
        num_classes = timm.create_model(hparams["model"], pretrained=False, **model_kwargs).num_classes
    label_names = ckpt.get("label_names")
    if label_names is not None:
        if not isinstance(label_names, (list, tuple)) or len(label_names) != int(num_classes):
            raise ValueError(f"checkpoint: {str(path)!r}: label_names is not a list of its {num_classes} class names")
        label_names = [str(name) for name in label_names]
    return CheckpointContents(
        model=hparams["model"],
        model_kwargs=model_kwargs,
        num_classes=int(num_classes),
        state_dict=state_dict,
        data_config=dict(ckpt.get("data_config") or {}),
        ema=ema,
        label_names=label_names,
    )
