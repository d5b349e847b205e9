"""``attnzoo export``: a classification checkpoint -> a timm model folder (``model.safetensors`` + ``config.json``).

The folder is timm's own Hub layout (``timm.models.save_for_hf``), so it loads without attnzoo's training
code and without Lightning::

    import attnzoo, timm                      # attnzoo registers the architecture in timm
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)
    model = timm.create_model("nat_mini", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file="OUT_DIR/model.safetensors", num_classes=10))

(timm drops a head whose size differs from the overlay's ``num_classes``, hence that key.) The checkpoint is
read through the training floor's Lightning-free :func:`~attnzoo.train.checkpoint.read_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm

from attnzoo.train.checkpoint import read_checkpoint

__all__ = ["export_checkpoint"]


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, ema: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (timm's pretrained-config layout).

    ``config.json`` records the architecture, the constructor arguments that differ from the registered
    variant (``model_args``, e.g. a reduced ``depths``) and the preprocessing the weights were trained with,
    so ``timm.data.resolve_model_data_config`` of the reloaded model reproduces the validation transform.
    """
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
