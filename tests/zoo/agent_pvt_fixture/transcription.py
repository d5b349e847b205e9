"""A transcription of the authors' Agent-PVT classifier, for generating parity fixtures of layouts they support.

Source (read for its math, rewritten here): LeapLabTHU/Agent-Attention ``agent_transformer/models/agent_pvt.py``
(``PyramidVisionTransformer`` with ``Attention``, ``AgentAttention``, ``Block``, ``PatchEmbed``). The shared
fixtures cover only the release layout ('AAAA', ``agent_sr_ratios`` '1111'); this module covers the rest of
what their constructor accepts: PVT v1 spatial-reduction attention stages ('B') and agent attention over
spatially reduced keys (``agent_sr_ratios`` > 1). The parameter and buffer names are the authors' so that the
state dict is their layout. Only what differs from a textbook transformer is commented.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def _reduce(x: torch.Tensor, height: int, width: int, conv: nn.Conv2d, norm: nn.LayerNorm) -> torch.Tensor:
    """Spatial reduction of a token sequence: strided conv on its map, then LayerNorm (PVT v1)."""
    batch, _, channels = x.shape
    grid = x.transpose(1, 2).reshape(batch, channels, height, width)
    return norm(conv(grid).flatten(2).transpose(1, 2))


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = t.shape
    return t.reshape(batch, tokens, heads, channels // heads).transpose(1, 2)


class Attention(nn.Module):
    """PVT v1 attention: full-resolution queries, keys/values from the map reduced by ``sr_ratio``."""

    def __init__(self, dim, num_heads, qkv_bias, qk_scale, sr_ratio):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5  # their `or`: qk_scale=0 means the default
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, height, width):
        source = _reduce(x, height, width, self.sr, self.norm) if self.sr_ratio > 1 else x
        k, v = self.kv(source).chunk(2, dim=-1)
        q, k, v = (_heads(t, self.num_heads) for t in (self.q(x), k, v))
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).flatten(2))


class AgentAttention(nn.Module):
    """Agent attention of their PVT: agents pooled from full-resolution queries, keys/values reduced.

    ``qk_scale`` is accepted and ignored, as in their module. The agent->key biases are sized by the reduced
    map (``window // sr_ratio``), the query->agent biases by the full window; the depthwise conv runs on the
    values bilinearly upsampled back to the full map.
    """

    def __init__(self, dim, num_patches, num_heads, qkv_bias, sr_ratio, agent_num):
        super().__init__()
        side = int(num_patches**0.5)
        self.window = (side, side)
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.agent_num = agent_num
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        reduced = (side // sr_ratio, side // sr_ratio)
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, reduced[0], 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, reduced[1]))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, side, 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, side, agent_num))
        self.pool = nn.AdaptiveAvgPool2d(int(agent_num**0.5))

    def forward(self, x, height, width):
        batch, tokens, channels = x.shape
        heads, agents = self.num_heads, self.agent_num
        q = self.q(x)
        source = _reduce(x, height, width, self.sr, self.norm) if self.sr_ratio > 1 else x
        k, v = self.kv(source).chunk(2, dim=-1)
        pooled = self.pool(q.transpose(1, 2).reshape(batch, channels, height, width)).flatten(2).transpose(1, 2)
        q, k, v, pooled = (_heads(t, heads) for t in (q, k, v, pooled))

        reduced = (self.window[0] // self.sr_ratio, self.window[1] // self.sr_ratio)
        to_keys = F.interpolate(self.an_bias, size=reduced, mode="bilinear").reshape(1, heads, agents, -1)
        to_keys = to_keys + (self.ah_bias + self.aw_bias).reshape(1, heads, agents, -1)
        agent_values = ((pooled * self.scale) @ k.transpose(-2, -1) + to_keys).softmax(-1) @ v

        to_agents = F.interpolate(self.na_bias, size=self.window, mode="bilinear").reshape(1, heads, agents, -1)
        to_agents = to_agents.transpose(-2, -1) + (self.ha_bias + self.wa_bias).reshape(1, heads, -1, agents)
        out = ((q * self.scale) @ pooled.transpose(-2, -1) + to_agents).softmax(-1) @ agent_values
        out = out.transpose(1, 2).reshape(batch, tokens, channels)

        v_map = v.transpose(1, 2).reshape(batch, height // self.sr_ratio, width // self.sr_ratio, channels)
        v_map = v_map.permute(0, 3, 1, 2)
        if self.sr_ratio > 1:
            v_map = F.interpolate(v_map, size=(height, width), mode="bilinear")
        out = out + self.dwc(v_map).flatten(2).transpose(1, 2)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_patches, num_heads, mlp_ratio, qkv_bias, qk_scale, sr_ratio, agent_num, attn_type):
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)  # what every agent_pvt_* entrypoint passes as norm_layer
        self.norm1 = norm(dim)
        if attn_type == "A":
            self.attn = AgentAttention(dim, num_patches, num_heads, qkv_bias, sr_ratio, agent_num)
        else:
            self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, sr_ratio)
        self.norm2 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, height, width):
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)  # their own LayerNorm, default eps, not norm_layer

    def forward(self, x):
        height, width = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        return self.norm(self.proj(x).flatten(2).transpose(1, 2)), height, width


class PyramidVisionTransformer(nn.Module):
    """Their constructor's keywords and defaults; ``attn_type`` 'A' (agent) or 'B' (PVT attention) per stage.

    A 'B' stage uses ``sr_ratios[i]``, an 'A' stage ``int(agent_sr_ratios[i])``. Eval only (no dropout).
    """

    def __init__(
        self,
        img_size=224,
        patch_size=16,
        in_chans=3,
        num_classes=1000,
        embed_dims=(64, 128, 256, 512),
        num_heads=(1, 2, 4, 8),
        mlp_ratios=(4, 4, 4, 4),
        qkv_bias=False,
        qk_scale=None,
        depths=(3, 4, 6, 3),
        sr_ratios=(8, 4, 2, 1),
        agent_sr_ratios="1111",
        num_stages=4,
        agent_num=(9, 16, 49, 49),
        attn_type="AAAA",
    ):
        super().__init__()
        self.num_stages = num_stages
        attn_type = attn_type or "AAAA"
        for i in range(num_stages):
            # their stage-i embedding is built for img_size // (2 ** (i - 1) * patch_size) with patch 2
            stage_img = img_size if i == 0 else img_size // (2 ** (i - 1) * patch_size)
            embed = PatchEmbed(stage_img, patch_size if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1],
                               embed_dims[i])  # fmt: skip
            patches = embed.grid[0] * embed.grid[1]
            sr = sr_ratios[i] if attn_type[i] == "B" else int(agent_sr_ratios[i])
            blocks = nn.ModuleList(
                Block(
                    embed_dims[i],
                    patches,
                    num_heads[i],
                    mlp_ratios[i],
                    qkv_bias,
                    qk_scale,
                    sr,
                    int(agent_num[i]),
                    attn_type[i],
                )  # fmt: skip
                for _ in range(depths[i])
            )
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, patches, embed_dims[i])))
            setattr(self, f"block{i + 1}", blocks)
        self.head = nn.Linear(embed_dims[num_stages - 1], num_classes)

    def forward_features(self, x):
        batch = x.shape[0]
        for i in range(self.num_stages):
            x, height, width = getattr(self, f"patch_embed{i + 1}")(x)
            pos = getattr(self, f"pos_embed{i + 1}")
            if pos.shape[1] != height * width:  # their _get_pos_embed resizes the table to the map
                side = math.isqrt(pos.shape[1])
                pos = F.interpolate(pos.reshape(1, side, side, -1).permute(0, 3, 1, 2), size=(height, width),
                                    mode="bilinear").flatten(2).transpose(1, 2)  # fmt: skip
            x = x + pos
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, height, width)
            if i != self.num_stages - 1:
                x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return x.mean(dim=1)

    def forward(self, x):
        return self.head(self.forward_features(x))
