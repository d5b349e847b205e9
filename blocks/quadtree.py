"""QuadTree attention: coarse-to-fine attention that refines only the top-k regions of each level.

Tang, Zhang, Zhu, Tan. "QuadTree Attention for Vision Transformers", ICLR 2022 (arXiv 2201.02767).
Authors' code: Tangshitao/QuadTreeAttention, ``classification/quadtree_attention.py::QuadtreeAttention``
(the wrapper: projections, pyramid, output projection) and
``QuadTreeAttention/QuadtreeAttention/modules/quadtree_attention.py`` (``QTAttA``, ``QTAttB``).

Queries, keys and values form a pyramid of ``L = sr_ratio`` levels (2x2 average pooling; variant B builds
the values with learned ``value_branchs``). The coarsest level is full attention; every finer query attends
only to the 4 children of its parent's ``topk`` keys, so cost grows linearly with the map size.

* Variant B (all released models): a softmax over each level's candidates
  (:func:`attnzoo.kernels.gather_attention`) plus a depthwise 3x3 LePE; the levels are upsampled and summed
  with weights ``softmax(py_att.weight)``.
* Variant A: a softmax over the 4 children of each parent key, times that key's score; selected keys are
  left out of the coarser messages (they are refined below); levels summed unweighted, no LePE.

Departures from the authors' code (identical results wherever theirs runs): ``topk`` is clamped to the
number of candidates (their ``torch.topk`` raises), selections nothing reads are skipped, ``qk_scale`` is
honoured when given (their core always uses ``head_dim ** -0.5``), ``attn_drop`` is accepted but never
applied (as theirs), and attention runs in the input's dtype (they cast to fp32 for their CUDA ops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import _assert, trunc_normal_
from torch import nn

from attnzoo.kernels import gather_attention
from attnzoo.kernels._checks import (
    assert_map,
    check_dim_heads,
    check_fraction,
    check_optional_positive_real,
    check_positive_int,
)

from .record import AttentionRecord, QueryMap, RecordsAttention, scatter_to_grid

ATTN_TYPES = ("A", "B")


def _record_dtype(t: torch.Tensor) -> torch.dtype:
    """Recorded weights are float32, or float64 for float64 input."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of a channels-last map."""
    return F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1)


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling of a channels-last map: each pixel to its 2x2 children."""
    batch, height, width, channels = x.shape
    x = x[:, :, None, :, None, :].expand(batch, height, 2, width, 2, channels)
    return x.reshape(batch, 2 * height, 2 * width, channels)


def _group_children(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, h, H*W, X)`` in raster order -> ``(B, h, H/2 * W/2, 4, X)``: the 4 children of each parent."""
    batch, heads, _, last = x.shape
    x = x.view(batch, heads, height // 2, 2, width // 2, 2, last).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(batch, heads, (height // 2) * (width // 2), 4, last)


def _ungroup_children(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`_group_children`."""
    batch, heads, _, _, last = x.shape
    x = x.view(batch, heads, height // 2, width // 2, 2, 2, last).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(batch, heads, height * width, last)


def _children_of(selected: torch.Tensor, parent_width: int) -> torch.Tensor:
    """Raster indices, at the finer level, of the 4 children of each selected parent-level key.

    ``(..., K)`` parent positions -> ``(..., 4K)``, ordered key by key, children (row, col) in
    (0,0), (0,1), (1,0), (1,1) order as in the authors' index construction.
    """
    width = 2 * parent_width
    top_left = 2 * torch.div(selected, parent_width, rounding_mode="floor") * width + 2 * (selected % parent_width)
    offsets = (torch.arange(2, device=selected.device) * width)[:, None] + torch.arange(2, device=selected.device)
    return (top_left[..., None] + offsets.flatten()).flatten(-2)


@dataclass
class QuadTreeLevel:
    """One pyramid level of a :class:`QuadTreeRecord`, ``N = h * w`` queries in raster order.

    ``attn`` ``(B, heads, N, K)``: each query's weights over its candidate keys ``keys`` ``(B, heads, N, K)``
    (raster positions at this level; ``None`` on the coarsest level, where every query sees all ``N`` keys in
    order). ``v`` ``(B, heads, N, d)``: the level's values. ``lepe`` ``(B, h, w, C)``: variant B's LePE term of
    this level (``None`` in A). The level's message is ``attn @ v[keys]``.
    """

    size: tuple[int, int]
    attn: torch.Tensor
    keys: torch.Tensor | None
    v: torch.Tensor
    lepe: torch.Tensor | None = None


@dataclass
class QuadTreeRecord(AttentionRecord):
    """``levels`` coarsest first. B: every level's rows sum to 1, and the output (before ``proj``) is
    ``sum_i level_weight[i] * upsample(message_i + lepe_i)``. A: ``level_weight`` is ``None``, the weights are as
    A uses them (softmax over each parent's 4 children times the parent's score, keys refined below zeroed), so a
    finest query's rows summed over its ancestors at every level total 1 (with one level, A still drops its top-k
    keys, as the authors' code does, so rows total less); the output is ``sum_i upsample(message_i)``.
    """

    map_size: tuple[int, int]
    attn_type: str
    topk: int
    levels: list[QuadTreeLevel]
    level_weight: torch.Tensor | None
    kind: str = "quadtree"

    @property
    def batch_size(self) -> int:
        return self.levels[0].attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """Per level, coarsest first: the weights of the query's ancestor at that level over that level's grid."""
        self._check_query(row, col, batch)
        maps = []
        for i, level in enumerate(self.levels):
            shift = len(self.levels) - 1 - i
            cell = (row >> shift, col >> shift)
            height, width = level.size
            index = cell[0] * width + cell[1]
            weights = level.attn[batch, :, index]  # (heads, K)
            if level.keys is None:
                grid = weights.unflatten(-1, (height, width))
            else:
                grid = scatter_to_grid(weights, level.keys[batch, :, index], level.size)
            title = f"level {i} ({height}x{width}): {weights.shape[-1]} keys"
            maps.append(QueryMap(title, grid.mean(0), marker=cell))
        return maps


class _LevelMixing(nn.Module):
    """Variant B's per-level parameters (the authors' ``py_att``): level weights and LePE convs.

    ``weight[i]`` and ``get_vs[i]`` belong to level ``i`` counted from the coarsest.
    """

    def __init__(self, dim: int, levels: int):
        super().__init__()
        self.get_vs = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1, groups=dim) for _ in range(levels))
        self.weight = nn.Parameter(torch.randn(levels))


class QuadTreeAttention(RecordsAttention, nn.Module):
    """QuadTree attention (variants ``"A"`` and ``"B"``) on channels-last maps ``(B, H, W, C)``.

    Parameters keep the names of the authors' checkpoints: ``q_proj``/``k_proj``/``v_proj`` (1x1
    ``Conv2d``, applied as linear maps on channels-last tokens), ``proj``; in variant B also
    ``py_att.weight`` ``(L,)``, ``py_att.get_vs.{i}`` (LePE, coarsest level first) and
    ``value_branchs.{l}`` (GroupNorm, GELU, 2x2/2 conv, GroupNorm, GELU, 1x1 conv: values of level
    ``l + 1`` from level ``l``). ``sr_ratio`` is the number of pyramid levels (the authors reuse PVT's
    name); ``H`` and ``W`` must be divisible by ``2 ** (sr_ratio - 1)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        attn_type: str = "B",
        topk: int = 8,
    ):
        super().__init__()
        self.head_dim = check_dim_heads(dim, num_heads)
        self.sr_ratio = check_positive_int("sr_ratio", sr_ratio)
        self.topk = check_positive_int("topk", topk)
        if attn_type not in ATTN_TYPES:
            raise ValueError(f"attn_type must be one of {ATTN_TYPES}, got {attn_type!r}")
        self.attn_drop = check_fraction("attn_drop", attn_drop, 0.0, 1.0)
        proj_drop = check_fraction("proj_drop", proj_drop, 0.0, 1.0)
        qk_scale = check_optional_positive_real("qk_scale", qk_scale)
        self.dim = dim
        self.num_heads = num_heads
        self.attn_type = attn_type
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5

        self.q_proj = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.k_proj = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.v_proj = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        if attn_type == "B":
            self.py_att = _LevelMixing(dim, self.sr_ratio)
            self.value_branchs = nn.ModuleList(
                nn.Sequential(
                    nn.GroupNorm(1, dim),
                    nn.GELU(),
                    nn.Conv2d(dim, dim, 2, stride=2),
                    nn.GroupNorm(1, dim),
                    nn.GELU(),
                    nn.Conv2d(dim, dim, 1),
                )
                for _ in range(self.sr_ratio - 1)
            )
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the wrapper's own init: truncated normal 0.02 for every conv and linear, zero biases
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        return x.reshape(batch, height * width, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], height, width, self.dim)

    def _pyramid(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Channels-last q, k, v maps, finest level first."""
        queries = [F.linear(x, self.q_proj.weight.flatten(1), self.q_proj.bias)]
        keys = [F.linear(x, self.k_proj.weight.flatten(1), self.k_proj.bias)]
        values = [F.linear(x, self.v_proj.weight.flatten(1), self.v_proj.bias)]
        for level in range(self.sr_ratio - 1):
            queries.append(_pool2(queries[-1]))
            keys.append(_pool2(keys[-1]))
            if self.attn_type == "B":
                # the branch keeps channels-last memory, so .contiguous() is free in eager; it pins the
                # layout for torch.compile, whose traced strides for GroupNorm/conv can differ from eager's
                branch = self.value_branchs[level](values[-1].permute(0, 3, 1, 2))
                values.append(branch.permute(0, 2, 3, 1).contiguous())
            else:
                values.append(_pool2(values[-1]))
        return queries, keys, values

    def _candidate_weights(self, q: torch.Tensor, k: torch.Tensor, candidates: torch.Tensor | None) -> torch.Tensor:
        """Recording only: softmax weights of ``q`` over all keys (``candidates=None``) or over its listed keys."""
        dtype = _record_dtype(q)
        q, k = q.detach().to(dtype), k.detach().to(dtype)
        if candidates is None:
            return ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        flat = candidates.flatten(2)[..., None].expand(-1, -1, -1, self.head_dim)
        k_cand = k.gather(2, flat).view(*candidates.shape, self.head_dim)
        return (torch.einsum("bhnd,bhnkd->bhnk", q, k_cand) * self.scale).softmax(dim=-1)

    def _forward_b(self, queries, keys, values) -> torch.Tensor:
        levels = self.sr_ratio
        weight = self.py_att.weight.softmax(dim=0)
        recorded = [] if self.recording else None
        out = None
        selected = None  # (B, h, N_level, K) raster key positions chosen by each query of the level above
        for i in range(levels):  # i = 0 is the coarsest level
            level = levels - 1 - i
            height, width = queries[level].shape[1:3]
            q, k, v = (self._split_heads(t[level]) for t in (queries, keys, values))
            if i == 0:
                message = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
                if levels > 1:
                    # selection only: top-k of the softmax of the (gradient-free) coarse attention
                    probs = ((q.detach() @ k.detach().transpose(-1, -2)) * self.scale).softmax(dim=-1)
                    selected = probs.topk(min(self.topk, k.shape[2]), dim=-1).indices
            else:
                parents = _children_of(selected, width // 2)  # (B, h, N_parent, 4K)
                n_cand = parents.shape[-1]
                # the 4 children of a parent share its candidates: one index row per parent, queries in child order
                q_children = _group_children(q, height, width)  # (B, h, Np, 4, d)
                grouped = gather_attention(q_children.flatten(2, 3), k, v, parents, scale=self.scale, group=4)
                message = _ungroup_children(grouped.unflatten(2, (-1, 4)), height, width)
                if level > 0:
                    # score the candidates with one gather per parent too
                    q_grouped = q_children.detach()  # (B, h, Np, 4, d)
                    k_cand = k.detach().gather(2, parents.flatten(2)[..., None].expand(-1, -1, -1, self.head_dim))
                    k_cand = k_cand.view(*parents.shape, self.head_dim)  # (B, h, Np, 4K, d)
                    probs = ((q_grouped @ k_cand.transpose(-1, -2)) * self.scale).softmax(dim=-1)
                    local = probs.topk(min(self.topk, n_cand), dim=-1).indices  # (B, h, Np, 4, K')
                    chosen = parents[:, :, :, None, :].expand(-1, -1, -1, 4, -1).gather(-1, local)
                    selected = _ungroup_children(chosen, height, width)
            lepe = self.py_att.get_vs[i](values[level].permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            if recorded is not None:
                per_query = None if i == 0 else parents[:, :, :, None, :].expand(-1, -1, -1, 4, -1)
                candidates = None if i == 0 else _ungroup_children(per_query, height, width)
                attn = self._candidate_weights(q, k, candidates)
                recorded.append(QuadTreeLevel((height, width), attn, candidates, v.detach(), lepe.detach()))
            term = (self._merge_heads(message, height, width) + lepe) * weight[i]
            out = term if out is None else _upsample2(out) + term
        if recorded is not None:
            self._record(QuadTreeRecord(tuple(queries[0].shape[1:3]), "B", self.topk, recorded, weight.detach()))
        return out

    def _forward_a(self, queries, keys, values) -> torch.Tensor:
        levels = self.sr_ratio
        recorded = [] if self.recording else None
        out = None
        for i in range(levels):  # i = 0 is the coarsest level
            level = levels - 1 - i
            height, width = queries[level].shape[1:3]
            q, k, v = (self._split_heads(t[level]) for t in (queries, keys, values))
            if i == 0:
                probs = ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)  # (B, h, N, N): coarse only
                score, selected = probs.topk(min(self.topk, k.shape[2]), dim=-1)
                # the selected keys are refined on the finer levels, so the coarse message leaves them out
                message = probs.scatter(-1, selected, 0.0) @ v
                if recorded is not None:
                    coarse = self._candidate_weights(q, k, None)
                    record_score = coarse.gather(-1, selected)  # the recorded weights handed down to children
                    recorded.append(QuadTreeLevel((height, width), coarse.scatter(-1, selected, 0.0), None, v.detach()))
            else:
                parents = _children_of(selected, width // 2)  # (B, h, Np, 4K)
                n_parent_keys = selected.shape[-1]
                q_grouped = _group_children(q, height, width)  # (B, h, Np, 4, d)
                flat = parents.flatten(2)[..., None].expand(-1, -1, -1, self.head_dim)
                k_cand = k.gather(2, flat).view(*parents.shape, self.head_dim)
                v_cand = v.gather(2, flat).view(*parents.shape, self.head_dim)
                logits = (q_grouped @ k_cand.transpose(-1, -2)) * self.scale  # (B, h, Np, 4, 4K)
                # softmax over the 4 children of each parent key, scaled by that key's parent score
                grouped_shape = (*logits.shape[:-1], n_parent_keys, 4)
                probs = logits.view(grouped_shape).softmax(dim=-1) * score[:, :, :, None, :, None]
                probs = probs.flatten(-2)
                if level > 0:
                    score, local = probs.topk(min(self.topk, parents.shape[-1]), dim=-1)
                    chosen = parents[:, :, :, None, :].expand(-1, -1, -1, 4, -1).gather(-1, local)
                    selected = _ungroup_children(chosen, height, width)
                    score = _ungroup_children(score, height, width)
                    probs = probs.scatter(-1, local, 0.0)
                message = _ungroup_children(probs @ v_cand, height, width)
                if recorded is not None:
                    dtype = _record_dtype(q)
                    logits = (q_grouped.detach().to(dtype) @ k_cand.detach().to(dtype).transpose(-1, -2)) * self.scale
                    weights = logits.view(grouped_shape).softmax(dim=-1) * record_score[:, :, :, None, :, None]
                    weights = weights.flatten(-2)
                    if level > 0:
                        record_score = _ungroup_children(weights.gather(-1, local), height, width)
                        weights = weights.scatter(-1, local, 0.0)
                    candidates = _ungroup_children(parents[:, :, :, None, :].expand(-1, -1, -1, 4, -1), height, width)
                    attn = _ungroup_children(weights, height, width)
                    recorded.append(QuadTreeLevel((height, width), attn, candidates, v.detach()))
            term = self._merge_heads(message, height, width)
            out = term if out is None else _upsample2(out) + term
        if recorded is not None:
            self._record(QuadTreeRecord(tuple(queries[0].shape[1:3]), "A", self.topk, recorded, None))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert_map(x, self.dim)
        multiple = 2 ** (self.sr_ratio - 1)
        _assert(
            (x.shape[1] % multiple == 0) & (x.shape[2] % multiple == 0),
            f"sr_ratio={self.sr_ratio} pyramid levels need H and W divisible by 2**(sr_ratio-1) = {multiple}",
        )
        queries, keys, values = self._pyramid(x)
        forward_levels = self._forward_b if self.attn_type == "B" else self._forward_a
        out = forward_levels(queries, keys, values)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, attn_type={self.attn_type!r}, "
            f"topk={self.topk}"
        )
