"""Put any attnzoo mixer into timm's own backbones, keeping everything else timm gives.

:func:`graft` finds timm's transformer blocks in a model (also inside ``features_only`` wrappers),
and swaps their attention module for an :mod:`attnzoo.blocks` mixer wrapped in a small adapter
that speaks the host's calling convention (Swin's windows, PVTv2's ``(x, (H, W))``, ViT's prefixed
sequence, DaViT's windows/sequences, FocalNet's NCHW maps). Everything outside the swapped modules
— stems, norms, MLPs, heads, feature extraction, grad checkpointing, pretrained weights — stays
timm's. Parameters of the old module whose names and shapes the mixer shares (``qkv``, ``proj``,
FocalNet's ``f``/``h``/``focal_layers``...) are carried over, so a grafted pretrained model starts
from the host's weights where the mechanisms agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from timm.layers import _assert, to_2tuple
from timm.models import davit, focalnet, pvt_v2, swin_transformer, vision_transformer
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks import MIXERS, create_mixer
from attnzoo.blocks.record import WindowedRecord

SEQUENCE_MIXERS = ("agent", "sparsifiner")
"""Mixers that take a token sequence with prefix (class) tokens: the only ones a ViT with a class token can host."""


# --- adapters: the host's calling convention -> channels-last maps ---------------------------------
class WindowMixer(nn.Module):
    """Swin/DaViT window attention: ``(windows, ws*ws, C)`` -> mixer on ``(windows, ws, ws, C)``.

    The shift mask of shifted Swin blocks is not applied, as in the authors' Agent-Swin (whose agent
    attention ignores it); the cyclic shift itself is still done by timm's block.
    """

    def __init__(self, mixer: nn.Module, window_size: tuple[int, int]):
        super().__init__()
        self.mixer = mixer
        self.window_size = tuple(window_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, tokens, channels = x.shape
        height, width = self.window_size
        return self.mixer(x.reshape(windows, height, width, channels)).reshape(windows, tokens, channels)

    def adapt_recorder(self, callback, ancestors: list[nn.Module]):
        """While :func:`attnzoo.blocks.record_attention` runs: the mixer's per-window records become
        :class:`~attnzoo.blocks.record.WindowedRecord` over the host block's map, whose size a pre-hook on the
        block (``ancestors[0]``) reads from each input (Swin: ``(B, H, W, C)``, DaViT: ``(B, C, H, W)``)."""
        block = ancestors[0]
        channels_first = isinstance(block, davit.SpatialBlock)
        seen = {}

        def remember_size(_, args):
            seen["size"] = tuple(args[0].shape[2:4] if channels_first else args[0].shape[1:3])

        handle = block.register_forward_pre_hook(remember_size)

        def place(record):
            window = tuple(record.map_size)
            shift = to_2tuple(getattr(block, "shift_size", 0))
            callback(WindowedRecord(record, seen["size"], window, shift=shift))

        return place, handle.remove


class SizedSequenceMixer(nn.Module):
    """PVTv2 attention: ``(B, H*W, C)`` with ``feat_size=(H, W)`` -> mixer on ``(B, H, W, C)``."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return self.mixer(x.reshape(batch, *feat_size, channels)).reshape(batch, tokens, channels)


class TokenSequenceMixer(nn.Module):
    """DaViT channel attention: ``(B, N, C)`` without a grid -> mixer on a ``(B, 1, N, C)`` map.

    Only for mixers that ignore spatial layout (channel attention mixes channels over all tokens).
    """

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x.unsqueeze(1)).squeeze(1)


class PrefixedSequenceMixer(nn.Module):
    """ViT/DeiT attention: ``(B, P + H*W, C)`` -> a sequence mixer (given the grid) or a map mixer (P = 0)."""

    def __init__(self, mixer: nn.Module, grid_size: tuple[int, int], num_prefix_tokens: int, takes_sequence: bool):
        super().__init__()
        self.mixer = mixer
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.takes_sequence = takes_sequence

    def _grid(self, tokens: int) -> tuple[int, int]:
        patches = tokens - self.num_prefix_tokens
        if patches == self.grid_size[0] * self.grid_size[1]:
            return self.grid_size
        side = int(patches**0.5)
        _assert(
            side * side == patches,
            f"cannot recover the patch grid from {patches} patch tokens (built for {self.grid_size}); "
            "use square inputs or the model's image size",
        )
        return side, side

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        _assert(attn_mask is None and not is_causal, "grafted mixers do not take attn_mask / is_causal")
        grid = self._grid(x.shape[1])
        if self.takes_sequence:
            return self.mixer(x, grid_size=grid, num_prefix_tokens=self.num_prefix_tokens)
        batch, tokens, channels = x.shape
        return self.mixer(x.reshape(batch, *grid, channels)).reshape(batch, tokens, channels)


class ChannelsFirstMixer(nn.Module):
    """FocalNet modulation: ``(B, C, H, W)`` -> mixer on the channels-last view."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


_ADAPTERS = (WindowMixer, SizedSequenceMixer, TokenSequenceMixer, PrefixedSequenceMixer, ChannelsFirstMixer)
# The patch grid is recovered with Python arithmetic on the token count, and timm's ViT passes ``attn_mask``
# (a Proxy under FX) down to the blocks: the adapter stays a leaf of traced graphs.
register_notrace_module(PrefixedSequenceMixer)


# --- hosts -----------------------------------------------------------------------------------------
@dataclass
class Site:
    """One attention module of a host block: where it sits and what a mixer needs to replace it."""

    block: nn.Module
    attribute: str
    stage: int
    index: int  # block index within its stage
    dim: int
    num_heads: int
    host: str


def _unwrap(module: nn.Module) -> nn.Module:
    """The mixer inside an adapter (a block grafted before), else the module itself."""
    return module.mixer if isinstance(module, _ADAPTERS) else module


_STAGE = re.compile(r"(?:^|\.)(?:layers|stages)[._](\d+)(?:\.|$)")


def _host_of(block: nn.Module) -> str | None:
    if isinstance(block, swin_transformer.SwinTransformerBlock):
        return "swin"
    if isinstance(block, pvt_v2.Block):
        return "pvt_v2"
    if isinstance(block, (vision_transformer.Block, vision_transformer.ResPostBlock)):
        return "vit"
    if isinstance(block, (davit.SpatialBlock, davit.ChannelBlock)):
        return "davit"
    if isinstance(block, focalnet.FocalNetBlock):
        return "focalnet"
    return None


def find_sites(model: nn.Module) -> list[Site]:
    """Every replaceable attention module in ``model``, in forward order, with its stage and block index."""
    sites, counters = [], {}
    for name, module in model.named_modules():
        host = _host_of(module)
        if host is None:
            continue
        match = _STAGE.search(name)
        stage = int(match.group(1)) if match else 0
        index = counters.get(stage, 0)
        counters[stage] = index + 1
        attribute = "modulation" if host == "focalnet" else "attn"
        old = _unwrap(getattr(module, attribute))
        dim = old.qkv.in_features if hasattr(old, "qkv") else old.dim
        heads = getattr(old, "num_heads", 1)  # focal modulation has no heads
        sites.append(Site(module, attribute, stage, index, dim, heads, host))
    return sites


SUPPORTED = "timm's swin_* (SwinTransformer), pvt_v2_*, vit_*/deit_* (VisionTransformer), davit_* and focalnet_*"


def _select(sites: list[Site], stages, blocks) -> list[Site]:
    available = sorted({s.stage for s in sites})
    if stages is None:
        stages = available
    else:
        stages = [stages] if isinstance(stages, int) else list(stages)
        wrong = [s for s in stages if s not in available]
        if wrong:
            raise ValueError(f"stages {wrong} do not exist in this model; its stages are {available}")
    chosen = [s for s in sites if s.stage in stages]
    if blocks is not None:
        blocks = [blocks] if isinstance(blocks, int) else list(blocks)
        depth = {stage: sum(1 for s in chosen if s.stage == stage) for stage in stages}
        for stage in stages:
            wrong = [b for b in blocks if not -depth[stage] <= b < depth[stage]]
            if wrong:
                raise ValueError(f"blocks {wrong} do not exist in stage {stage}, which has {depth[stage]} blocks")
        chosen = [s for s in chosen if s.index in blocks or s.index - depth[s.stage] in blocks]
    return chosen


def _pvt_stage_map(site: Site, model: nn.Module) -> tuple[int, int]:
    """(H, W) of a PVTv2 stage's map at the model's input size (stride 4, then 2 per stage)."""
    size = (model.pretrained_cfg or {}).get("input_size", (3, 224, 224))[-2:]
    return tuple(math.ceil(s / (4 * 2**site.stage)) for s in size)


def _host_defaults(site: Site, mixer: str, model: nn.Module) -> dict:
    """Mixer arguments the host determines (window sizes, prefix tokens, FocalNet's levels)."""
    old = _unwrap(getattr(site.block, site.attribute))
    if site.host == "focalnet" and mixer == "focal" and hasattr(old, "use_post_norm"):
        return dict(
            focal_window=old.focal_window,
            focal_level=old.focal_level,
            focal_factor=old.focal_factor,
            use_postln_in_modulation=old.use_post_norm,
            normalize_modulator=old.normalize_modulator,
            bias=old.f.bias is not None,
        )
    if site.host == "davit" and mixer == "dual" and hasattr(old, "qkv"):
        if isinstance(site.block, davit.SpatialBlock):
            return dict(attention="spatial", window_size=site.block.window_size[0], qkv_bias=old.qkv.bias is not None)
        return dict(attention="channel", qkv_bias=old.qkv.bias is not None)
    if mixer == "agent":
        if site.host == "swin":
            return dict(window_size=tuple(site.block.window_size))
        if site.host == "pvt_v2":  # the agent biases are sized by the stage's map at the model's input size
            return dict(window_size=_pvt_stage_map(site, model))
        if site.host == "vit":
            return dict(window_size=tuple(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens)
    if mixer == "sparsifiner":  # built for a token count: the host's window, stage map or patch grid
        if site.host == "vit":
            grid = model.patch_embed.grid_size
            return dict(num_tokens=grid[0] * grid[1] + model.num_prefix_tokens)
        if site.host == "swin" or isinstance(site.block, davit.SpatialBlock):
            return dict(num_tokens=math.prod(site.block.window_size))
        if site.host == "pvt_v2":
            return dict(num_tokens=math.prod(_pvt_stage_map(site, model)))
        raise ValueError(
            f"mixer 'sparsifiner' is built for a fixed token count, which {site.host} blocks of this kind do not "
            "have; graft it into ViT/DeiT, Swin, PVTv2 or DaViT's spatial blocks"
        )
    return {}


def _adapter(site: Site, mixer_name: str, mixer: nn.Module, model: nn.Module) -> nn.Module:
    if site.host in ("swin",):
        return WindowMixer(mixer, site.block.window_size)
    if site.host == "davit":
        if isinstance(site.block, davit.SpatialBlock):
            return WindowMixer(mixer, site.block.window_size)
        return TokenSequenceMixer(mixer)
    if site.host == "pvt_v2":
        return SizedSequenceMixer(mixer)
    if site.host == "focalnet":
        return ChannelsFirstMixer(mixer)
    takes_sequence = mixer_name in SEQUENCE_MIXERS
    if getattr(model, "dynamic_img_size", False) and not takes_sequence:
        raise ValueError(
            f"mixer {mixer_name!r} works on maps, and a ViT built with dynamic_img_size=True does not tell its blocks "
            "the patch grid of each input; build the ViT with a fixed img_size, or graft one of "
            f"{list(SEQUENCE_MIXERS)}"
        )
    if model.num_prefix_tokens and not takes_sequence:
        raise ValueError(
            f"mixer {mixer_name!r} works on maps and cannot take this ViT's {model.num_prefix_tokens} prefix (class) "
            f"token(s); use one of {list(SEQUENCE_MIXERS)}, or a ViT without prefix tokens (class_token=False)"
        )
    return PrefixedSequenceMixer(mixer, model.patch_embed.grid_size, model.num_prefix_tokens, takes_sequence)


def _same_weight_shape(a: torch.Size, b: torch.Size) -> bool:
    """Equal shapes, or a Linear ``(out, in)`` against a 1x1 conv ``(out, in, 1, 1)`` (timm's NCHW FocalNet)."""
    return a == b or [d for d in a if d != 1] == [d for d in b if d != 1] and a[:2] == b[:2]


def _fit_kernel(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A conv kernel of another odd size, zero-padded or cropped around its centre to ``shape``; else ``None``.

    FocalNet's rule for fine-tuning with larger focal windows: with "same" padding, a centred zero-padded kernel
    computes exactly what the small one did.
    """
    if value.dim() != 4 or value.shape[:2] != shape[:2] or value.shape == shape:
        return None
    if any(size % 2 == 0 for size in (*value.shape[2:], *shape[2:])):
        return None
    out = value.new_zeros(shape)
    (kh, kw), (nh, nw) = value.shape[2:], shape[2:]
    h, w = min(kh, nh), min(kw, nw)
    out[..., (nh - h) // 2 : (nh + h) // 2, (nw - w) // 2 : (nw + w) // 2] = value[
        ..., (kh - h) // 2 : (kh + h) // 2, (kw - w) // 2 : (kw + w) // 2
    ]
    return out


def _carry_over(old: nn.Module, new: nn.Module) -> list[str]:
    """Copy the old module's tensors into the mixer wherever name and shape agree, conv kernels of another odd
    size centre-padded or cropped (:func:`_fit_kernel`); return the names copied."""
    new_state = new.state_dict()
    shared = {}
    for key, value in old.state_dict().items():
        if key not in new_state:
            continue
        if _same_weight_shape(value.shape, new_state[key].shape):
            shared[key] = value.reshape(new_state[key].shape)
        elif (fitted := _fit_kernel(value, new_state[key].shape)) is not None:
            shared[key] = fitted
    new.load_state_dict(shared, strict=False)
    return sorted(shared)


def _vit_host(model: nn.Module) -> nn.Module:
    """The VisionTransformer itself (also inside timm's features_only wrappers)."""
    for module in model.modules():
        if isinstance(module, vision_transformer.VisionTransformer):
            return module
    raise ValueError("found ViT blocks outside a timm VisionTransformer; cannot tell its patch grid")


def graft(
    model: nn.Module,
    mixer: str,
    stages: int | Iterable[int] | None = None,
    blocks: int | Iterable[int] | None = None,
    carry_over: bool = True,
    **mixer_kwargs,
) -> nn.Module:
    """Replace the attention of ``model``'s blocks (in ``stages``, or all) by ``create_mixer(mixer, ...)``.

    Args:
        model: a timm Swin, PVTv2, ViT/DeiT, DaViT or FocalNet model, also one built with
            ``features_only=True``. Changed in place and returned.
        mixer: a :data:`attnzoo.blocks.MIXERS` name.
        stages: stage indices (ViT/DeiT have one stage, 0); ``None`` for all.
        blocks: block indices within each chosen stage (negative counts from the end); ``None`` for all.
        carry_over: copy the old module's parameters the mixer shares by name and shape (conv kernels of another
            odd size centre-padded with zeros or cropped: FocalNet's larger dense-task focal windows).
        **mixer_kwargs: the mixer's own arguments; they override what the host implies (window sizes,
            number of prefix tokens, FocalNet's focal levels).
    """
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; choose one of {sorted(MIXERS)}")
    sites = find_sites(model)
    if not sites:
        raise ValueError(f"graft supports {SUPPORTED}; found none of their blocks in {type(model).__name__}")
    chosen = _select(sites, stages, blocks)
    host = _vit_host(model) if any(s.host == "vit" for s in chosen) else model
    for site in chosen:
        kwargs = {**_host_defaults(site, mixer, host), **mixer_kwargs}
        new = create_mixer(mixer, site.dim, site.num_heads, **kwargs)
        old = _unwrap(getattr(site.block, site.attribute))
        if carry_over:
            _carry_over(old, new)
        new = new.to(device=next(old.parameters()).device, dtype=next(old.parameters()).dtype)
        setattr(site.block, site.attribute, _adapter(site, mixer, new, host))
    return model


__all__ = ["SEQUENCE_MIXERS", "SUPPORTED", "find_sites", "graft"]
