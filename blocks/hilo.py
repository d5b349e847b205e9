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

from dataclasses import dataclass

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

from .record import AttentionRecord, QueryMap, RecordsAttention, query_grid, window_keys


@dataclass
class HiLoRecord(AttentionRecord):
    """Both branches over the ``padded_size`` ``(H', W')`` map (each ``None`` when the layer has no such heads).

    Hi-Fi: ``hifi_attn`` ``(B, h_heads, H', W', s*s)`` over ``hifi_keys`` ``(H', W', s*s)`` (the query's own
    window), values ``hifi_v`` ``(B, H', W', h_heads, d)``. Lo-Fi: ``lofi_attn`` ``(B, l_heads, H', W', Hp*Wp)``
    over every cell of the ``pooled_size`` ``(Hp, Wp)`` average-pooled map, values ``lofi_v``
    ``(B, Hp, Wp, l_heads, d)``. Outputs are ``h_proj`` / ``l_proj`` of the branches, concatenated and cropped.
    """

    map_size: tuple[int, int]
    padded_size: tuple[int, int]
    window_size: int
    pooled_size: tuple[int, int]
    hifi_attn: torch.Tensor | None
    hifi_keys: torch.Tensor | None
    hifi_v: torch.Tensor | None
    lofi_attn: torch.Tensor | None
    lofi_v: torch.Tensor | None
    kind: str = "hilo"

    @property
    def batch_size(self) -> int:
        return (self.hifi_attn if self.hifi_attn is not None else self.lofi_attn).shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        self._check_query(row, col, batch)
        height, width = self.map_size
        s = self.window_size
        maps = []
        if self.hifi_attn is not None:
            grid = query_grid(self.hifi_attn, self.hifi_keys, (batch, row, col), self.padded_size, self.map_size)
            maps.append(QueryMap(f"Hi-Fi: {s}x{s} window", grid, marker=(row, col)))
        if self.lofi_attn is not None:
            pooled = self.lofi_attn[batch, :, row, col].mean(0).unflatten(-1, self.pooled_size)
            title = f"Lo-Fi: {self.pooled_size[0]}x{self.pooled_size[1]} map pooled {s}x{s}" if s > 1 else "global"
            if self.padded_size != tuple(self.map_size):  # the pooled grid covers the padding: show the map's part
                pooled = pooled.repeat_interleave(s, 0).repeat_interleave(s, 1)[:height, :width] / (s * s)
                maps.append(QueryMap(title, pooled, marker=(row, col)))
            else:
                maps.append(QueryMap(title, pooled, marker=(row // s, col // s)))
        return maps


class HiLo(RecordsAttention, nn.Module):
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

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, heads, d)`` -> ``(B * windows, heads, s*s, d)``: windows become batch entries."""
        batch, height, width, heads, d = t.shape
        s = self.ws
        t = t.view(batch, height // s, s, width // s, s, heads, d).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(-1, heads, s * s, d)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Attention inside non-overlapping ``ws x ws`` windows of a map whose sides are multiples of ``ws``."""
        batch, height, width, _ = x.shape
        s, heads, d = self.ws, self.h_heads, self.head_dim
        q, k, v = (self._windows(t) for t in self.h_qkv(x).view(batch, height, width, 3, heads, d).unbind(3))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.view(batch, height // s, width // s, heads, s, s, d).permute(0, 1, 4, 2, 5, 3, 6)
        return self.h_proj(out.reshape(batch, height, width, self.h_dim))

    def _lofi_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q`` ``(B, heads, H*W, d)`` of every token, ``k``/``v`` ``(B, heads, Hp*Wp, d)`` of the pooled map."""
        batch, height, width, _ = x.shape
        heads, d = self.l_heads, self.head_dim
        q = self.l_q(x).view(batch, height * width, heads, d).transpose(1, 2)
        pooled = x
        if self.ws > 1:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws).permute(0, 2, 3, 1)
        kv = self.l_kv(pooled).reshape(batch, pooled.shape[1] * pooled.shape[2], 2, heads, d).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Every token attends to the average-pooled map (the full map when ``ws == 1``)."""
        batch, height, width, _ = x.shape
        out = F.scaled_dot_product_attention(*self._lofi_qkv(x), scale=self.scale)
        return self.l_proj(out.transpose(1, 2).reshape(batch, height, width, self.l_dim))

    def _attention_record(self, x: torch.Tensor, map_size: tuple[int, int]) -> HiLoRecord:
        """Both branches' weights by explicit softmax (float32, float64 for float64 input) on the padded map."""
        batch, height, width, _ = x.shape
        s, d = self.ws, self.head_dim
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        hifi_attn = hifi_keys = hifi_v = lofi_attn = lofi_v = None
        if self.h_heads > 0:
            q, k, v = self.h_qkv(x).view(batch, height, width, 3, self.h_heads, d).unbind(3)
            logits = (self._windows(q).to(dtype) @ self._windows(k).to(dtype).transpose(-1, -2)) * self.scale
            attn = logits.softmax(-1).view(batch, height // s, width // s, self.h_heads, s, s, s * s)
            hifi_attn = attn.permute(0, 3, 1, 4, 2, 5, 6).reshape(batch, self.h_heads, height, width, s * s)
            hifi_keys, hifi_v = window_keys(height, width, s, x.device), v.detach()
        if self.l_heads > 0:
            q, k, v = self._lofi_qkv(x)
            logits = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * self.scale
            lofi_attn = logits.softmax(-1).unflatten(2, (height, width))
            lofi_v = v.transpose(1, 2).reshape(batch, height // s, width // s, self.l_heads, d).detach()
        return HiLoRecord(
            map_size,
            (height, width),
            s,
            (height // s, width // s),
            None if hifi_attn is None else hifi_attn.detach(),
            hifi_keys,
            hifi_v,
            None if lofi_attn is None else lofi_attn.detach(),
            lofi_v,
        )

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
        if self.recording:
            self._record(self._attention_record(x, (height, width)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.ws}, alpha={self.alpha}, "
            f"h_heads={self.h_heads}, l_heads={self.l_heads}"
        )
