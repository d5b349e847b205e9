"""Argument checks for the public entry points (the ops, the mixers' constructors, graft) and forward asserts.

The ``check_*`` functions raise a ``TypeError``/``ValueError`` that names the argument. They look only at
Python values, shapes, dtypes and devices (never tensor values), so they never synchronise the GPU.
Inside forward passes modules use :func:`assert_map` and ``torch._assert`` (timm's ``_assert``): cheap,
and traced by FX and ``torch.compile``.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_tensor(name: str, t: object, rank: int, layout: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have rank {rank} {layout}, got shape {tuple(t.shape)}")
    return t


def check_floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_same_dtype_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must be on one device")


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """An int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_odd(name: str, value: object) -> int:
    value = check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd, got {value}")
    return value


def check_dim_heads(dim: object, num_heads: object) -> int:
    """Validate ``dim``/``num_heads`` and return the head dimension."""
    dim, num_heads = check_positive_int("dim", dim), check_positive_int("num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def check_fraction(
    name: str, value: object, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> float:
    """A real number in ``[low, high]``; ``low_open``/``high_open`` exclude an end."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above or math.isnan(value):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


def check_optional_positive_real(name: str, value: object) -> float | None:
    """``None`` or a real number > 0 (e.g. ``qk_scale``, where ``None`` means the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (or None), got {value}")
    return float(value)


def check_scale(scale: object, head_dim: int) -> float:
    """``scale`` or, when ``None``, the usual ``head_dim ** -0.5``; a NaN or infinite scale is an error."""
    if head_dim < 1:
        raise ValueError(f"head_dim (the last dimension of q) must be >= 1, got {head_dim}")
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not abs(scale) < math.inf:  # also False for NaN; unlike math.isfinite, traceable on a SymFloat
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_nonempty_batch(x: torch.Tensor) -> None:
    """timm's Swin and PVTv2 layers reshape with ``-1``, which an empty batch makes ambiguous: say so instead."""
    if not isinstance(x, torch.fx.Proxy) and x.shape[0] == 0:  # FX traces have no batch size to check
        raise ValueError(
            f"batch size must be >= 1 for this model (timm's layers cannot reshape an empty batch), "
            f"got input of shape {tuple(x.shape)}"
        )


def assert_map(x: torch.Tensor, dim: int) -> None:
    """Forward-pass assert: ``x`` is a channels-last map ``(B, H, W, dim)``."""
    torch._assert(x.ndim == 4, "x must be a channels-last map (B, H, W, C)")
    torch._assert(x.shape[-1] == dim, f"x has the wrong number of channels for dim={dim}")
