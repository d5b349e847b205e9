"""``attnzoo bench blocks``: every token mixer next to dense SDPA attention, forward and backward."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.blocks import create_mixer

from .record import PeakMemory, Result, run_case


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


def block_settings(size: int) -> dict[str, tuple[str, dict]]:
    """Benchmark label -> (create_mixer name, keyword arguments) for a ``size x size`` map.

    The settings are the papers' (stage-3 style where a choice is needed); mixers whose parameters
    depend on the map (agent biases, Sparsifiner's predictor) are built for it.
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
    }


def blocks_suite(
    device: torch.device,
    min_run_time: float,
    batch: int,
    cases: list[tuple[int, int, int]],
    mixers: list[str] | None = None,
) -> list[Result]:
    """Each mixer next to dense SDPA attention, for every ``(size, dim, num_heads)`` in ``cases``."""
    memory = PeakMemory(device)
    results = []
    for size, dim, num_heads in cases:
        shape = f"B={batch} {size}x{size} C={dim} heads={num_heads}"
        settings = block_settings(size)
        modules = {"dense (SDPA)": DenseAttention(dim, num_heads)}
        for label, (name, kwargs) in settings.items():
            if mixers is None or label in mixers or name in mixers:
                modules[label] = create_mixer(name, dim=dim, num_heads=num_heads, **kwargs)
        x = torch.randn(batch, size, size, dim, device=device, requires_grad=True)
        for label, module in modules.items():
            module.to(device).train()
            params = [p for p in module.parameters() if p.requires_grad]
            results += run_case(label, "torch", shape, partial(module, x), [x, *params], memory, min_run_time, True)
    return results
