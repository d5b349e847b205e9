"""``attnzoo bench blocks``: every token mixer next to dense SDPA attention, forward and backward.

The sparse mixers are also set against the dense attention each one replaces in its paper's host (Sparsifiner:
DeiT's attention; QuadTree: PVTv2's spatial-reduction attention): their rows carry the ratios of time and of
the bytes autograd saves for backward to that counterpart, measured in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import Attention as PvtV2Attention
from timm.models.vision_transformer import Attention as DeitAttention
from torch import nn

from attnzoo.blocks import create_mixer

from .record import FORWARD_BACKWARD, PeakMemory, Result, run_case


class DenseAttention(nn.Module):
    """The baseline every mixer is compared with: global multi-head attention through SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)


class TimmDeitAttention(nn.Module):
    """timm's DeiT/ViT ``Attention`` on a channels-last map: the dense attention Sparsifiner replaces."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = DeitAttention(dim, num_heads=num_heads, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x.flatten(1, 2)).view_as(x)


class TimmPvtV2Attention(nn.Module):
    """timm's PVTv2 ``Attention`` (keys and values pooled by an ``sr_ratio`` strided conv): what QuadTree replaces."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.attn = PvtV2Attention(dim, num_heads=num_heads, sr_ratio=sr_ratio, qkv_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x.flatten(1, 2), x.shape[1:3]).view_as(x)


COUNTERPARTS = {"sparsifiner": "deit_attention", "quadtree": "pvtv2_attention"}
"""Sparse mixer label -> the label of the dense attention it replaces (its rows report ratios to it)."""


@dataclass
class RatioResult(Result):
    """A sparse mixer's row with its ratios to :data:`COUNTERPARTS`' row of the same mode and shape.

    ``saved_mib``: bytes autograd saves for backward (unique storages), forward+backward rows only.
    """

    dense_case: str | None = None
    time_ratio: float | None = None
    saved_mib: float | None = None
    saved_ratio: float | None = None


def saved_mib(forward) -> float:
    """MiB of the distinct storages autograd keeps for backward during one ``forward()`` (as in issue 27)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values()) / 2**20


def with_ratios(results: list[Result], saved: dict[str, float]) -> list[Result]:
    """Rows of the mixers in :data:`COUNTERPARTS` as :class:`RatioResult` against their counterparts' rows."""
    rows = {(r.case, r.mode): r for r in results}
    out = []
    for r in results:
        dense = rows.get((COUNTERPARTS.get(r.case), r.mode))
        if dense is None:
            out.append(r)
            continue
        ratio = RatioResult(**vars(r), dense_case=dense.case, time_ratio=r.median_ms / dense.median_ms)
        ratio.implementation = f"{r.implementation}: {ratio.time_ratio:.2f}x time"
        if r.mode == FORWARD_BACKWARD and r.case in saved and dense.case in saved:
            ratio.saved_mib, ratio.saved_ratio = saved[r.case], saved[r.case] / saved[dense.case]
            ratio.implementation += f" {ratio.saved_ratio:.2f}x saved"
        out.append(ratio)
    return out


def block_settings(size: int) -> dict[str, tuple[str, dict]]:
    """Benchmark label -> (create_mixer name, keyword arguments) for a ``size x size`` map.

    The settings are the papers' (stage-3 style where a choice is needed); mixers whose parameters
    depend on the map (agent biases, Sparsifiner's predictor) are built for it. ``deit_attention`` and
    ``pvtv2_attention`` (spatial reduction ``2 ** (levels - 1)``, PVTv2's where QuadTree has ``levels``) are the
    dense counterparts of Sparsifiner and QuadTree, not mixers of :func:`create_mixer`.
    """
    levels = 1
    while levels < 4 and size % (2**levels) == 0 and size // 2**levels >= 7:
        levels += 1
    return {
        "neighborhood": ("neighborhood", dict(kernel_size=7)),
        "hilo": ("hilo", dict(window_size=2, alpha=0.9)),
        "quadtree": ("quadtree", dict(sr_ratio=levels, attn_type="B", topk=8)),
        "dual_spatial": ("dual", dict(attention="spatial", window_size=7)),
        "dual_channel": ("dual", dict(attention="channel")),
        "agent": ("agent", dict(agent_num=49, window_size=(size, size))),
        "focal": ("focal", dict(focal_level=3, focal_window=3)),
        "sparsifiner": ("sparsifiner", dict(num_tokens=size * size, keep_ratio=0.25)),
        "deit_attention": ("deit_attention", {}),
        "pvtv2_attention": ("pvtv2_attention", dict(sr_ratio=2 ** (levels - 1))),
    }


def _build(name: str, dim: int, num_heads: int, kwargs: dict) -> nn.Module:
    if name == "deit_attention":
        return TimmDeitAttention(dim, num_heads)
    if name == "pvtv2_attention":
        return TimmPvtV2Attention(dim, num_heads, **kwargs)
    return create_mixer(name, dim=dim, num_heads=num_heads, **kwargs)


def blocks_suite(
    device: torch.device,
    min_run_time: float,
    batch: int,
    cases: list[tuple[int, int, int]],
    mixers: list[str] | None = None,
) -> list[Result]:
    """Each mixer next to dense SDPA attention, for every ``(size, dim, num_heads)`` in ``cases``.

    A requested sparse mixer brings its dense counterpart (:data:`COUNTERPARTS`), and its rows the ratios to it.
    """
    memory = PeakMemory(device)
    results = []
    for size, dim, num_heads in cases:
        shape = f"B={batch} {size}x{size} C={dim} heads={num_heads}"
        settings = block_settings(size)
        modules = {"dense (SDPA)": DenseAttention(dim, num_heads)}
        wanted = set(settings) if mixers is None else {lb for lb, (nm, _) in settings.items() if {lb, nm} & set(mixers)}
        wanted |= {COUNTERPARTS[label] for label in wanted if label in COUNTERPARTS}
        for label, (name, kwargs) in settings.items():
            if label in wanted:
                modules[label] = _build(name, dim, num_heads, kwargs)
        x = torch.randn(batch, size, size, dim, device=device, requires_grad=True)
        case_results, saved = [], {}
        for label, module in modules.items():
            module.to(device).train()
            params = [p for p in module.parameters() if p.requires_grad]
            forward = partial(module, x)
            case_results += run_case(label, "torch", shape, forward, [x, *params], memory, min_run_time, True)
            if label in COUNTERPARTS or label in COUNTERPARTS.values():
                saved[label] = saved_mib(forward)
        results += with_ratios(case_results, saved)
    return results
