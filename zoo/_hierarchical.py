"""The staged channels-last backbone (four stages in every released model) shared by the natively built
families (NAT, DiNAT, LITv2, Agent-PVT).

A family supplies its stem (image -> ``(B, H/4, W/4, C)``), its stages (optional downsample, then
blocks, all on ``(B, H, W, C)`` maps) and a final norm; everything timm expects of a model —
classifier head, ``forward_intermediates``, ``features_only``, pruning, grad checkpointing, layer
decay groups — is written once here, in timm's own conventions (cf. timm's Swin).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn

from .weights import build_model_with_cfg, stage_out_indices


class Stage(nn.Module):
    """``downsample`` (identity in the first stage) followed by ``blocks``, on ``(B, H, W, C)`` maps."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None = None):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class ConvDownsample(nn.Module):
    """Strided conv on a channels-last map, then LayerNorm: NAT's and DiNAT's ``ConvDownsampler``.

    The conv runs on an NCHW view with channels-last strides, so no copy is made either way.
    """

    def __init__(self, dim: int, out_dim: int, kernel_size: int = 3, stride: int = 2, padding: int = 1, bias=False):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, kernel_size, stride, padding, bias=bias)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class HierarchicalNet(nn.Module):
    """stem -> stages -> norm -> global average pool -> head, with timm's model contract.

    ``forward_features`` returns the normed last map ``(B, H/32, W/32, C)`` (``output_fmt='NHWC'``);
    intermediates and ``features_only`` maps are NCHW at strides 4, 8, 16, 32.
    """

    output_fmt = "NHWC"

    def __init__(
        self,
        patch_embed: nn.Module,
        stages: list[Stage],
        dims: list[int],
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.patch_embed = patch_embed
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=dim, reduction=4 * 2**i, module=f"stages.{i}") for i, dim in enumerate(dims)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

    # --- timm's classifier contract -------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ValueError(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem, then each downsample/block in order, then the norm."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of position tables (``rpb`` and the like) that must not be decayed; families extend it."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in self.no_weight_decay_leaves}

    no_weight_decay_leaves: tuple[str, ...] = ()

    # --- forward --------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage outputs listed by ``indices`` (timm's convention), and the final features.

        ``norm`` applies the final norm to the last stage's map (the only one it is sized for).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if not stop_early or torch.jit.is_scripting() else self.stages[: max_index + 1]
        intermediates = []
        x = self.patch_embed(x)
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                x_inter = self.norm(x) if norm and i == last else x
                intermediates.append(x_inter.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else x_inter)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one ``indices`` needs (and the norm/head as timm does)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


def init_transformer_weights(module: nn.Module) -> None:
    """The init NAT, LITv2 and PVT share (``model.apply`` it): truncated-normal (std .02) Linear weights,
    zero biases, LayerNorm (1, 0); convs keep PyTorch's defaults."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_hierarchical(model_cls: type[nn.Module], variant: str, pretrained: bool, filter_fn, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` with ``features_only`` served by ``forward_intermediates`` (every stage
    by default, however many the model has)."""
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is None:
        out_indices = stage_out_indices(model_cls, kwargs)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )
