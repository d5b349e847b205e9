"""The two reference points the arena measures the seven mixers against, both on SDPA.

* :class:`DenseAttention`: global multi-head self-attention over every token of the map (ViT: Dosovitskiy et al.,
  "An Image is Worth 16x16 Words", ICLR 2021). The one mixer here that *needs* the N x N attention.
* :class:`ShiftedWindowAttention`: Swin's window attention with relative position bias and, every second block,
  the cyclic shift by half a window (Liu et al., "Swin Transformer", ICCV 2021, arXiv 2103.14030).

They are not :func:`~attnzoo.blocks.create_mixer` names (that registry is the seven mechanisms of the zoo); the
arena family (:mod:`attnzoo.arena`) builds them directly. Both take and return channels-last ``(B, H, W, C)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from attnzoo.kernels._checks import assert_map, check_dim_heads, check_positive_int

__all__ = ["DenseAttention", "ShiftedWindowAttention"]


class DenseAttention(nn.Module):
    """Every token attends to every token (``F.scaled_dot_product_attention``): the quadratic baseline."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        batch, height, width, dim = x.shape
        q, k, v = self.qkv(x).view(batch, height * width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class ShiftedWindowAttention(nn.Module):
    """Swin's (shifted) window attention on a channels-last map.

    Maps are zero-padded at the bottom/right to a multiple of the window and the shift mask is built on the padded
    map, as Swin's detection backbone does; a map no larger than the window is one window without shift (Swin's
    rule). The relative position bias table ``(2*ws-1)^2 x heads`` is Swin's; a smaller window reads its centre.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False, qkv_bias: bool = True):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.window_size = check_positive_int("window_size", window_size)
        self.dim, self.num_heads, self.shift = dim, num_heads, bool(shift)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self, ws: int) -> torch.Tensor:
        """``(heads, ws*ws, ws*ws)`` relative position bias of a ``ws`` window (``ws <= window_size``)."""
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + self.window_size - 1
        index = (rel[0] * (2 * self.window_size - 1) + rel[1]).to(self.relative_position_bias_table.device)
        return self.relative_position_bias_table[index.flatten()].view(ws * ws, ws * ws, -1).permute(2, 0, 1)

    @staticmethod
    def _shift_mask(height: int, width: int, ws: int, shift: int, device) -> torch.Tensor:
        """``(windows, ws*ws, ws*ws)`` boolean: True where query and key came from the same region before the shift."""
        region = torch.zeros(height, width, device=device)
        label = 0
        for rows in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for cols in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                region[rows, cols] = label
                label += 1
        region = region.view(height // ws, ws, width // ws, ws).transpose(1, 2).reshape(-1, ws * ws)
        return region[:, :, None] == region[:, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        batch, height, width, dim = x.shape
        ws = min(self.window_size, height, width)
        shift = ws // 2 if self.shift and min(height, width) > self.window_size else 0
        pad_b, pad_r = -height % ws, -width % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = height + pad_b, width + pad_r
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        rows, cols, heads, d = hp // ws, wp // ws, self.num_heads, self.head_dim
        qkv = self.qkv(x).view(batch, rows, ws, cols, ws, 3, heads, d)
        q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch, rows * cols, heads, ws * ws, d).unbind(0)
        bias = self._bias(ws).to(q.dtype)  # (heads, n, n)
        if shift:
            allowed = self._shift_mask(hp, wp, ws, shift, x.device)  # (windows, n, n)
            bias = bias[None].masked_fill(~allowed[:, None], float("-inf"))  # (windows, heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, windows, heads, n, d)
        out = out.view(batch, rows, cols, heads, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, hp, wp, dim)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        return self.proj(out[:, :height, :width])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, shift={self.shift}"
