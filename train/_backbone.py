"""The dense tasks' timm backbone: its name and keyword arguments, strides, an optional attnzoo graft, padding.

``DetectionTask`` and ``SegmentationTask`` build their backbones through different libraries (torchvision's FPN
adapter, smp's ``tu-`` encoder), so each keeps its own constructor; these helpers serve both.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo import graft as graft_mixer
from attnzoo._names import unknown_model_message
from attnzoo.blocks import MIXERS


def check_backbone(name: str) -> None:
    """``ValueError`` naming ``backbone`` (with close names) for a model timm cannot build; no local/Hub sources."""
    if name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"backbone: give a registered timm model name, got {name!r}")
    message = unknown_model_message(name)
    if message is not None:
        raise ValueError(f"backbone: {message}")


def backbone_kwargs(
    model_kwargs: dict[str, Any] | None, drop_path_rate: float | None, input_size: tuple[int, int] | None
) -> dict[str, Any]:
    """``timm.create_model`` keywords: ``model_kwargs`` + stochastic depth + ``img_size`` for a fixed input size."""
    kwargs = dict(model_kwargs or {})
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if input_size is not None:
        if "img_size" in kwargs and tuple(kwargs["img_size"]) != tuple(input_size):
            raise ValueError(f"input_size {list(input_size)} and model_kwargs.img_size {kwargs['img_size']} disagree")
        kwargs["img_size"] = tuple(input_size)
    return kwargs


def check_strides(backbone: str, strides: tuple[int, ...], model_kwargs: dict[str, Any], hint: str = "") -> list[int]:
    """The backbone's ``features_only`` strides (probed on the meta device: no memory, no weights); a
    ``ValueError`` naming ``backbone`` when some of ``strides`` are missing (plain ViTs have only 16)."""
    with torch.device("meta"):
        reductions = timm.create_model(backbone, features_only=True, **model_kwargs).feature_info.reduction()
    missing = [s for s in strides if s not in reductions]
    if missing:
        hint = f"; {hint}" if hint else ""
        raise ValueError(f"backbone: {backbone!r} has no feature maps at strides {missing} (it has {reductions}){hint}")
    return reductions


def check_input_size(input_size: Any) -> tuple[int, int] | None:
    """``None`` or a ``[height, width]`` pair of multiples of 32 (the deepest stride the decoders use)."""
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or any(not isinstance(s, int) or s < 32 or s % 32 for s in size):
        raise ValueError(f"input_size must be [height, width], multiples of 32, got {input_size}")
    return size


def check_graft(graft: dict[str, Any] | None) -> None:
    """``graft`` is ``attnzoo.graft``'s arguments as a dict: ``{mixer: ..., stages: ..., blocks: ..., **kw}``."""
    if graft is None:
        return
    if not isinstance(graft, dict) or "mixer" not in graft:
        raise ValueError(f"graft must be a dict with a 'mixer' (attnzoo.graft's arguments), got {graft!r}")
    if graft["mixer"] not in MIXERS:
        raise ValueError(f"graft.mixer: {graft['mixer']!r} is not one of {', '.join(sorted(MIXERS))}")


def apply_graft(model: nn.Module, graft: dict[str, Any] | None) -> nn.Module:
    """Run attnzoo's mixer inside the timm backbone (in place); the old attention's weights are carried over."""
    if graft is not None:
        graft_mixer(model, **graft)
    return model


def pad_to_input_size(x: torch.Tensor, input_size: tuple[int, int] | None) -> torch.Tensor:
    """Zero-pad a batch at the bottom/right to the size a fixed-size backbone was built for (ViTDet's padding)."""
    if input_size is None:
        return x
    h, w = x.shape[-2:]
    if h > input_size[0] or w > input_size[1]:
        raise ValueError(
            f"input of {h}x{w} pixels is larger than input_size {input_size[0]}x{input_size[1]} the backbone was "
            "built for: raise input_size, resize smaller, or evaluate with sliding windows (inference: slide)"
        )
    return F.pad(x, (0, input_size[1] - w, 0, input_size[0] - h))
