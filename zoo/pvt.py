"""A minimal PVT v1 (Pyramid Vision Transformer) backbone hosting any attnzoo map mixer.

Wang, Xie, Li, Fan, Song, Liang, Lu, Luo, Shao. "Pyramid Vision Transformer: A Versatile Backbone for Dense
Prediction without Convolutions", ICCV 2021 (arXiv 2102.12122). timm has PVT v2 but not v1, and Agent-PVT
(Han et al., ECCV 2024, arXiv 2312.08874; LeapLabTHU/Agent-Attention ``agent_transformer/models/agent_pvt.py``)
is built on v1, so this module provides just the v1 parts that model needs:

* every stage starts with a non-overlapping patch embedding (conv with kernel = stride = 4, then 2) and
  LayerNorm, followed by a learned absolute position embedding per stage (v2 uses overlapping convs and none);
* pre-norm transformer blocks (LayerNorm eps 1e-6, GELU MLP with a per-stage ratio);
* no final norm: the head sees the mean of the last stage's tokens (the authors' Agent-PVT drops v1's cls token).

The attention is a mixer from :mod:`attnzoo.blocks` on channels-last maps (PVT v1's spatial-reduction
attention is not needed by any released attnzoo model, so it is not provided). Stages, heads,
``features_only`` and the rest of timm's model contract come from :class:`~attnzoo._hierarchical.HierarchicalNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple, trunc_normal_
from torch import nn

from attnzoo.blocks import MixerBlock, create_mixer

from ._hierarchical import HierarchicalNet, Stage, init_transformer_weights

__all__ = ["PatchEmbedPos", "PyramidVisionTransformerV1", "stage_grid_sizes"]


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

    Takes an image ``(B, C, H, W)`` (first stage, ``channels_last_input=False``) or the previous stage's
    channels-last map, and returns ``(B, H', W', embed_dim)``. The position embedding is stored as the
    authors' ``(1, H'*W', C)`` table for ``grid_size``; another input size gets it bilinearly resized,
    as the authors' ``_get_pos_embed`` does. The LayerNorm keeps torch's default eps (1e-5): the authors'
    ``PatchEmbed`` builds its own ``nn.LayerNorm`` rather than the blocks' ``norm_layer``.
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


class PyramidVisionTransformerV1(HierarchicalNet):
    """PVT v1 classifier whose blocks use ``mixer`` (an :func:`attnzoo.blocks.create_mixer` name).

    ``mixer_kwargs`` gives one dict of mixer arguments per stage (e.g. agent counts and the stage's
    window). ``drop_rate`` is the head dropout (timm's convention); ``pos_drop_rate`` and
    ``proj_drop_rate`` are the dropouts the authors' single ``drop_rate`` controls inside the network.
    """

    def __init__(
        self,
        mixer: str,
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
                    create_mixer(mixer, embed_dims[i], num_heads[i], **mixer_kwargs[i]),
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
