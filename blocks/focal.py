"""Focal modulation as a token mixer.

Yang, Li, Dai, Gao. "Focal Modulation Networks", NeurIPS 2022 (arXiv 2203.11926).
Authors' code: microsoft/FocalNet ``classification/focalnet.py::FocalModulation``; timm re-hosts the
weights (``timm.models.focalnet``, NCHW with 1x1 convolutions).

Instead of attending, each pixel *modulates* its query with a context gathered hierarchically: a stack
of depthwise convolutions with growing kernels (``focal_factor * l + focal_window``) gives
increasingly wide contexts, a last global level averages the widest one over the map, and per-pixel
gates (raw linear outputs, no softmax) mix the levels. Cost is linear in pixels, with no attention map.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_fraction, check_map, check_odd, check_positive_int, conv_channels_last


class FocalModulation(nn.Module):
    """FocalNet's focal modulation on channels-last maps ``(B, H, W, C)``.

    ``num_heads`` exists only for the ``create_mixer(name, dim, num_heads)`` contract: focal modulation
    has no heads, so it is validated (a positive int) and ignored. The other arguments are
    the official ones; ``focal_window`` / ``focal_level`` default to the ``*_srf`` models' 3 / 2.

    Parameters keep the official checkpoint names and shapes: ``f`` (Linear ``C -> 2C + L + 1``),
    ``focal_layers.{l}.0`` (depthwise conv, no bias), ``h`` (the official 1x1 ``nn.Conv2d``, weight
    ``(C, C, 1, 1)``; applied here as the equivalent per-pixel linear map on channels-last data),
    ``ln`` (only with ``use_postln_in_modulation``) and ``proj``. Only the depthwise convolutions see
    an NCHW view, in channels_last memory format, so eagerly no layout copies are made between levels.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        focal_window: int = 3,
        focal_level: int = 2,
        focal_factor: int = 2,
        bias: bool = True,
        proj_drop: float = 0.0,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
    ):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)  # no heads in focal modulation: validated, then ignored
        self.focal_window = check_odd("focal_window", focal_window)
        self.focal_level = check_positive_int("focal_level", focal_level)
        if isinstance(focal_factor, bool) or not isinstance(focal_factor, numbers.Integral):
            raise TypeError(f"focal_factor must be an int, got {type(focal_factor).__name__} {focal_factor!r}")
        if focal_factor < 0 or focal_factor % 2:
            # kernels focal_factor * l + focal_window must stay odd to keep the map size with padding k // 2
            raise ValueError(f"focal_factor must be a non-negative even int, got {focal_factor}")
        self.focal_factor = int(focal_factor)
        proj_drop = check_fraction("proj_drop", proj_drop, 0.0, 1.0)
        self.use_postln_in_modulation = bool(use_postln_in_modulation)
        self.normalize_modulator = bool(normalize_modulator)

        self.f = nn.Linear(dim, 2 * dim + self.focal_level + 1, bias=bias)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kernel_sizes = [self.focal_factor * level + self.focal_window for level in range(self.focal_level)]
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in self.kernel_sizes
        )
        if self.use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map(x, self.dim)
        levels = self.focal_level
        q, ctx, gates = torch.split(self.f(x), (self.dim, self.dim, levels + 1), dim=-1)

        ctx_all: torch.Tensor | float = 0.0  # 0 + t is exactly t: the official accumulation order
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = conv_channels_last(focal_layer, ctx)  # level 0 copies its slice of f's output once
            ctx_all = ctx_all + ctx * gates[..., level : level + 1]
        ctx_global = self.act(ctx.mean(dim=(1, 2), keepdim=True))  # mean of the widest level, not of the input
        ctx_all = ctx_all + ctx_global * gates[..., levels:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (levels + 1)

        modulator = F.linear(ctx_all, self.h.weight.flatten(1), self.h.bias)
        out = q * modulator
        if self.use_postln_in_modulation:
            out = self.ln(out)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, focal_window={self.focal_window}, focal_level={self.focal_level}, "
            f"focal_factor={self.focal_factor}, kernel_sizes={self.kernel_sizes}"
        )


__all__ = ["FocalModulation"]
