"""Token mixers (the seven mechanisms) and the transformer block around them.

Every mixer takes and returns channels-last maps ``(B, H, W, C)`` and is built on
:mod:`attnzoo.kernels` and ``torch.nn.functional.scaled_dot_product_attention``;
:func:`create_mixer` builds any of them by name, :class:`MixerBlock` wraps one in a block.
:func:`record_attention` records what every mixer of a model computed (weights, chosen keys, modulators).
"""

from collections.abc import Callable

from torch import nn

from .agent import AgentAttention
from .block import MixerBlock
from .dual import ChannelGroupAttention, SpatialWindowAttention, davit_attention
from .focal import FocalModulation
from .hilo import HiLo
from .neighborhood import NeighborhoodAttention2D
from .quadtree import QuadTreeAttention
from .record import AttentionRecord, AttentionRecords, QueryMap, record_attention
from .sparsifiner import SparsifinerAttention

MIXERS: dict[str, Callable[..., nn.Module]] = {
    "neighborhood": NeighborhoodAttention2D,
    "hilo": HiLo,
    "quadtree": QuadTreeAttention,
    "dual": davit_attention,
    "agent": AgentAttention,
    "focal": FocalModulation,
    "sparsifiner": SparsifinerAttention,
}
"""Registry of ``create_mixer`` names: each maps to a module class or a factory, called ``(dim, num_heads, **kw)``."""


def create_mixer(name: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """Build the mixer registered as ``name`` with ``(dim, num_heads, **kwargs)``."""
    if name not in MIXERS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {sorted(MIXERS)}")
    return MIXERS[name](dim, num_heads, **kwargs)


__all__ = [
    "MIXERS",
    "AgentAttention",
    "AttentionRecord",
    "AttentionRecords",
    "ChannelGroupAttention",
    "FocalModulation",
    "HiLo",
    "MixerBlock",
    "NeighborhoodAttention2D",
    "QueryMap",
    "QuadTreeAttention",
    "SparsifinerAttention",
    "SpatialWindowAttention",
    "create_mixer",
    "davit_attention",
    "record_attention",
]
