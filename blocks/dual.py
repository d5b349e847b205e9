"""DaViT's two attentions: spatial window attention and channel group attention.

Ding, Xiao, Codella, Luo, Wang, Yuan. "DaViT: Dual Attention Vision Transformers", ECCV 2022
(arXiv 2204.03645). Authors' code: dingmyu/davit ``timm/models/davit.py``; timm re-hosts the weights
(``timm.models.davit``), and both mixers keep its ``attn`` parameter names (``qkv``, ``proj``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.kernels._checks import assert_map, check_dim_heads, check_positive_int

from .record import AttentionRecord, QueryMap, RecordsAttention, query_grid, window_keys


@dataclass
class SpatialWindowRecord(AttentionRecord):
    """``attn`` ``(B, heads, H', W', ws*ws)`` over ``keys`` ``(H', W', ws*ws)``, each query's own window in the
    ``padded_size`` ``(H', W')`` map (padded tokens take part, as in DaViT); values ``v`` ``(B, H', W', heads, d)``.
    """

    map_size: tuple[int, int]
    padded_size: tuple[int, int]
    window_size: int
    attn: torch.Tensor
    keys: torch.Tensor
    v: torch.Tensor
    kind: str = "spatial_window"

    @property
    def batch_size(self) -> int:
        return self.attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        self._check_query(row, col, batch)
        grid = query_grid(self.attn, self.keys, (batch, row, col), self.padded_size, self.map_size)
        return [QueryMap(f"{self.window_size}x{self.window_size} window", grid, marker=(row, col))]


@dataclass
class ChannelGroupRecord(AttentionRecord):
    """``attn`` ``(B, heads, d, d)``: per head, how each output channel mixes the query's ``d`` channels of that
    head (the same for every pixel); ``q`` ``(B, H, W, heads, d)``."""

    map_size: tuple[int, int]
    attn: torch.Tensor
    q: torch.Tensor
    kind: str = "channel_group"

    @property
    def batch_size(self) -> int:
        return self.attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """The block-diagonal ``C x C`` channel mixing (one ``d x d`` block per head): no spatial map exists."""
        self._check_query(row, col, batch)
        title = f"channel attention: {self.attn.shape[1]} groups of {self.attn.shape[-1]} channels"
        return [QueryMap(title, torch.block_diag(*self.attn[batch].unbind(0)), over="matrix")]


class SpatialWindowAttention(RecordsAttention, nn.Module):
    """DaViT's spatial attention: MHSA inside non-overlapping windows, without position bias or shift.

    Maps not divisible by ``window_size`` are zero-padded at the bottom/right *before* ``qkv`` and the padded
    tokens take part unmasked, as the released weights were trained.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.window_size = check_positive_int("window_size", window_size)
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        batch, height, width, dim = x.shape
        ws, heads, head_dim = self.window_size, self.num_heads, self.head_dim
        rows, cols = (height + ws - 1) // ws, (width + ws - 1) // ws
        pad_b, pad_r = rows * ws - height, cols * ws - width
        # compiled: pad unconditionally (a no-op when divisible) so dynamic shapes need no guard on divisibility
        if torch.compiler.is_compiling() or pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        # (B, rows, ws, cols, ws, 3, heads, d) -> (3, B*rows*cols, heads, ws*ws, d)
        qkv = self.qkv(x).view(batch, rows, ws, cols, ws, 3, heads, head_dim)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, -1, heads, ws * ws, head_dim).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale d^-0.5, as DaViT
        if self.recording:
            self._record(self._attention_record(q, k, v, (height, width), (rows, cols)))
        out = out.view(batch, rows, cols, heads, ws, ws, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        # proj is per token, so cropping before it equals DaViT's project-then-crop
        return self.proj(out.reshape(batch, rows * ws, cols * ws, dim)[:, :height, :width])

    def _attention_record(self, q, k, v, map_size, windows) -> SpatialWindowRecord:
        """The windows' softmax weights, explicit (float32, float64 for float64 input), laid out per query."""
        (rows, cols), ws, heads = windows, self.window_size, self.num_heads
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        attn = ((q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * self.head_dim**-0.5).softmax(-1)
        attn = attn.view(-1, rows, cols, heads, ws, ws, ws * ws).permute(0, 3, 1, 4, 2, 5, 6)
        attn = attn.reshape(-1, heads, rows * ws, cols * ws, ws * ws)
        v_map = v.view(-1, rows, cols, heads, ws, ws, self.head_dim).permute(0, 1, 4, 2, 5, 3, 6)
        v_map = v_map.reshape(-1, rows * ws, cols * ws, heads, self.head_dim)
        keys = window_keys(rows * ws, cols * ws, ws, q.device)
        return SpatialWindowRecord(map_size, (rows * ws, cols * ws), ws, attn.detach(), keys, v_map.detach())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}"


class ChannelGroupAttention(RecordsAttention, nn.Module):
    """DaViT's channel attention: per head, ``A = softmax(k^T v / sqrt(d))`` (``d x d``) mixes q's channels.

    DaViT's operand roles (k and v build the map); no token-by-token matrix, so no SDPA.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        batch, height, width, dim = x.shape
        q, k, v = self.qkv(x).view(batch, height * width, 3, self.num_heads, self.head_dim).unbind(2)
        k = k * self.head_dim**-0.5
        attn = torch.einsum("bnhi,bnhj->bhij", k, v).softmax(dim=-1)  # (B, heads, d, d)
        if self.recording:  # the same d x d softmax the forward uses: there is no fused path to bypass
            record_q = q.detach().view(batch, height, width, self.num_heads, self.head_dim)
            self._record(ChannelGroupRecord((height, width), attn.detach(), record_q))
        out = torch.einsum("bhij,bnhj->bnhi", attn.to(q.dtype), q)
        return self.proj(out.reshape(batch, height, width, dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


def davit_attention(
    dim: int, num_heads: int, attention: str = "spatial", window_size: int = 7, qkv_bias: bool = True
) -> SpatialWindowAttention | ChannelGroupAttention:
    """``create_mixer("dual")``: DaViT's ``"spatial"`` or ``"channel"`` attention (``window_size``: spatial only)."""
    if attention == "spatial":
        return SpatialWindowAttention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias)
    if attention == "channel":
        return ChannelGroupAttention(dim, num_heads, qkv_bias=qkv_bias)
    raise ValueError(f"attention must be 'spatial' or 'channel', got {attention!r}")


__all__ = ["ChannelGroupAttention", "SpatialWindowAttention", "davit_attention"]
