"""Agent attention: softmax attention routed through a few pooled agent tokens.

Han, Ye, Han, Pan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear Attention",
ECCV 2024 (arXiv 2312.08874). Authors' code: LeapLabTHU/Agent-Attention, ``agent_transformer/models/``
``agent_swin.py`` / ``agent_pvt.py`` (map form) and ``agent_deit.py`` (sequence form with a cls token).

``n`` agent tokens ``A`` (queries average-pooled to a ``sqrt(n) x sqrt(n)`` grid) first gather the values,
``V_A = softmax(A K^T s + B_ak) V``, then broadcast them back, ``O = softmax(Q A^T s + B_qa) V_A``. Both
softmaxes are ``n x N`` / ``N x n``, so the cost is linear in the token count ``N`` and no ``N x N`` matrix
exists. A depthwise 3x3 conv of ``V`` (``dwc``) restores local detail before ``proj``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import _assert, trunc_normal_
from torch import nn

from attnzoo.kernels._checks import (
    check_dim_heads,
    check_fraction,
    check_optional_positive_real,
    check_positive_int,
)

from .record import AttentionRecord, QueryMap, RecordsAttention


@dataclass
class AgentRecord(AttentionRecord):
    """``n = gh * gw`` agents (raster order over ``agent_grid``), ``P`` prefix tokens, keys on the ``key_size``
    ``(h, w)`` grid (the map reduced by ``sr_ratio``), queries on ``map_size`` ``(H, W)``.

    ``agent_attn`` ``(B, heads, n, P + h*w)``: agents over keys; ``query_attn`` ``(B, heads, P + H*W, n)``: queries
    over agents; ``v`` ``(B, heads, P + h*w, d)``; ``local`` ``(B, H, W, C)``: the ``dwc`` term added to the patch
    tokens. Output before ``proj``: ``query_attn @ (agent_attn @ v)``, heads merged, plus ``local`` on patches.
    """

    map_size: tuple[int, int]
    key_size: tuple[int, int]
    agent_grid: tuple[int, int]
    num_prefix_tokens: int
    agent_attn: torch.Tensor
    query_attn: torch.Tensor
    v: torch.Tensor
    local: torch.Tensor
    kind: str = "agent"

    @property
    def batch_size(self) -> int:
        return self.agent_attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """The query's effective weights over the keys (through the agents), its weights over the agents, and the
        map of its strongest agent: that agent's weights over the keys (the paper's agent maps)."""
        self._check_query(row, col, batch)
        height, width = self.map_size
        prefix = self.num_prefix_tokens
        to_agents = self.query_attn[batch, :, prefix + row * width + col]  # (heads, n)
        effective = (to_agents[:, None, :] @ self.agent_attn[batch]).squeeze(1).mean(0)  # (P + h*w,)
        (kh, kw), (gh, gw) = self.key_size, self.agent_grid
        title = f"through {gh * gw} agents: {kh}x{kw} keys"
        if prefix:
            title += f" ({'cls' if prefix == 1 else 'prefix'} {effective[:prefix].sum().item():.2f})"
        key_cell, agent_cell = (row * kh // height, col * kw // width), (row * gh // height, col * gw // width)
        per_agent = to_agents.mean(0)
        strongest = int(per_agent.argmax())
        agent_map = self.agent_attn[batch, :, strongest, prefix:].mean(0).view(kh, kw)  # what that agent gathered
        agent_title = f"agent {strongest // gw},{strongest % gw} ({per_agent[strongest].item():.2f} of the query)"
        return [
            QueryMap(title, effective[prefix:].view(kh, kw), marker=key_cell),
            QueryMap(f"{gh}x{gw} agents", per_agent.view(gh, gw), marker=agent_cell),
            QueryMap(agent_title, agent_map, marker=key_cell),
        ]


def _five_d_as_4d(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` (what ``Module._apply`` maps over the tensors) applied to each 5-D tensor through a 4-D view of it.

    ``Module.to(memory_format=torch.channels_last)`` passes every 4-D *and* 5-D tensor to
    ``Tensor.to(memory_format=...)`` (5-D for ``channels_last_3d``), and that raises for channels_last on 5-D ones:
    the ``ah/aw/ha/wa_bias`` tables made every agent model refuse the format. Folding the leading two dims gives
    ``fn`` a 4-D tensor (device, dtype and format apply as to any parameter); unfolding and a contiguous copy give
    back the table's own shape, values and layout, so the checkpoint keys and shapes are the authors'.
    """

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() != 5:
            return fn(tensor)
        return fn(tensor.flatten(0, 1)).unflatten(0, tensor.shape[:2]).contiguous()

    return apply


def _check_agent_num(agent_num: object) -> int:
    agent_num = check_positive_int("agent_num", agent_num)
    if math.isqrt(agent_num) ** 2 != agent_num:
        raise ValueError(f"agent_num must be a perfect square (agents form a p x p grid), got {agent_num}")
    return agent_num


def _check_window_size(window_size: object) -> tuple[int, int]:
    if isinstance(window_size, numbers.Integral) and not isinstance(window_size, bool):
        window_size = (window_size, window_size)
    if not isinstance(window_size, Sequence) or len(window_size) != 2:
        raise ValueError(f"window_size must be an int or a pair (H, W), got {window_size!r}")
    return check_positive_int("window_size[0]", window_size[0]), check_positive_int("window_size[1]", window_size[1])


class AgentAttention(RecordsAttention, nn.Module):
    """Agent attention over one ``window_size`` map, optionally preceded by prefix (cls) tokens.

    Takes a channels-last map ``(B, H, W, C)`` (Agent-Swin; Agent-PVT with ``sr_ratio=1``: the window is the
    whole map) or a sequence ``(B, P + H*W, C)`` with ``grid_size=(H, W)`` (Agent-DeiT, ``P =
    num_prefix_tokens``: agents are pooled from the patch queries and ``dwc`` is added to patch tokens only).

    Parameter names follow the authors' checkpoints (Agent-PVT's ``q``/``kv`` are concatenated into ``qkv`` by
    its converter); the ``*_bias`` tables are sized by the window, so a module serves one map size.
    ``sr_ratio > 1`` (Agent-PVT's ``agent_sr_ratios``): keys and values come from the map reduced by a strided
    conv + LayerNorm (separate ``q``/``kv``/``sr``/``norm`` then), the agent->key biases are sized by the reduced
    map, and ``dwc`` runs on the values bilinearly upsampled back to the map, as in the authors' ``agent_pvt.py``.
    ``qk_scale`` overrides ``head_dim ** -0.5`` (the authors' modules accept but ignore it).

    Dense prediction (the authors' ``downstream/`` backbones): ``dynamic_size=True`` resizes the window-sized
    biases to each map; ``agent_grid=(gh, gw)`` pools the agents to that grid (their
    ``downstream_agent_shape``), the bias tables resized over the agent axis.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        agent_num: int = 49,
        window_size: int | Sequence[int] = (14, 14),
        num_prefix_tokens: int = 0,
        dynamic_size: bool = False,
        agent_grid: int | Sequence[int] | None = None,
        sr_ratio: int = 1,
    ):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = check_dim_heads(dim, num_heads)
        self.agent_num = _check_agent_num(agent_num)
        self.pool_size = math.isqrt(self.agent_num)
        self.window_size = _check_window_size(window_size)
        self.num_prefix_tokens = check_positive_int("num_prefix_tokens", num_prefix_tokens, minimum=0)
        qk_scale = check_optional_positive_real("qk_scale", qk_scale)
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.attn_drop = check_fraction("attn_drop", attn_drop, 0.0, 1.0)
        proj_drop = check_fraction("proj_drop", proj_drop, 0.0, 1.0)
        self.dynamic_size = bool(dynamic_size)
        grid = (self.pool_size, self.pool_size) if agent_grid is None else agent_grid
        self.agent_grid = _check_window_size(grid)  # a positive pair, like a window
        if self.num_prefix_tokens and self.agent_grid != (self.pool_size, self.pool_size):
            raise ValueError("agent_grid other than sqrt(agent_num) is for maps without prefix tokens")
        self.sr_ratio = check_positive_int("sr_ratio", sr_ratio)
        if self.num_prefix_tokens and self.sr_ratio > 1:
            raise ValueError("sr_ratio > 1 is for maps without prefix tokens")
        self.key_size = (self.window_size[0] // self.sr_ratio, self.window_size[1] // self.sr_ratio)
        if min(self.key_size) < 1:
            raise ValueError(f"sr_ratio={self.sr_ratio} reduces the window_size {self.window_size} to nothing")

        wh, ww = self.window_size
        heads, agents, prefix = num_heads, self.agent_num, self.num_prefix_tokens
        if self.sr_ratio == 1:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
            self.sr = nn.Conv2d(dim, dim, kernel_size=self.sr_ratio, stride=self.sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(heads, agents, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(heads, agents, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, heads, agents, self.key_size[0], 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, heads, agents, 1, self.key_size[1]))
        self.ha_bias = nn.Parameter(torch.zeros(1, heads, wh, 1, agents))
        self.wa_bias = nn.Parameter(torch.zeros(1, heads, 1, ww, agents))
        biases = [self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias]
        if prefix:
            self.ac_bias = nn.Parameter(torch.zeros(1, heads, agents, prefix))
            self.ca_bias = nn.Parameter(torch.zeros(1, heads, prefix, agents))
            biases += [self.ac_bias, self.ca_bias]
        for bias in biases:
            trunc_normal_(bias, std=0.02)

    def _apply(self, fn, recurse: bool = True):
        """``.to(memory_format=torch.channels_last)`` works: the 5-D bias tables are converted as 4-D views."""
        return super()._apply(_five_d_as_4d(fn), recurse)

    def forward(
        self,
        x: torch.Tensor,
        grid_size: Sequence[int] | None = None,
        num_prefix_tokens: int | None = None,
    ) -> torch.Tensor:
        """``(B, H, W, C)`` map, or ``(B, P + H*W, C)`` sequence with ``grid_size=(H, W)``.

        ``num_prefix_tokens`` defaults to (and must equal) the value the module was built with.
        """
        prefix = self.num_prefix_tokens
        _assert(
            num_prefix_tokens is None or num_prefix_tokens == prefix,
            f"num_prefix_tokens must be the module's num_prefix_tokens={prefix} (ac_bias/ca_bias are sized by it)",
        )
        if grid_size is None:
            _assert(
                x.ndim == 4,
                "x must be a channels-last map (B, H, W, C), or a token sequence (B, N, C) given with grid_size=(H, W)",
            )
            _assert(prefix == 0, f"the module was built with num_prefix_tokens={prefix}: give it a (B, N, C) sequence")
            height, width = x.shape[1], x.shape[2]
        else:
            _assert(x.ndim == 3, "with grid_size, x must be a token sequence (B, N, C)")
            height, width = grid_size
            _assert(
                x.shape[1] == prefix + height * width,
                f"x must hold num_prefix_tokens + H*W = {prefix} + {height}*{width} tokens",
            )
        _assert(x.shape[-1] == self.dim, f"x has the wrong number of channels for dim={self.dim}")
        if not self.dynamic_size:  # the position biases are sized by the window
            _assert(
                (height == self.window_size[0]) & (width == self.window_size[1]),
                f"the map must be the window_size {self.window_size} the module was built for (or dynamic_size=True)",
            )
            height, width = self.window_size
        return self._mix(x.flatten(1, -2), height, width).view_as(x)

    @staticmethod
    def _to_map(table: torch.Tensor, table_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        """A ``(h, n, *table_size)`` bias table bilinearly resized to the map (a no-op at its own size)."""
        if tuple(size) == table_size:
            return table
        return F.interpolate(table, size=size, mode="bilinear", align_corners=False)

    def _to_agent_grid(self, table: torch.Tensor) -> torch.Tensor:
        """``(h, HW, p*p)`` over the trained agents -> ``(h, HW, gh*gw)`` over ``agent_grid`` (bilinear)."""
        if self.agent_grid == (self.pool_size, self.pool_size):
            return table
        heads, tokens, _ = table.shape
        grid = table.reshape(heads, tokens, self.pool_size, self.pool_size)
        grid = F.interpolate(grid, size=self.agent_grid, mode="bilinear", align_corners=False)
        return grid.reshape(heads, tokens, -1)

    def _biases(
        self, dtype: torch.dtype, size: tuple[int, int], key_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive logits: agents->keys ``(1, h, n, P+hw)`` and queries->agents ``(1, h, P+HW, n)``.

        Each is a smooth 7x7 table resized to the map plus per-row and per-column terms (the latter resized too
        when the map is not the window: bilinear resizing of a row + column sum is the sum of the resized terms).
        """
        heads, agents = self.num_heads, self.agent_num
        window = self.window_size
        agent_key = self._to_map(self.an_bias, (7, 7), key_size) + self._to_map(
            (self.ah_bias + self.aw_bias)[0], self.key_size, key_size
        )
        agent_key = agent_key.reshape(heads, agents, -1).transpose(1, 2)  # (h, HW, n)
        axis = (self.ha_bias + self.wa_bias)[0].permute(0, 3, 1, 2)  # (h, n, wh, ww)
        query_agent = self._to_map(self.na_bias, (7, 7), size) + self._to_map(axis, window, size)
        query_agent = query_agent.reshape(heads, agents, -1).transpose(1, 2)  # (h, HW, n)
        agent_key = self._to_agent_grid(agent_key).transpose(1, 2).unsqueeze(0)
        query_agent = self._to_agent_grid(query_agent).unsqueeze(0)
        if self.num_prefix_tokens:
            agent_key = torch.cat([self.ac_bias, agent_key], dim=-1)
            query_agent = torch.cat([self.ca_bias, query_agent], dim=-2)
        return agent_key.to(dtype), query_agent.to(dtype)

    def _mix(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, n_tokens, channels = x.shape
        prefix = self.num_prefix_tokens
        heads, head_dim = self.num_heads, self.head_dim
        key_size = (height // self.sr_ratio, width // self.sr_ratio)  # kernel = stride = sr: floor(H / sr) rows
        if self.sr_ratio == 1:
            q, k, v = self.qkv(x).view(batch, n_tokens, 3, heads, head_dim).unbind(2)  # (B, N, h, d) each
        else:  # keys/values from the map reduced by the strided conv
            q = self.q(x).view(batch, n_tokens, heads, head_dim)
            reduced = self.sr(x.view(batch, height, width, channels).permute(0, 3, 1, 2))
            reduced = self.norm(reduced.flatten(2).transpose(1, 2))
            k, v = self.kv(reduced).view(batch, -1, 2, heads, head_dim).unbind(2)

        # Agents: adaptive average pool of the patch queries over all channels (bins overlap when the map
        # is not a multiple of the grid). Pooling is per channel, so it commutes with the head split.
        q_map = q[:, prefix:].reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        agents = F.adaptive_avg_pool2d(q_map, self.agent_grid).flatten(2).transpose(1, 2)  # (B, n, C)
        agents = agents.reshape(batch, agents.shape[1], heads, head_dim).transpose(1, 2)  # (B, h, n, d)
        # Local term: depthwise 3x3 conv of the patch values (channels-last memory), added to patch tokens only.
        v_map = v[:, prefix:].reshape(batch, *key_size, channels).permute(0, 3, 1, 2)
        if self.sr_ratio > 1:
            v_map = F.interpolate(v_map, size=(height, width), mode="bilinear", align_corners=False)
        local = self.dwc(v_map).permute(0, 2, 3, 1).reshape(batch, height * width, channels)

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
        agent_key, query_agent = self._biases(q.dtype, (height, width), key_size)
        opts = dict(dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=agent_key, **opts)  # (B, h, n, d)
        out = F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=query_agent, **opts)  # (B, h, N, d)
        if self.recording:
            self._record(self._attention_record(q, k, v, agents, agent_key, query_agent, local, height, width))
        # An explicit copy, not reshape: with a computed attn_mask, torch's ONNX (dynamo) decomposition of SDPA
        # gives its output other strides than export recorded, and the view that reshape recorded then fails.
        out = out.transpose(1, 2).clone(memory_format=torch.contiguous_format).view(batch, n_tokens, channels)
        if prefix:
            out = torch.cat([out[:, :prefix], out[:, prefix:] + local], dim=1)
        else:
            out = out + local
        return self.proj_drop(self.proj(out))

    def _attention_record(self, q, k, v, agents, agent_key, query_agent, local, height, width) -> AgentRecord:
        """Both softmaxes by explicit math (float32, float64 for float64 input), with the forward's biases."""
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        q, k, agents = (t.detach().to(dtype) for t in (q, k, agents))
        agent_attn = ((agents @ k.transpose(-1, -2)) * self.scale + agent_key.detach().to(dtype)).softmax(dim=-1)
        query_attn = ((q @ agents.transpose(-1, -2)) * self.scale + query_agent.detach().to(dtype)).softmax(dim=-1)
        return AgentRecord(
            (height, width),
            (height // self.sr_ratio, width // self.sr_ratio),
            self.agent_grid,
            self.num_prefix_tokens,
            agent_attn,
            query_attn,
            v.detach(),
            local.detach().view(q.shape[0], height, width, -1),
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, "
            f"window_size={self.window_size}, num_prefix_tokens={self.num_prefix_tokens}, "
            f"dynamic_size={self.dynamic_size}, agent_grid={self.agent_grid}, sr_ratio={self.sr_ratio}"
        )
