"""HiLo attention: high-frequency local-window heads beside low-frequency pooled global heads.

Pan, Cai, Zhuang. "Fast Vision Transformers with HiLo Attention", NeurIPS 2022 (arXiv 2205.13213).
Authors' code: ziplab/LITv2, ``classification/models/attentions.py::HiLo`` and the detection backbone
``detection/mmdet/models/backbones/litv2.py`` (padding of maps not divisible by the window).

``int(num_heads * alpha)`` Lo-Fi heads attend from every token to the ``s x s`` average-pooled map (coarse
structure is smooth), the other, Hi-Fi heads within ``s x s`` windows (detail is local); outputs are
concatenated as ``[Hi-Fi | Lo-Fi]``. ``window_size == 1`` is plain global MHSA through the Lo-Fi
projections, as in the released stage-4 weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.kernels._checks import (
    assert_map,
    check_dim_heads,
    check_fraction,
    check_optional_positive_real,
    check_positive_int,
)


class HiLo(nn.Module):
    """LITv2's HiLo attention on channels-last maps ``(B, H, W, C)``.

    Parameters keep the LITv2 checkpoint names: ``h_qkv``/``h_proj`` (only with Hi-Fi heads) and
    ``l_q``/``l_kv``/``l_proj`` (only with Lo-Fi heads). Maps not divisible by ``window_size`` are zero-padded
    at the bottom/right before the projections and each branch is cropped, as in LITv2's detection backbone.
    ``attn_drop`` and ``proj_drop`` are accepted but, as in the reference module, not applied.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        window_size: int = 2,
        alpha: float = 0.5,
    ):
        super().__init__()
        head_dim = check_dim_heads(dim, num_heads)
        self.ws = check_positive_int("window_size", window_size)
        alpha = check_fraction("alpha", alpha, 0.0, 1.0)
        self.attn_drop = check_fraction("attn_drop", attn_drop, 0.0, 1.0)
        self.proj_drop = check_fraction("proj_drop", proj_drop, 0.0, 1.0)
        qk_scale = check_optional_positive_real("qk_scale", qk_scale)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.alpha = alpha
        self.l_heads = int(num_heads * alpha)
        if self.ws == 1:  # a 1x1 window is a single token: the whole layer is global attention
            self.l_heads = num_heads
        self.h_heads = num_heads - self.l_heads
        self.l_dim = self.l_heads * head_dim
        self.h_dim = self.h_heads * head_dim
        self.scale = qk_scale if qk_scale is not None else head_dim**-0.5
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside non-overlapping ``ws x ws`` windows of a map whose sides are multiples of ``ws``."""
        batch, height, width, _ = x.shape
        s, heads, d = self.ws, self.h_heads, self.head_dim
        rows, cols = height // s, width // s
        qkv = self.h_qkv(x).view(batch, rows, s, cols, s, 3, heads, d)
        # (3, B * windows, heads, s*s, d): windows become batch entries of one SDPA call
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, batch * rows * cols, heads, s * s, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.scale)
        out = out.view(batch, rows, cols, heads, s, s, d).permute(0, 1, 4, 2, 5, 3, 6)
        return self.h_proj(out.reshape(batch, height, width, self.h_dim))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Every token attends to the average-pooled map (the full map when ``ws == 1``)."""
        batch, height, width, _ = x.shape
        heads, d = self.l_heads, self.head_dim
        q = self.l_q(x).view(batch, height * width, heads, d).transpose(1, 2)
        pooled = x
        if self.ws > 1:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws).permute(0, 2, 3, 1)
        kv = self.l_kv(pooled).reshape(batch, pooled.shape[1] * pooled.shape[2], 2, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)
        return self.l_proj(out.transpose(1, 2).reshape(batch, height, width, self.l_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        height, width = x.shape[1], x.shape[2]
        pad_h, pad_w = -height % self.ws, -width % self.ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        outs = []
        if self.h_heads > 0:
            outs.append(self.hifi(x)[:, :height, :width])
        if self.l_heads > 0:
            outs.append(self.lofi(x)[:, :height, :width])
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.ws}, alpha={self.alpha}, "
            f"h_heads={self.h_heads}, l_heads={self.l_heads}"
        )
