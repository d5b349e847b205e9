"""A minimal PVT v1 (Pyramid Vision Transformer) backbone hosting any attnzoo map mixer.

Wang, Xie, Li, Fan, Song, Liang, Lu, Luo, Shao. "Pyramid Vision Transformer: A Versatile Backbone for Dense
Prediction without Convolutions", ICCV 2021 (arXiv 2102.12122). timm has PVT v2 but not v1, on which Agent-PVT
(LeapLabTHU/Agent-Attention ``agent_transformer/models/agent_pvt.py``) is built; this module has the v1 parts
that model needs: a non-overlapping patch embedding plus a learned position table per stage, pre-norm blocks
(LayerNorm eps 1e-6), no final norm and no class token (the head sees the mean of the last stage's tokens).
Each stage's mixer is PVT v1's spatial-reduction attention (``"sra"``) or one from :mod:`attnzoo.blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple, trunc_normal_
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks import MixerBlock, create_mixer
from attnzoo.kernels._checks import check_dim_heads, check_fraction, check_positive_int

from ._hierarchical import HierarchicalNet, Stage, init_transformer_weights

__all__ = ["PatchEmbedPos", "PyramidVisionTransformerV1", "SpatialReductionAttention", "stage_grid_sizes"]


def stage_grid_sizes(img_size: int | Sequence[int], patch_size: int = 4, num_stages: int = 4) -> list[tuple[int, int]]:
    """Token grid of each stage for ``img_size`` input: ``img // patch``, then halved (floor) per stage."""
    grid = tuple(s // patch_size for s in to_2tuple(img_size))
    sizes = [grid]
    for _ in range(num_stages - 1):
        grid = tuple(g // 2 for g in grid)
        sizes.append(grid)
    return sizes


class PatchEmbedPos(nn.Module):
    """PVT v1 stage entry: conv patchify (kernel = stride = ``patch_size``), LayerNorm, + position embedding.

    Image ``(B, C, H, W)`` (first stage) or the previous channels-last map -> ``(B, H', W', embed_dim)``. The
    position table is the authors' ``(1, H'*W', C)`` for ``grid_size``, bilinearly resized for other maps (their
    ``_get_pos_embed``). The LayerNorm keeps torch's eps 1e-5: the authors' ``PatchEmbed`` builds its own.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        grid_size: tuple[int, int],
        channels_last_input: bool,
        pos_drop: float = 0.0,
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.channels_last_input = channels_last_input
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(pos_drop)
        trunc_normal_(self.pos_embed, std=0.02)

    def _pos_embed(self, height: int, width: int) -> torch.Tensor:
        table = self.pos_embed.view(1, *self.grid_size, -1)
        if (height, width) == self.grid_size:
            return table
        table = F.interpolate(table.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False)
        return table.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_input:
            x = x.permute(0, 3, 1, 2)
        x = self.norm(self.proj(x).permute(0, 2, 3, 1))
        return self.pos_drop(x + self._pos_embed(x.shape[1], x.shape[2]))


# the position table is resized when the map differs from its grid (Python control flow): FX keeps a leaf
register_notrace_module(PatchEmbedPos)


class SpatialReductionAttention(nn.Module):
    """PVT v1's attention: full-resolution queries attend to keys/values of the map reduced by ``sr_ratio``.

    A strided conv (kernel = stride = ``sr_ratio``) and LayerNorm reduce the map before ``kv``; dense SDPA.
    Parameter names are the authors' (``q``, ``kv``, ``sr``, ``norm``, ``proj``), as in timm's PVT v2
    ``Attention``, written here because that one ignores ``qk_scale`` (the authors' PVT v1 honours it).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = check_dim_heads(dim, num_heads)
        self.sr_ratio = check_positive_int("sr_ratio", sr_ratio)
        # the authors' `qk_scale or head_dim ** -0.5`: None and 0 mean the default
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_drop = check_fraction("attn_drop", attn_drop, 0.0, 1.0, high_open=True)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if self.sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=self.sr_ratio, stride=self.sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        q = self.q(x).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(self.sr(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        k, v = self.kv(source).view(batch, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, height, width, channels)))


register_notrace_module(SpatialReductionAttention)  # unpacks its map shape


def _stage_mixer(name: str, dim: int, num_heads: int, kwargs: dict) -> nn.Module:
    if name == "sra":
        return SpatialReductionAttention(dim, num_heads, **kwargs)
    return create_mixer(name, dim, num_heads, **kwargs)


class PyramidVisionTransformerV1(HierarchicalNet):
    """PVT v1 classifier whose blocks use ``mixer``: ``"sra"`` or a :func:`attnzoo.blocks.create_mixer` name,
    one for all stages or one per stage.

    ``mixer_kwargs`` gives one dict of mixer arguments per stage (e.g. agent counts and the stage's
    window). ``drop_rate`` is the head dropout (timm's convention); ``pos_drop_rate`` and
    ``proj_drop_rate`` are the dropouts the authors' single ``drop_rate`` controls inside the network.
    """

    def __init__(
        self,
        mixer: str | Sequence[str],
        mixer_kwargs: Sequence[dict] | None = None,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        num_stages = len(depths)
        if not len(embed_dims) == len(num_heads) == len(mlp_ratios) == num_stages:
            raise ValueError(
                f"embed_dims {list(embed_dims)}, num_heads {list(num_heads)}, mlp_ratios {list(mlp_ratios)} and "
                f"depths {list(depths)} must have one entry per stage"
            )
        mixers = [mixer] * num_stages if isinstance(mixer, str) else list(mixer)
        if len(mixers) != num_stages:
            raise ValueError(f"mixer must be one name or one per stage ({num_stages}), got {mixer!r}")
        mixer_kwargs = [{}] * num_stages if mixer_kwargs is None else list(mixer_kwargs)
        if len(mixer_kwargs) != num_stages:
            raise ValueError(f"mixer_kwargs must hold one dict per stage ({num_stages}), got {len(mixer_kwargs)}")
        grids = stage_grid_sizes(img_size, patch_size, num_stages)
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        stages, first = [], 0
        for i, depth in enumerate(depths):
            blocks = [
                MixerBlock(
                    embed_dims[i],
                    _stage_mixer(mixers[i], embed_dims[i], num_heads[i], mixer_kwargs[i]),
                    mlp_ratio=mlp_ratios[i],
                    drop=proj_drop_rate,
                    drop_path=drop_path[first + j],
                    norm_layer=norm_layer,
                )
                for j in range(depth)
            ]
            entry = PatchEmbedPos(
                in_chans if i == 0 else embed_dims[i - 1],
                embed_dims[i],
                patch_size if i == 0 else 2,
                grids[i],
                channels_last_input=i > 0,
                pos_drop=pos_drop_rate,
            )
            if i == 0:
                stem, entry = entry, None
            stages.append(Stage(blocks, entry))
            first += depth
        super().__init__(stem, stages, list(embed_dims), num_classes, global_pool, drop_rate, norm_layer=nn.Identity)
        self.apply(init_transformer_weights)
