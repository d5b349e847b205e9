"""Focal modulation as a token mixer.

Yang, Li, Dai, Gao. "Focal Modulation Networks", NeurIPS 2022 (arXiv 2203.11926).
Authors' code: microsoft/FocalNet ``classification/focalnet.py::FocalModulation``; timm re-hosts the
weights (``timm.models.focalnet``, NCHW with 1x1 convolutions).

Each pixel modulates its query with a context from depthwise convolutions of growing kernels
(``focal_factor * l + focal_window``) plus a global average, mixed by per-pixel gates: no attention map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.kernels._checks import assert_map, check_fraction, check_odd, check_positive_int

from .record import AttentionRecord, QueryMap, RecordsAttention


def _conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An NCHW conv on a channels-last map: channels_last memory eagerly (no copy; fast depthwise convs on CPU),
    NCHW-contiguous under ``torch.compile`` (Inductor in torch 2.14 cannot order channels_last conv strides with
    dynamic shapes, and picks the conv layout itself anyway)."""
    if torch.compiler.is_compiling():
        return conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()
    return conv(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


@dataclass
class FocalModulationRecord(AttentionRecord):
    """No attention map exists: each pixel's query ``q`` ``(B, H, W, C)`` is multiplied by its ``modulator``
    ``(B, H, W, C)`` = ``h(sum_l gates[..., l] * contexts[l])`` (divided by ``L + 1`` with
    ``normalize_modulator``). ``contexts`` ``(L+1, B, H, W, C)``: the depthwise-conv levels (kernels
    ``kernel_sizes``), then the global average (broadcast); ``gates`` ``(B, H, W, L+1)``.
    """

    map_size: tuple[int, int]
    kernel_sizes: list[int]
    q: torch.Tensor
    contexts: torch.Tensor
    gates: torch.Tensor
    modulator: torch.Tensor
    kind: str = "focal_modulation"

    @property
    def batch_size(self) -> int:
        return self.q.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """The modulator's magnitude over the map (FocalNet's Fig. 1/5), then where each level's gate opens.

        Neither depends on the query (marked for reference): the context every pixel receives is its own.
        """
        self._check_query(row, col, batch)
        maps = [QueryMap("modulator |h(z)| per pixel", self.modulator[batch].norm(dim=-1), marker=(row, col))]
        names = [f"gate of level {level} ({k}x{k} conv)" for level, k in enumerate(self.kernel_sizes)] + [
            "gate of global context"
        ]
        for level, name in enumerate(names):
            maps.append(QueryMap(name, self.gates[batch, ..., level], marker=(row, col)))
        return maps


class FocalModulation(RecordsAttention, nn.Module):
    """FocalNet's focal modulation on channels-last maps ``(B, H, W, C)``.

    ``num_heads`` exists only for the ``create_mixer(name, dim, num_heads)`` contract (no heads here): it is
    validated and ignored. ``focal_window`` / ``focal_level`` default to the ``*_srf`` models' 3 / 2.
    Parameters keep the official names and shapes: ``f``, ``focal_layers.{l}.0``, ``h`` (the official 1x1
    ``nn.Conv2d``, applied as the equivalent linear map on channels-last data), ``ln`` (only with
    ``use_postln_in_modulation``) and ``proj``.
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
        self.focal_factor = check_positive_int("focal_factor", focal_factor, minimum=0)
        if self.focal_factor % 2:  # kernels focal_factor * l + focal_window must stay odd ("same" padding k // 2)
            raise ValueError(f"focal_factor must be a non-negative even int, got {focal_factor}")
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
        assert_map(x, self.dim)
        levels = self.focal_level
        q, ctx, gates = torch.split(self.f(x), (self.dim, self.dim, levels + 1), dim=-1)

        ctx_all: torch.Tensor | float = 0.0  # 0 + t is exactly t: the official accumulation order
        contexts = []  # kept only while recording
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = _conv_channels_last(focal_layer, ctx)  # level 0 copies its slice of f's output once
            ctx_all = ctx_all + ctx * gates[..., level : level + 1]
            if self.recording:
                contexts.append(ctx.detach())
        ctx_global = self.act(ctx.mean(dim=(1, 2), keepdim=True))  # mean of the widest level, not of the input
        ctx_all = ctx_all + ctx_global * gates[..., levels:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (levels + 1)

        modulator = F.linear(ctx_all, self.h.weight.flatten(1), self.h.bias)
        if self.recording:
            contexts.append(ctx_global.detach().expand_as(contexts[-1]))
            self._record(
                FocalModulationRecord(
                    tuple(x.shape[1:3]),
                    list(self.kernel_sizes),
                    q.detach(),
                    torch.stack(contexts),
                    gates.detach(),
                    modulator.detach(),
                )
            )
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
