"""count_macs: neighborhood attention counted by its definition, everything else as torch counts it."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.blocks.neighborhood import NeighborhoodAttention2D
from attnzoo.tools.macs import count_macs


def test_neighborhood_attention_counts_k_squared_keys_per_query():
    dim, heads, size, k = 32, 4, 20, 5
    model = nn.Sequential(NeighborhoodAttention2D(dim, heads, kernel_size=k)).eval()
    x = torch.randn(2, size, size, dim)
    projections = 2 * size * size * (dim * 3 * dim + dim * dim)
    attention = 2 * 2 * size * size * heads * k * k * (dim // heads)
    assert count_macs(model, x) == projections + attention
    raw = FlopCounterMode(display=False)
    with raw, torch.no_grad():
        model(x)
    assert raw.get_total_flops() // 2 > count_macs(model, x)  # the tiled kernel does extra, masked work


def test_small_maps_count_the_padded_map_and_repeated_calls_add_up():
    module = NeighborhoodAttention2D(8, 2, kernel_size=7, dilation=2).eval()
    model = nn.Sequential(module, module)  # one module called twice
    x = torch.randn(1, 9, 10, 8)
    projections = 14 * 14 * 8 * 24 + 9 * 10 * 8 * 8  # qkv on the map padded to k * dilation = 14; proj cropped
    attention = 2 * 14 * 14 * 2 * 49 * 4
    assert count_macs(model, x) == 2 * (projections + attention)
