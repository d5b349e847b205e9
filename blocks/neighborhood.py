"""Neighborhood attention as a token mixer.

Hassani, Walton, Li, Li, Shi. "Neighborhood Attention Transformer", CVPR 2023 (arXiv 2204.07143);
Hassani & Shi. "Dilated Neighborhood Attention Transformer" (arXiv 2209.15001).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from attnzoo.kernels import na2d, na2d_attention_weights
from attnzoo.kernels._checks import (
    assert_map,
    check_dim_heads,
    check_odd,
    check_optional_positive_real,
    check_positive_int,
)

from .record import AttentionRecord, QueryMap, RecordsAttention, query_grid


@dataclass
class NeighborhoodRecord(AttentionRecord):
    """``attn`` ``(B, heads, H', W', k*k)`` over the keys ``keys`` ``(H', W', k*k)`` (raster positions in the
    ``padded_size`` ``(H', W')`` map the mixer attends over), ``v`` ``(B, H', W', heads, d)``."""

    map_size: tuple[int, int]
    padded_size: tuple[int, int]
    kernel_size: int
    dilation: int
    attn: torch.Tensor
    keys: torch.Tensor
    v: torch.Tensor
    kind: str = "neighborhood"

    @property
    def batch_size(self) -> int:
        return self.attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        self._check_query(row, col, batch)
        grid = query_grid(self.attn, self.keys, (batch, row, col), self.padded_size, self.map_size)
        title = f"{self.kernel_size}x{self.kernel_size} neighbourhood" + (
            f", dilation {self.dilation}" if self.dilation > 1 else ""
        )
        return [QueryMap(title, grid, marker=(row, col))]


class NeighborhoodAttention2D(RecordsAttention, nn.Module):
    """Each pixel attends to its ``kernel_size x kernel_size`` (dilated) neighbourhood, plus NAT's bias.

    Parameters keep the NAT/DiNAT checkpoint names: ``qkv``, ``rpb`` ``(heads, 2k-1, 2k-1)``, ``proj``. Maps
    smaller than ``kernel_size * dilation`` are zero-padded at the bottom/right before ``qkv`` and cropped
    afterwards, as NAT's module did (NATTEN <= 0.14) and the released dense-task checkpoints were trained.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos_bias: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = check_dim_heads(dim, num_heads)
        self.kernel_size = check_odd("kernel_size", kernel_size)
        self.dilation = check_positive_int("dilation", dilation)
        qk_scale = check_optional_positive_real("qk_scale", qk_scale)
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        batch, height, width, _ = x.shape
        span = self.kernel_size * self.dilation
        pad_h, pad_w = max(span - height, 0), max(span - width, 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(3)
        out = na2d(
            q,
            k,
            v,
            self.kernel_size,
            self.dilation,
            rpb=self.rpb,
            scale=self.scale,
            attn_drop=self.attn_drop if self.training else 0.0,
        )
        if self.recording:
            attn, keys = na2d_attention_weights(q, k, self.kernel_size, self.dilation, self.rpb, self.scale)
            self._record(
                NeighborhoodRecord(
                    (height, width),
                    tuple(q.shape[1:3]),
                    self.kernel_size,
                    self.dilation,
                    attn.detach(),
                    keys,
                    v.detach(),
                )
            )
        out = out.flatten(-2)[:, :height, :width]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, dilation={self.dilation}"
