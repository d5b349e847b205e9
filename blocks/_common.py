"""Argument and input checks shared by the mixers; each error names the argument."""

from __future__ import annotations

import numbers

import torch
from torch import nn


def check_dim_heads(dim: object, num_heads: object) -> int:
    """Validate ``dim``/``num_heads`` and return the head dimension."""
    for name, value in (("dim", dim), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
    return dim // num_heads


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
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


def check_fraction(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    """A real number in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    below = value <= low if low_open else value < low
    if below or value > high:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


def check_map(x: object, dim: int, name: str = "x") -> torch.Tensor:
    """A channels-last map ``(B, H, W, dim)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a channels-last map (B, H, W, C), got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"{name} has {x.shape[-1]} channels but the module was built with dim={dim}")
    return x


def check_sequence(x: object, dim: int, grid_size: object, num_prefix_tokens: int, name: str = "x") -> tuple[int, int]:
    """A token sequence ``(B, prefix + H*W, dim)`` with its grid ``(H, W)``; returns the grid."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be a token sequence (B, N, C), got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"{name} has {x.shape[-1]} channels but the module was built with dim={dim}")
    if grid_size is None or len(grid_size) != 2:
        raise ValueError(f"grid_size must be (H, W) for a token sequence, got {grid_size!r}")
    height, width = (int(s) for s in grid_size)
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    if x.shape[1] != num_prefix_tokens + height * width:
        raise ValueError(
            f"{name} has {x.shape[1]} tokens but num_prefix_tokens + H*W = {num_prefix_tokens} + {height}*{width} "
            f"= {num_prefix_tokens + height * width}"
        )
    return height, width


def check_optional_positive_real(name: str, value: object) -> float | None:
    """``None`` or a real number > 0 (e.g. ``qk_scale``, where ``None`` means the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 (or None), got {value}")
    return float(value)


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW conv module to a channels-last map ``(B, H, W, C)`` and return channels-last.

    Eagerly the conv sees channels_last memory (a free permute for contiguous maps; several times
    faster than an NCHW copy for depthwise convs on CPU). Under ``torch.compile`` it sees an
    NCHW-contiguous input instead: Inductor (torch 2.14) fails to order the strides of a
    channels_last conv input once shapes turn dynamic ("cannot determine truth value of Relational"),
    and it chooses the conv layout itself anyway.
    """
    if torch.compiler.is_compiling():
        return conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()
    return conv(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
