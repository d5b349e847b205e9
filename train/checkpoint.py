"""A ``ClassificationTask`` checkpoint read without Lightning: the interface the tools floor (``attnzoo export``) uses.

The layout (``hyper_parameters``, ``state_dict`` under ``model.`` / ``model_ema.module.``, ``data_config``,
``label_names``) is the task's, so it is read here, next to the task. ``torch.load(weights_only=True)``: a
Lightning checkpoint holds only tensors and plain containers, so nothing in it is executed when it is read.
Nor later: its hyper-parameters must be plain values (:func:`check_plain_values`), because ``attnzoo-train``
hands them to jsonargparse, which builds any ``{class_path: ..., init_args: ...}`` it finds in a free-form dict
(``model_kwargs``, ``opt_kwargs``...), a ``subprocess.Popen`` included. This module never imports Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import yaml

__all__ = ["CheckpointContents", "check_plain_values", "load_checkpoint", "read_checkpoint"]

CLASS_KEYS = ("class_path", "init_args")  # what jsonargparse reads as a class to build

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


def _structure_in(text: str) -> Any:
    """The dict or list a string value becomes when a config parser reads it as YAML/JSON (jsonargparse does so
    for values of free-form dicts), else ``None``."""
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, (dict, list)) else None


def check_plain_values(value: Any, where: str) -> None:
    """``ValueError`` naming the key path (``where`` and below) of anything in ``value`` that is not plain data:
    a ``class_path``/``init_args`` key (also inside a string that parses as YAML), or an object that is not None,
    a bool, a number, a string, a list, a tuple or a dict. Checkpoint values are data, never classes to build."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        inner = _structure_in(value)
        if inner is not None:
            check_plain_values(inner, where)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain_values(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}"
            if key in CLASS_KEYS:
                raise ValueError(f"{path}: a checkpoint's hyper-parameters are plain values, never a class to build")
            check_plain_values(item, path)
        return
    raise ValueError(f"{where}: a {type(value).__name__} is not a plain value")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file read with ``weights_only=True`` (memory-mapped where the format allows), its
    ``hyper_parameters`` checked to be plain values; ``ValueError``/``FileNotFoundError`` in one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # a legacy (non-zip) file cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle of something that is not plain data
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint: {str(path)!r} cannot be read with weights_only=True: {first}") from error
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint: {str(path)!r} holds a {type(ckpt).__name__}, not a checkpoint dict")
    try:
        check_plain_values(ckpt.get("hyper_parameters"), "hyper_parameters")
    except ValueError as error:
        raise ValueError(f"checkpoint: {str(path)!r}: {error}") from None
    return ckpt


def read_checkpoint(path: str | Path, ema: bool = False) -> CheckpointContents:
    """The model name, its kwargs, its classes and weights (EMA weights with ``ema=True``) from a checkpoint."""
    ckpt = load_checkpoint(path)
    path = Path(path)
    hparams = ckpt.get("hyper_parameters")
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
