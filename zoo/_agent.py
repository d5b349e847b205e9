"""What the three Agent Attention families (Agent-Swin, Agent-DeiT, Agent-PVT) share.

Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention", ECCV 2024 (arXiv 2312.08874); LeapLabTHU/Agent-Attention, ``agent_transformer/``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks.agent import AgentAttention

# dynamic_size resizes the biases to each map's size (a Python int under FX): keep the module a leaf
register_notrace_module(AgentAttention)

_URL = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # TsinghuaCloud links of agent_transformer/README.md


def agent_cfg(file_id: str, input_size: int = 224, crop_pct: float = 0.875, **kwargs) -> dict:
    # test transform (data/build.py): bicubic resize of the image to a (256/224 * size) square, centre crop
    # (TEST.CROP True) -> timm's 'squash' mode with crop_pct 0.875; the Swin 288/384 configs set TEST.CROP
    # False -> 1.0. The links are share pages ending in '/?dl=1' (no file name): attnzoo.weights names the cache file.
    return {
        "url": _URL.format(file_id),
        "num_classes": 1000,
        "input_size": (3, input_size, input_size),
        "fixed_input_size": True,
        "crop_pct": crop_pct,
        "crop_mode": "squash",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "unknown (no license stated by the authors)",
        "paper_ids": "arXiv:2312.08874",
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        **kwargs,
    }


def refuse_resize(model: nn.Module) -> None:
    """``set_input_size`` of the agent models: their biases are sized by each stage's map at the built size."""
    raise NotImplementedError(
        f"{type(model).__name__}: the agent biases are sized by each stage's map at the built input size; build "
        "the model for the new size instead (timm.create_model(..., img_size=...), or an authors' checkpoint of "
        "that size through attnzoo.from_official)"
    )


def agent_blocks_per_stage(attn_type: str, depths: Sequence[int]) -> list[int]:
    """How many leading blocks of each stage are agent blocks, from the authors' ``attn_type`` string.

    One letter per stage (``A`` all, ``B`` none, ``M`` the first ``k``), then ``k`` for ``M``: 'AAMB2'.
    """
    num = len(depths)
    letters, suffix = str(attn_type)[:num], str(attn_type)[num:]
    valid = len(letters) == num and set(letters) <= set("ABM") and ("M" in letters) == bool(suffix)
    if not valid or (suffix and not suffix.isdigit()):
        raise ValueError(
            f"attn_type must be one of A/B/M per stage ({num} stages), followed by the agent block count when "
            f"an M is present (e.g. 'AAMB2'); got {attn_type!r}"
        )
    return [d if c == "A" else 0 if c == "B" else min(int(suffix), d) for c, d in zip(letters, depths, strict=True)]


def per_stage_grid(agent_grid, num: int) -> list[tuple[int, int] | None]:
    """``agent_grid`` per stage (an int side, an ``(h, w)`` pair or ``None`` each), or ``None`` for all stages."""
    if agent_grid is None:
        return [None] * num
    grids = [None if g is None else (int(g), int(g)) if isinstance(g, int) else tuple(g) for g in agent_grid]
    if len(grids) != num:
        raise ValueError(f"agent_grid must give one grid (or null) per stage ({num}), got {agent_grid}")
    return grids


_AXIS_BIASES = ("ah_bias", "aw_bias", "ha_bias", "wa_bias")


def resize_to_model(state_dict: dict, model: nn.Module) -> dict:
    """Fit the tensors that are sized by the input size to ``model``'s size (fine-tuning at another resolution).

    Agent axis biases are linearly interpolated along the window axis, PVT position tables bilinearly on
    their grid (as the model does at run time); other shape mismatches are left for ``load_state_dict`` to
    refuse. The authors release weights per size only; this interpolation is ours (dense fine-tuning).
    """
    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        target = own.get(key)
        if target is None or target.shape == value.shape or value.dim() != target.dim():
            continue
        name = key.rsplit(".", 1)[-1]
        if name in _AXIS_BIASES:
            for dim in [d for d in range(value.dim()) if value.shape[d] != target.shape[d]]:
                moved = value.movedim(dim, -1)
                resized = F.interpolate(
                    moved.reshape(-1, 1, moved.shape[-1]).float(),
                    size=target.shape[dim],
                    mode="linear",
                    align_corners=False,
                )
                value = resized.to(value.dtype).reshape(*moved.shape[:-1], -1).movedim(-1, dim)
            out[key] = value
        elif name == "pos_embed" and value.shape[-1] == target.shape[-1]:
            side = math.isqrt(value.shape[1])
            grid = model.get_submodule(key.rsplit(".", 1)[0]).grid_size
            if side * side == value.shape[1]:
                table = value.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
                table = F.interpolate(table, size=tuple(grid), mode="bilinear", align_corners=False)
                out[key] = table.permute(0, 2, 3, 1).reshape(1, -1, value.shape[-1]).to(value.dtype)
    return out
