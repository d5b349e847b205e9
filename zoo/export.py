"""Lightning checkpoint of a classification run -> a timm model folder (``model.safetensors`` + ``config.json``).

The folder is timm's own Hub layout (``timm.models.save_for_hf``), so it loads without attnzoo's training
code and without Lightning::

    import attnzoo, timm                      # attnzoo registers the architecture in timm
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)
    model = timm.create_model("nat_mini", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file="OUT_DIR/model.safetensors", num_classes=10))

(``pretrained=True`` is what makes timm read the weights, as for any source; timm drops a head whose size
differs from the overlay's ``num_classes``, hence that key for a fine-tuned head.) The checkpoint is read
with ``torch.load(weights_only=True)``: a Lightning checkpoint holds only tensors and plain containers, so
nothing in it is executed. This module never imports Lightning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

__all__ = ["CheckpointContents", "export_checkpoint", "read_checkpoint"]

_PREFIXES = {False: "model.", True: "model_ema.module."}


@dataclass
class CheckpointContents:
    """What export needs from a ``ClassificationTask`` checkpoint."""

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    data_config: dict[str, Any] = field(default_factory=dict)
    ema: bool = False


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
    return CheckpointContents(
        model=hparams["model"],
        model_kwargs=model_kwargs,
        num_classes=int(num_classes),
        state_dict=state_dict,
        data_config=dict(ckpt.get("data_config") or {}),
        ema=ema,
    )


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, ema: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (timm's pretrained-config layout).

    ``config.json`` records the architecture, the constructor arguments that differ from the registered
    variant (``model_args``, e.g. a reduced ``depths``) and the preprocessing the weights were trained with
    (input size, interpolation, crop_pct, mean/std), so ``timm.data.resolve_model_data_config`` of the
    reloaded model reproduces the validation transform.
    """
    import attnzoo  # noqa: F401  (registers attnzoo's models in timm before the name is looked up)

    contents = read_checkpoint(checkpoint, ema=ema)
    model = timm.create_model(
        contents.model, pretrained=False, num_classes=contents.num_classes, **contents.model_kwargs
    )
    model.load_state_dict(contents.state_dict, strict=True)
    model.eval()
    out_dir = Path(out_dir)
    data_config = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in contents.data_config.items()
        if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    # the source tag (e.g. "in1k") would claim weights these are not; the name says what they are
    model_config = {"pretrained_cfg": {"tag": None}}
    timm.models.save_for_hf(
        model, out_dir, model_config=model_config, safe_serialization=True, data_config=data_config or None
    )
    config = json.loads((out_dir / "config.json").read_text())
    if config.get("num_classes") != contents.num_classes:  # pragma: no cover - timm's own consistency check
        raise RuntimeError(f"config.json has num_classes {config.get('num_classes')}, expected {contents.num_classes}")
    return out_dir
