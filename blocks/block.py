"""The transformer block around any mixer: norm -> mixer -> residual, norm -> MLP -> residual."""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from attnzoo.kernels._checks import check_positive_int


class MixerBlock(nn.Module):
    """Pre-norm transformer block, ``x + DropPath(LayerScale(mixer(norm1(x))))`` then the same with an MLP.

    One place for the block so every mixer gets identical residual, layer-scale and drop-path
    handling (timm.layers). ``mixer`` is a module or a :func:`attnzoo.blocks.create_mixer` name
    (then built with ``dim``, ``num_heads`` and ``mixer_kwargs``). Extra ``forward`` keyword
    arguments (``grid_size``, ``num_prefix_tokens`` for sequence inputs) go to the mixer.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module | str,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        mixer_kwargs: dict | None = None,
    ):
        super().__init__()
        dim = check_positive_int("dim", dim)
        if isinstance(mixer, str):
            from . import create_mixer

            if num_heads is None:
                raise ValueError(f"num_heads is required to build the mixer {mixer!r} by name")
            mixer = create_mixer(mixer, dim=dim, num_heads=num_heads, **(mixer_kwargs or {}))
        elif mixer_kwargs:
            raise ValueError("mixer_kwargs only applies when mixer is given by name")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        self.norm1 = norm_layer(dim)
        self.mixer = mixer
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, **mixer_kwargs) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x), **mixer_kwargs)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
