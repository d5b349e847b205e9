"""The arena family: one four-stage backbone in which only the token mixer differs, sized to a compute budget.

Stem (NAT's two stride-2 3x3 convs), downsampling (3x3 stride-2 conv + LayerNorm), a depthwise 3x3 conditional
position encoding before every block (DaViT's ``ConvPosEnc``: the same position signal for every entry, so that
mixers without one of their own, dense attention and Sparsifiner, are not position-blind), pre-norm blocks
(:class:`~attnzoo.blocks.MixerBlock`: LayerNorm, layer scale, drop path, GELU MLP), depths (2, 2, 6, 2) (Swin-T,
DaViT-T, FocalNet-T, LITv2-S) and the head are identical for every entry; :data:`ENTRIES` states what differs.

Equal compute, one rule for every entry (:func:`solve_budget`): the head size is fixed (:data:`HEAD_DIM`), stage
widths are ``C * (1, 2, 4, 8)`` with ``C`` a multiple of the head size (heads = width / head size), and the MLP
ratio ``r`` (hidden = ``int(width * r)``, as MixerBlock) is solved so that the model's MACs at the build size
meet the budget; of the widths whose ``r`` lies in ``[R_MIN, R_MAX]``, the one whose ``r`` is closest to 4 (the
ratio of Swin, DaViT, FocalNet), in log scale, is taken. MACs are :func:`attnzoo.macs.count_macs` on the meta
device: every mechanism as it runs, neighborhood attention by its definition.

``timm.create_model("arena_tiny", mixer="hilo", budget=4.5)`` builds an entry at 4.5 GMACs (224 px);
``img_size`` is the size it is built and counted for (the per-stage settings that depend on the map are taken
there), and :meth:`ArenaNet.set_input_size` applies each mixer's own rule for another size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks import MixerBlock, create_mixer
from attnzoo.blocks.baselines import DenseAttention, ShiftedWindowAttention
from attnzoo.blocks.sparsifiner import SparsifinerAttention

from ._hierarchical import ConvDownsample, HierarchicalNet, Stage, build_hierarchical, init_transformer_weights
from .macs import count_macs
from .nat import ConvTokenizer

__all__ = ["ENTRIES", "HEAD_DIM", "ArenaNet", "check_input_size", "entry_names", "solve_budget"]

HEAD_DIM = 16
"""Channels per head in every entry and stage (16, not Swin's 32: at 1 GMAC and 224 px dense attention over the
56 x 56 stage-1 map only fits with 16 channels there)."""
DEPTHS = (2, 2, 6, 2)
R_MIN, R_MAX = 0.125, 16.0
MIN_SIZE = 32  # four stages at strides 4..32: at least one token in the last stage


@dataclass(frozen=True)
class Entry:
    """One contestant: its mixer per (stage, block), the paper its settings come from and those settings in words."""

    paper: str
    settings: str
    build: Callable[[int, int, int, int, tuple[int, int]], nn.Module]  # (stage, block, dim, heads, map) -> mixer
    size_multiple: int = 1  # input sides must be a multiple of this (QuadTree's pyramid)


def _dinat_dilation(side: int, kernel: int = 7) -> int:
    """DiNAT's rule: the dilated blocks spread the 7x7 window over the whole map, ``side // 7`` (224 px: 8, 4, 2, 1;
    384 px: 13, 6, 3, 1, the released configurations)."""
    return max(1, side // kernel)


def _sparsifiner(dim: int, heads: int, size: tuple[int, int]) -> nn.Module:
    tokens = size[0] * size[1]
    # N_r = N // reduce_n_factor basis maps; the authors' factor 6 (DeiT-S: 197 tokens, 32 maps) would give 522
    # maps over stage 1's 3136 tokens, so the factor grows to keep at most 32 maps, the DeiT-S number
    return SparsifinerAttention(
        dim, heads, num_tokens=tokens, keep_ratio=0.25, reduce_n_factor=max(6, tokens // 32), basis_coef_topk=8
    )


AGENT_NUM = (9, 16, 49, 49)
QUADTREE_LEVELS = (4, 3, 2, 1)
HILO_WINDOW = (2, 2, 2, 1)

ENTRIES: dict[str, Entry] = {
    "neighborhood": Entry(
        "NAT, Hassani et al., CVPR 2023 (arXiv 2204.07143), nat.py",
        "7x7 neighbourhood, relative position bias, every stage",
        lambda s, b, dim, heads, size: create_mixer("neighborhood", dim, heads, kernel_size=7),
    ),
    "dilated": Entry(
        "DiNAT, Hassani & Shi, 2022 (arXiv 2209.15001), dinat.py",
        "7x7 neighbourhood; every second block dilated by map side // 7 at the build size (224 px: 8, 4, 2, 1)",
        lambda s, b, dim, heads, size: create_mixer(
            "neighborhood", dim, heads, kernel_size=7, dilation=_dinat_dilation(min(size)) if b % 2 else 1
        ),
    ),
    "hilo": Entry(
        "LITv2, Pan et al., NeurIPS 2022 (arXiv 2205.13213), LITv2-S config",
        "alpha 0.9 (Lo-Fi share of heads), window 2 in stages 1-3, 1 (global attention) in stage 4",
        lambda s, b, dim, heads, size: create_mixer("hilo", dim, heads, alpha=0.9, window_size=HILO_WINDOW[s]),
    ),
    "quadtree": Entry(
        "QuadTree-B, Tang et al., ICLR 2022 (arXiv 2201.02767), quadtree_b0-b4",
        "variant B, pyramid levels 4, 3, 2, 1 (the authors' sr_ratios), top-k 8",
        lambda s, b, dim, heads, size: create_mixer(
            "quadtree", dim, heads, sr_ratio=QUADTREE_LEVELS[s], attn_type="B", topk=8, qkv_bias=True
        ),
        size_multiple=32,
    ),
    "dual": Entry(
        "DaViT, Ding et al., ECCV 2022 (arXiv 2204.03645), DaViT-T",
        "spatial window attention (7x7 windows) and channel group attention alternate block by block",
        lambda s, b, dim, heads, size: create_mixer(
            "dual", dim, heads, attention="channel" if b % 2 else "spatial", window_size=7
        ),
    ),
    "agent": Entry(
        "Agent Attention, Han et al., ECCV 2024 (arXiv 2312.08874), Agent-PVT-T",
        "9, 16, 49, 49 agents over the whole map, DWC, agent biases sized at the build size and resized to any "
        "other (the authors' dense backbones: dynamic size)",
        lambda s, b, dim, heads, size: create_mixer(
            "agent", dim, heads, agent_num=AGENT_NUM[s], window_size=size, dynamic_size=True
        ),
    ),
    "focal": Entry(
        "FocalNet, Yang et al., NeurIPS 2022 (arXiv 2203.11926), FocalNet-T (SRF)",
        "focal level 2, focal window 3 (kernels 3, 5) and the global context, every stage",
        lambda s, b, dim, heads, size: create_mixer("focal", dim, heads, focal_level=2, focal_window=3),
    ),
    "sparsifiner": Entry(
        "Sparsifiner, Wei et al., CVPR 2023 (arXiv 2303.13755), DeiT-S config",
        "keep ratio 0.25 (top-k keys per query from the low-rank predictor), 8 basis coefficients per query, "
        "at most 32 basis maps; the predictor is sized by the map at the build size and resampled for another",
        lambda s, b, dim, heads, size: _sparsifiner(dim, heads, size),
    ),
    "dense": Entry(
        "ViT, Dosovitskiy et al., ICLR 2021 (baseline)",
        "global multi-head self-attention over every token (SDPA), every stage",
        lambda s, b, dim, heads, size: DenseAttention(dim, heads),
    ),
    "window": Entry(
        "Swin, Liu et al., ICCV 2021 (arXiv 2103.14030), Swin-T (baseline)",
        "7x7 windows with relative position bias; every second block shifted by 3",
        lambda s, b, dim, heads, size: ShiftedWindowAttention(dim, heads, window_size=7, shift=bool(b % 2)),
    ),
}
"""The arena's entries: the seven mechanisms (DiNAT as its own entry) and the two baselines, per-stage settings from
each paper's own classification model of the Swin-T/NAT-T class."""

for _module in (DenseAttention, ShiftedWindowAttention):  # their padding depends on the map size
    register_notrace_module(_module)


def entry_names() -> list[str]:
    return list(ENTRIES)


def _check_entry(mixer: str) -> Entry:
    if mixer not in ENTRIES:
        raise ValueError(f"mixer: unknown arena entry {mixer!r}; choose from {', '.join(ENTRIES)}")
    return ENTRIES[mixer]


def _pair(img_size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    height, width = (int(s) for s in img_size)
    return height, width


def check_input_size(mixer: str, img_size) -> tuple[int, int]:
    """``(H, W)``, or a ``ValueError`` naming ``img_size`` when ``mixer``'s entry cannot take that size."""
    entry = _check_entry(mixer)
    height, width = _pair(img_size)
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"img_size: {height}x{width} is below the arena's minimum of {MIN_SIZE} px (stride 32)")
    if height % entry.size_multiple or width % entry.size_multiple:
        raise ValueError(
            f"img_size: {mixer} needs sides that are multiples of {entry.size_multiple} (its pyramid halves the "
            f"stage-1 map three times), got {height}x{width}"
        )
    return height, width


class ConvPosEnc(nn.Module):
    """``x + dwconv3x3(x)`` on a channels-last map: DaViT's conditional position encoding, in every entry alike."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ArenaBlock(nn.Module):
    """Position encoding, then the shared pre-norm block around the entry's mixer."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float, drop_path: float, layer_scale: float | None):
        super().__init__()
        self.cpe = ConvPosEnc(dim)
        self.block = MixerBlock(dim, mixer, mlp_ratio=mlp_ratio, drop_path=drop_path, layer_scale=layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.cpe(x))


class ArenaNet(HierarchicalNet):
    """The arena backbone with the mixer of entry ``mixer`` (:data:`ENTRIES`).

    Args:
        mixer: the entry name.
        embed_dim: stage-1 width ``C`` (a multiple of ``head_dim``); stages are ``C * (1, 2, 4, 8)`` wide.
        mlp_ratio: MLP hidden width over the block width.
        img_size: the input size the entry is built for (map-dependent settings: DiNAT's dilation, Agent's bias
            tables, Sparsifiner's predictor); other sizes run through :meth:`set_input_size`.
        depths, head_dim, layer_scale, drop_path_rate: the shared backbone's (the same for every entry).
    """

    no_weight_decay_leaves = ("rpb", "relative_position_bias_table")

    def __init__(
        self,
        mixer: str = "neighborhood",
        embed_dim: int = 64,
        mlp_ratio: float = 4.0,
        depths=DEPTHS,
        head_dim: int = HEAD_DIM,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        layer_scale: float | None = None,
    ):
        entry = _check_entry(mixer)
        if not isinstance(embed_dim, int) or embed_dim < head_dim or embed_dim % head_dim:
            raise ValueError(f"embed_dim must be a positive multiple of head_dim={head_dim}, got {embed_dim!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        height, width = check_input_size(mixer, img_size)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, first = [], 0
        for i, depth in enumerate(depths):
            size = (max(height // 4 // 2**i, 1), max(width // 4 // 2**i, 1))
            heads = dims[i] // head_dim
            blocks = [
                ArenaBlock(
                    dims[i], entry.build(i, j, dims[i], heads, size), mlp_ratio, drop_path[first + j], layer_scale
                )
                for j in range(depth)
            ]
            stages.append(Stage(blocks, ConvDownsample(dims[i - 1], dims[i]) if i > 0 else None))
            first += depth
        super().__init__(
            ConvTokenizer(in_chans, embed_dim), stages, dims, num_classes, global_pool, drop_rate=drop_rate
        )
        self.mixer_name = mixer
        self.img_size = (height, width)
        self.apply(init_transformer_weights)

    @torch.no_grad()
    def set_input_size(self, img_size) -> None:
        """Make the model take ``img_size``: each mixer's own rule for a size it was not built for.

        Sparsifiner's predictor tables ``proj_n``/``proj_back_n`` ``(N, N_r)`` are resampled bilinearly over the
        token grid (as a ViT's position table), keeping ``N_r`` and the keep ratio; every other entry takes any
        size as it is (Agent resizes its bias tables per call, NA/HiLo/windows pad small or odd maps, DiNAT keeps
        its trained dilations, QuadTree its levels; sizes QuadTree cannot take are refused).
        """
        height, width = check_input_size(self.mixer_name, img_size)
        for i, stage in enumerate(self.stages):
            size = (max(height // 4 // 2**i, 1), max(width // 4 // 2**i, 1))
            for module in stage.modules():
                if isinstance(module, SparsifinerAttention):
                    _resize_sparsifiner(module, size, _grid(module.num_tokens, self.img_size, i))
        self.img_size = (height, width)


def _grid(tokens: int, img_size: tuple[int, int], stage: int) -> tuple[int, int]:
    size = (max(img_size[0] // 4 // 2**stage, 1), max(img_size[1] // 4 // 2**stage, 1))
    if size[0] * size[1] != tokens:
        raise ValueError(f"a Sparsifiner table of {tokens} tokens does not match the {size} map")
    return size


def _resize_sparsifiner(module: SparsifinerAttention, size: tuple[int, int], old: tuple[int, int]) -> None:
    tokens = size[0] * size[1]
    if tokens == module.num_tokens and size == old:
        return
    predictor = module.mask_predictor

    def resample(table: torch.Tensor) -> nn.Parameter:
        grid = table.t().reshape(1, -1, *old)  # (1, N_r, h, w)
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        return nn.Parameter(grid.reshape(-1, tokens).t().contiguous(), requires_grad=table.requires_grad)

    shared = predictor.proj_back_n is predictor.proj_n
    predictor.proj_n = resample(predictor.proj_n)
    predictor.proj_back_n = predictor.proj_n if shared else resample(predictor.proj_back_n)
    predictor.num_tokens = module.num_tokens = tokens
    module.attn_budget = min(math.ceil(module.keep_ratio * tokens), tokens)


# --- the equal-compute rule ----------------------------------------------------------------------------------
def _mlp_macs(embed_dim: int, mlp_ratio: float, img_size: tuple[int, int], depths=DEPTHS) -> int:
    """MACs of every block's MLP (fc1 and fc2: ``2 * tokens * width * hidden``), exactly as MixerBlock sizes it."""
    total = 0
    for i, depth in enumerate(depths):
        tokens = max(img_size[0] // 4 // 2**i, 1) * max(img_size[1] // 4 // 2**i, 1)
        width = embed_dim * 2**i
        total += depth * tokens * 2 * width * int(width * mlp_ratio)
    return total


@lru_cache(maxsize=512)
def count_arena_macs(mixer: str, embed_dim: int, mlp_ratio: float, img_size: tuple[int, int]) -> int:
    """MACs of one image through the entry (meta device: nothing is allocated or run)."""
    with torch.device("meta"):
        model = ArenaNet(mixer, embed_dim=embed_dim, mlp_ratio=mlp_ratio, img_size=img_size, num_classes=1000)
    return count_macs(model.eval(), torch.empty(1, 3, *img_size, device="meta"))


@lru_cache(maxsize=64)
def count_arena_params(mixer: str, embed_dim: int, mlp_ratio: float, img_size: tuple[int, int]) -> int:
    with torch.device("meta"):
        model = ArenaNet(mixer, embed_dim=embed_dim, mlp_ratio=mlp_ratio, img_size=img_size, num_classes=1000)
    return sum(p.numel() for p in model.parameters())


def _solve_ratio(base: int, embed_dim: int, budget: int, img_size: tuple[int, int]) -> float:
    """The MLP ratio whose model costs ``budget`` MACs, given ``base`` = MACs outside the MLPs (rounded hidden
    widths: the closest of the neighbouring ratios on the grid ``k / embed_dim``)."""
    per_ratio = _mlp_macs(embed_dim, 1.0, img_size)
    guess = (budget - base) / per_ratio
    grid = [max(round(guess * embed_dim) + k, 1) / embed_dim for k in (-1, 0, 1)]
    return min(grid, key=lambda r: abs(base + _mlp_macs(embed_dim, r, img_size) - budget))


def solve_budget(mixer: str, budget: float, img_size=224) -> dict:
    """The arena's one rule: ``{"embed_dim", "mlp_ratio", "macs", "params"}`` of ``mixer``'s entry at ``budget``
    GMACs for ``img_size`` inputs (see the module docstring). A budget no width can meet is a ``ValueError``."""
    _check_entry(mixer)
    if not isinstance(budget, (int, float)) or not budget > 0 or not math.isfinite(budget):
        raise ValueError(f"budget must be a positive number of GMACs, got {budget!r}")
    size = check_input_size(mixer, img_size)
    target = int(budget * 1e9)
    best = None
    reachable = []  # (low, high) MACs of each width over the allowed ratios, for the error message
    for m in range(1, 257):
        embed_dim = HEAD_DIM * m
        base = count_arena_macs(mixer, embed_dim, 1.0, size) - _mlp_macs(embed_dim, 1.0, size)
        low, high = base + _mlp_macs(embed_dim, R_MIN, size), base + _mlp_macs(embed_dim, R_MAX, size)
        reachable.append((low, high))
        if low > target * 1.02:
            break
        ratio = _solve_ratio(base, embed_dim, target, size)
        if not R_MIN <= ratio <= R_MAX:
            continue
        score = abs(math.log(ratio / 4.0))
        if best is None or score < best[0]:
            best = (score, embed_dim, ratio, base + _mlp_macs(embed_dim, ratio, size))
        elif score > best[0]:
            break  # r falls as the width grows: past the closest to 4
    if best is None:
        ranges = ", ".join(f"{lo / 1e9:.3g}-{hi / 1e9:.3g}" for lo, hi in reachable[:4])
        raise ValueError(
            f"budget: {budget:g} GMACs at {size[0]}x{size[1]} cannot be met by {mixer}: widths in multiples of "
            f"{HEAD_DIM} with MLP ratios in [{R_MIN:g}, {R_MAX:g}] reach {ranges} GMACs"
        )
    _, embed_dim, ratio, macs = best
    return dict(
        embed_dim=embed_dim, mlp_ratio=ratio, macs=macs, params=count_arena_params(mixer, embed_dim, ratio, size)
    )


# --- timm registration ---------------------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj.0",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2204.07143,arXiv:2209.15001,arXiv:2205.13213,arXiv:2201.02767,arXiv:2204.03645,"
        "arXiv:2312.08874,arXiv:2203.11926,arXiv:2303.13755,arXiv:2010.11929,arXiv:2103.14030",
        "paper_name": "attnzoo arena",
        "notes": "no released weights: the arena trains its entries itself (attnzoo arena)",
        "origin_url": "https://github.com/attnzoo/attnzoo",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"arena_tiny": _cfg()})


def _create(variant: str, pretrained: bool = False, **kwargs) -> ArenaNet:
    return build_hierarchical(ArenaNet, variant, pretrained, None, **kwargs)


@register_model
def arena_tiny(pretrained: bool = False, budget: float | None = None, **kwargs) -> ArenaNet:
    """The arena backbone (depths 2, 2, 6, 2) with ``mixer``'s entry (default ``neighborhood``); ``budget`` (GMACs
    at ``img_size``, default 224) sizes it by the arena's rule, else ``embed_dim`` (64) and ``mlp_ratio`` (4)."""
    model_args = dict(mixer="neighborhood", embed_dim=64, mlp_ratio=4.0, depths=DEPTHS)
    if budget is not None:
        if "embed_dim" in kwargs or "mlp_ratio" in kwargs:
            raise ValueError("budget: give either a budget or embed_dim/mlp_ratio, not both")
        solved = solve_budget(kwargs.get("mixer", "neighborhood"), budget, kwargs.get("img_size", 224))
        model_args.update(embed_dim=solved["embed_dim"], mlp_ratio=solved["mlp_ratio"])
    return _create("arena_tiny", pretrained, **dict(model_args, **kwargs))
