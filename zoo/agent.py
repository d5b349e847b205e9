"""Agent-Swin, Agent-DeiT and Agent-PVT: agent attention in Swin, DeiT and PVT v1, registered in timm.

Han, Ye, Han, Xia, Pan, Wan, Song, Huang. "Agent Attention: On the Integration of Softmax and Linear
Attention", ECCV 2024 (arXiv 2312.08874). Architecture facts and checkpoints: LeapLabTHU/Agent-Attention,
``agent_transformer/models/{agent_swin,agent_deit,agent_pvt}.py`` and ``agent_transformer/cfgs/*.yaml``.
The repository states no license, and neither do its weights: the pretrained configs say so.

The authors modified copies of Swin, DeiT and PVT v1 in which some blocks' attention is
:class:`~attnzoo.blocks.agent.AgentAttention`. Here the hosts are timm's own classes where timm has them,
so everything outside the attention (stems, merging, norms, heads, ``features_only``, pretrained loading)
is timm's: :func:`attnzoo.graft` swaps the chosen blocks' attention for our mixer (keys
``...attn.mixer.<param>``). PVT v1 is not in timm; :mod:`attnzoo.pvt` supplies the minimal backbone.

What makes the released models what they are (``cfgs/*.yaml``; their class defaults differ, see
:func:`swin_config_to_kwargs`):

* Agent-Swin's ``WINDOW_SIZE`` is 56 at 224 (72 at 288, 96 at 384), i.e. at least the stage-1 map, so
  every agent block attends over its whole stage map (no windows, no shift): agent attention is global.
  The plain Swin blocks kept in the late stages ("B" in ``attn_type``) use ``max(7, window // 8)``
  windows, shifted by half on odd blocks and masked as usual. ``attn_type`` has one letter per stage:
  ``A`` all agent, ``B`` all Swin, ``M`` the first ``k`` blocks agent where ``k`` follows the letters
  (``AAMB2``: stage 3 = 2 agent + 16 Swin blocks).
* Agent-DeiT keeps the class token (agents are pooled from patch tokens only, ``ac_bias``/``ca_bias``
  connect the class token); DeiT-B has agent attention in its first 4 blocks only.
* Agent-PVT is PVT v1 without the class token and without spatial reduction in its agent attention
  (``agent_sr_ratios`` '1111'), every block agent ('AAAA').

The agent biases are sized by the map each module sees, so a model serves the input size it was
built for (``fixed_input_size``; the 288/384/256/448 fine-tunes are separate variants, as timm does for
Swin at 384).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model, swin_transformer
from timm.models import vision_transformer as vit
from timm.models._features_fx import register_notrace_module
from torch import nn

from attnzoo.blocks.agent import AgentAttention

from ._hierarchical import build_hierarchical
from ._official import OfficialFormat, check_config_keys, register_official, unwrap_state_dict
from .graft import check_nonempty_batch, graft
from .pvt import PatchEmbedPos, PyramidVisionTransformerV1, stage_grid_sizes
from .weights import build_model_with_cfg

__all__ = ["AgentPVT", "AgentSwinTransformer", "AgentVisionTransformer"]

# shape checks (map size vs the biases' window) are Python control flow: FX keeps these modules as leaves
register_notrace_module(AgentAttention)
register_notrace_module(PatchEmbedPos)


def _fixed_size(model: nn.Module) -> None:
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


def _per_stage(name: str, values, num: int) -> list[int]:
    values = [values] * num if isinstance(values, int) else [int(v) for v in values]
    if len(values) != num:
        raise ValueError(f"{name} must give one value per stage ({num}), got {values}")
    return values


def _per_stage_grid(agent_grid, num: int) -> list[tuple[int, int] | None]:
    """``agent_grid`` per stage (an int side, an ``(h, w)`` pair or ``None`` each), or ``None`` for all stages."""
    if agent_grid is None:
        return [None] * num
    grids = [None if g is None else (int(g), int(g)) if isinstance(g, int) else tuple(g) for g in agent_grid]
    if len(grids) != num:
        raise ValueError(f"agent_grid must give one grid (or null) per stage ({num}), got {agent_grid}")
    return grids


def _into_mixers(state_dict: dict, model: nn.Module) -> dict:
    """``<block>.attn.<param>`` -> ``<block>.attn.mixer.<param>`` for the blocks grafted with agent attention."""
    grafted = {
        name.removesuffix(".mixer")
        for name, module in model.named_modules()
        if isinstance(module, AgentAttention) and name.endswith(".attn.mixer")
    }
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition(".attn.")
        if sep and head + ".attn" in grafted:
            key = f"{head}.attn.mixer.{tail}"
        out[key] = value
    return out


_AXIS_BIASES = ("ah_bias", "aw_bias", "ha_bias", "wa_bias")


def resize_to_model(state_dict: dict, model: nn.Module) -> dict:
    """Fit the tensors that are sized by the input size to ``model``'s size (fine-tuning at another resolution).

    The agent axis biases (one entry per window row/column) are linearly interpolated along the window axis;
    PVT position tables are bilinearly resized on their grid, as the model itself does at run time. Anything
    else with another shape is left for ``load_state_dict`` to refuse. The authors only release weights per
    size (their 224 and 384 checkpoints differ); this interpolation is ours, for dense fine-tuning at e.g. 512.
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


# --- Agent-Swin -----------------------------------------------------------------------------------
def _set_block_window(block: swin_transformer.SwinTransformerBlock, window: int) -> None:
    """Give a timm Swin block another window, clipped to its map as timm and the authors do.

    A window covering the map drops the shift (and so the mask); a smaller one keeps the block's
    half-window shift on odd blocks. Done before grafting, so timm's window attention is never built
    for the large agent windows (its 56x56 window would need a 3136x3136 index buffer).
    """
    resolution = block.input_resolution
    size = tuple(min(r, w) for r, w in zip(resolution, to_2tuple(window), strict=True))
    shifted = any(block.target_shift_size)
    block.window_size = size
    block.shift_size = tuple(0 if r <= w or not shifted else w // 2 for r, w in zip(resolution, size, strict=True))
    block.window_area = size[0] * size[1]
    block.init_non_persistent_buffers()  # the shift mask for the new window (None without shift)


class _GlobalAgentBlock(swin_transformer.SwinTransformerBlock):
    """A Swin block whose agent attention sees the whole map at any size: no window partition, no shift.

    At the size the model was built for, the window already covers the map (one window, no shift), so this is
    the same computation; at other sizes it is the authors' dense backbones' global agent attention. Existing
    timm blocks are switched to this class in place (their parameters and buffers stay as they are).
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn.mixer(x)  # self.attn is graft's WindowMixer adapter; its mixer takes (B, H, W, C)


class AgentSwinTransformer(swin_transformer.SwinTransformer):
    """timm's Swin with agent attention in the blocks ``attn_type`` names (the authors' ``AgentSwinTransformer``).

    Args (beyond timm's ``SwinTransformer``):
        agent_num: agent tokens per stage (a perfect square each).
        attn_type: the authors' per-stage string, e.g. 'AAAB' or 'AAMB2' (see :func:`agent_blocks_per_stage`).
        agent_window_size: the agent blocks' window (the authors' ``window_size``), clipped to each stage's map;
            at least the first stage's map means global agent attention, as released.
        window_size: timm's, the window of the plain Swin blocks (the authors' ``max(7, window_size // 8)``).
        dynamic_img_size: timm's (any input size; the plain Swin blocks build their shift masks per call). Agent
            blocks that are global at ``img_size`` stay global at every size, their biases resized to the map,
            as in the authors' detection/segmentation backbones.
        agent_grid: per stage, the grid the agents are pooled to (the authors' ``downstream_agent_shape``, e.g.
            ``[9, 12, 14, 7]`` for their Swin-T dense models); ``None``: ``sqrt(agent_num)`` squared, as trained.
    The shift mask is not applied in agent blocks, as in the authors' code.
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AAAB",
        agent_window_size: int = 56,
        agent_grid: Sequence[int | Sequence[int] | None] | None = None,
        dynamic_img_size: bool = False,
        depths: Sequence[int] = (2, 2, 6, 2),
        window_size: int = 7,
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(
            depths=depths,
            window_size=window_size,
            qkv_bias=qkv_bias,
            attn_drop_rate=attn_drop_rate,
            proj_drop_rate=proj_drop_rate,
            dynamic_img_size=dynamic_img_size,
            **kwargs,
        )
        counts = agent_blocks_per_stage(attn_type, depths)
        agent_num = _per_stage("agent_num", agent_num, len(depths))
        grids = _per_stage_grid(agent_grid, len(depths))
        for index, (stage, count) in enumerate(zip(self.layers, counts, strict=True)):
            if not count:
                continue
            for block in stage.blocks[:count]:
                _set_block_window(block, agent_window_size)
            global_blocks = [tuple(b.window_size) == tuple(b.input_resolution) for b in stage.blocks[:count]]
            graft(
                self,
                "agent",
                stages=index,
                blocks=range(count),
                agent_num=agent_num[index],
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
                dynamic_size=dynamic_img_size,
                agent_grid=grids[index],
            )
            if dynamic_img_size:
                for block, is_global in zip(stage.blocks[:count], global_blocks, strict=True):
                    if is_global:
                        block.__class__ = _GlobalAgentBlock

    def set_input_size(self, *args, **kwargs) -> None:
        _fixed_size(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_nonempty_batch(x)
        return super().forward_features(x)


def swin_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-Swin state dict -> ours.

    timm's Swin converter handles the official Swin layout (``layers.i.downsample`` at the end of stage
    ``i`` -> start of ``i + 1``, ``head`` -> ``head.fc``, buffers dropped, bias tables resized); then the
    agent blocks' ``attn.*`` move into ``attn.mixer.*``; size-dependent biases fit the model's input size.
    """
    converted = _into_mixers(swin_transformer.checkpoint_filter_fn(unwrap_state_dict(state_dict), model), model)
    return resize_to_model(converted, model)


# The authors' AgentSwinTransformer(...) keywords and their class defaults (agent_swin.py).
_SWIN_DEFAULTS = dict(
    img_size=224,
    patch_size=4,
    in_chans=3,
    num_classes=1000,
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    mlp_ratio=4.0,
    qkv_bias=True,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.1,
    ape=False,
    patch_norm=True,
    use_checkpoint=False,
    agent_num=[9, 16, 49, 49],
    attn_type="BBBB",
)


def swin_config_to_kwargs(config: dict) -> dict:
    """The authors' ``AgentSwinTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    Their class defaults (``window_size=7``, ``attn_type='BBBB'``) are not the released models: the yaml
    configs set 56 and 'AAAB'/'AABB'/'AAMB2' (issue #31), so a config should give both. Their
    ``window_size`` becomes our ``agent_window_size`` and ``max(7, window_size // 8)`` timm's window;
    their ``drop_rate`` (dropout inside blocks) becomes timm's ``proj_drop_rate``; ``use_checkpoint``
    only saves memory. ``ape=True``, ``patch_norm=False`` and a ``qk_scale`` for plain Swin blocks
    (agent blocks ignore it) build nothing released and are refused.
    """
    check_config_keys("Agent-Swin", config, _SWIN_DEFAULTS)
    cfg = {**_SWIN_DEFAULTS, **config}
    if cfg["ape"] or not cfg["patch_norm"]:
        raise ValueError("Agent-Swin: only ape=False and patch_norm=True (every released model) are supported")
    counts = agent_blocks_per_stage(cfg["attn_type"], cfg["depths"])
    if cfg["qk_scale"] is not None and counts != list(cfg["depths"]):
        raise ValueError("Agent-Swin: qk_scale is only supported as None (timm's window attention has no override)")
    window = int(cfg["window_size"])
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"],
        depths=tuple(cfg["depths"]),
        num_heads=tuple(cfg["num_heads"]),
        window_size=max(7, window // 8),
        agent_window_size=window,
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=tuple(int(n) for n in cfg["agent_num"]),
        attn_type=cfg["attn_type"],
    )


# --- Agent-DeiT -----------------------------------------------------------------------------------
class AgentVisionTransformer(vit.VisionTransformer):
    """timm's ViT/DeiT with agent attention in its first ``agent_layer`` blocks (the authors' ``agent_deit``).

    Args (beyond timm's ``VisionTransformer``):
        agent_num: agent tokens, one int for all agent blocks or one per agent block.
        agent_layer: number of leading agent blocks (``None``: all).
    Each agent block's window is the patch grid, with the class token as prefix.
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = 49,
        agent_layer: int | None = None,
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(qkv_bias=qkv_bias, attn_drop_rate=attn_drop_rate, proj_drop_rate=proj_drop_rate, **kwargs)
        depth = len(self.blocks)
        agent_layer = depth if agent_layer is None else agent_layer
        if not 0 <= agent_layer <= depth:
            raise ValueError(f"agent_layer must lie in [0, depth={depth}], got {agent_layer}")
        per_block = [agent_num] * agent_layer if isinstance(agent_num, int) else [int(n) for n in agent_num]
        if len(per_block) != agent_layer:
            raise ValueError(f"agent_num must be an int or one value per agent block ({agent_layer}), got {agent_num}")
        for value in dict.fromkeys(per_block):
            graft(
                self,
                "agent",
                blocks=[i for i, n in enumerate(per_block) if n == value],
                agent_num=value,
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
            )

    def set_input_size(self, *args, **kwargs) -> None:
        _fixed_size(self)


def deit_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-DeiT state dict -> ours: timm's ViT converter, then agent ``attn.*`` -> ``attn.mixer.*``."""
    return _into_mixers(vit.checkpoint_filter_fn(unwrap_state_dict(state_dict), model), model)


# The authors' agent_deit.VisionTransformer(...) keywords and their class defaults.
_DEIT_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    qkv_bias=True,
    representation_size=None,
    distilled=False,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
    weight_init="",
    agent_num=[49, 49, 49, 49],
    agent_layer=-1,
)
_DEIT_STAGE_OF_PAIR = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}  # agent_deit.py: agent_num[stage_num[block // 2]]


def deit_config_to_kwargs(config: dict) -> dict:
    """The authors' ``agent_deit.VisionTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    ``agent_layer <= 0`` means all blocks; block ``i`` gets ``agent_num[{0,1,2,2,2,3}[i // 2]]`` as in
    their code (which thus supports at most 12 agent blocks). Their ``drop_rate`` (position and in-block
    dropout) becomes timm's ``pos_drop_rate``/``proj_drop_rate``; ``weight_init`` only changes the init.
    A representation layer or distillation token is not part of any released Agent-DeiT and is refused.
    """
    check_config_keys("Agent-DeiT", config, _DEIT_DEFAULTS)
    cfg = {**_DEIT_DEFAULTS, **config}
    if cfg["representation_size"] is not None or cfg["distilled"]:
        raise ValueError(
            "Agent-DeiT: representation_size and distilled are not supported (no released model uses them)"
        )
    depth = cfg["depth"]
    agent_layer = min(cfg["agent_layer"] if cfg["agent_layer"] > 0 else depth, depth)
    if agent_layer > 2 * len(_DEIT_STAGE_OF_PAIR):
        raise ValueError(f"Agent-DeiT: the authors' code supports at most 12 agent blocks, got {agent_layer}")
    per_block = [int(cfg["agent_num"][_DEIT_STAGE_OF_PAIR[i // 2]]) for i in range(agent_layer)]
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["embed_dim"],
        depth=depth,
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=per_block[0] if len(set(per_block)) == 1 else tuple(per_block),
        agent_layer=len(per_block),
    )


# --- Agent-PVT ------------------------------------------------------------------------------------
class AgentPVT(PyramidVisionTransformerV1):
    """PVT v1 with agent attention in every block (the authors' Agent-PVT, ``attn_type`` 'AAAA', sr '1111').

    ``agent_num`` gives the agents per stage; each stage's agent window is its whole map at ``img_size``.
    The authors' separate ``q``/``kv`` projections are one ``qkv`` here (the converter concatenates them).
    ``dynamic_img_size=True`` accepts any input size (agent biases and position tables resized to each map, as
    the authors' dense backbones do); ``agent_grid`` per stage pools the agents to a larger grid (their
    ``downstream_agent_shape``, e.g. ``[12, 16, 28, 28]``), see :class:`~attnzoo.blocks.AgentAttention`.
    """

    def __init__(
        self,
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        agent_grid: Sequence[int | Sequence[int] | None] | None = None,
        dynamic_img_size: bool = False,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        qkv_bias: bool = True,
        attn_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        **kwargs,
    ):
        agent_num = _per_stage("agent_num", agent_num, len(depths))
        grids = stage_grid_sizes(img_size, patch_size, len(depths))
        agent_grids = _per_stage_grid(agent_grid, len(depths))
        mixer_kwargs = [
            dict(
                agent_num=n,
                window_size=g,
                qkv_bias=qkv_bias,
                attn_drop=attn_drop_rate,
                proj_drop=proj_drop_rate,
                dynamic_size=dynamic_img_size,
                agent_grid=a,
            )
            for n, g, a in zip(agent_num, grids, agent_grids, strict=True)
        ]
        super().__init__(
            "agent",
            mixer_kwargs,
            img_size=img_size,
            patch_size=patch_size,
            depths=depths,
            proj_drop_rate=proj_drop_rate,
            **kwargs,
        )


_PVT_RENAMES = [  # (authors' key pattern, ours); first match wins
    (r"^patch_embed1\.", lambda m: "patch_embed."),
    (r"^pos_embed1$", lambda m: "patch_embed.pos_embed"),
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^pos_embed(\d)$", lambda m: f"stages.{int(m[1]) - 1}.downsample.pos_embed"),
    (r"^block(\d)\.(\d+)\.attn\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.mixer."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
]


def pvt_checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """The authors' Agent-PVT state dict -> ours: renames, ``q`` + ``kv`` (k|v) rows -> one ``qkv``, and the
    size-dependent tensors fit to the model's input size (:func:`resize_to_model`)."""
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        for pattern, replace in _PVT_RENAMES:
            key, hits = re.subn(pattern, replace, key)
            if hits:
                break
        out[key] = value
    for key in [k for k in out if re.search(r"\.mixer\.q\.(weight|bias)$", k)]:
        kv_key = key.replace(".mixer.q.", ".mixer.kv.")
        out[key.replace(".mixer.q.", ".mixer.qkv.")] = torch.cat([out.pop(key), out.pop(kv_key)], dim=0)
    return resize_to_model(out, model)


# The authors' agent_pvt.PyramidVisionTransformer(...) keywords and their class defaults.
_PVT_DEFAULTS = dict(
    img_size=224,
    patch_size=16,
    in_chans=3,
    num_classes=1000,
    embed_dims=[64, 128, 256, 512],
    num_heads=[1, 2, 4, 8],
    mlp_ratios=[4, 4, 4, 4],
    qkv_bias=False,
    qk_scale=None,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
    depths=[3, 4, 6, 3],
    sr_ratios=[8, 4, 2, 1],
    agent_sr_ratios="1111",
    num_stages=4,
    agent_num=[9, 16, 49, 49],
    attn_type="AAAA",
)


def pvt_config_to_kwargs(config: dict) -> dict:
    """The authors' ``agent_pvt.PyramidVisionTransformer(...)`` keywords -> ours (their class defaults fill gaps).

    Their entrypoints (``agent_pvt_tiny`` ...) all pass ``norm_layer=partial(nn.LayerNorm, eps=1e-6)``, which
    is what this port builds. Only the released layout is supported: four stages, every block agent
    ('AAAA') with ``agent_sr_ratios`` '1111' (no spatial reduction), so ``sr_ratios`` (used by plain
    blocks only) has no effect; their agent attention ignores ``qk_scale``. Their ``drop_rate`` becomes
    ``pos_drop_rate``/``proj_drop_rate``.
    """
    check_config_keys("Agent-PVT", config, _PVT_DEFAULTS)
    cfg = {**_PVT_DEFAULTS, **config}
    attn_type = "AAAA" if cfg["attn_type"] is None else cfg["attn_type"]
    if cfg["num_stages"] != 4 or attn_type != "AAAA" or str(cfg["agent_sr_ratios"]) != "1111":
        raise ValueError(
            "Agent-PVT: only the released layout is supported (num_stages=4, attn_type='AAAA', "
            f"agent_sr_ratios='1111'); got {cfg['num_stages']}, {attn_type!r}, {cfg['agent_sr_ratios']!r}"
        )
    return dict(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["num_classes"],
        embed_dims=tuple(cfg["embed_dims"]),
        num_heads=tuple(cfg["num_heads"]),
        mlp_ratios=tuple(cfg["mlp_ratios"]),
        depths=tuple(cfg["depths"]),
        qkv_bias=cfg["qkv_bias"],
        drop_rate=0.0,
        pos_drop_rate=cfg["drop_rate"],
        proj_drop_rate=cfg["drop_rate"],
        attn_drop_rate=cfg["attn_drop_rate"],
        drop_path_rate=cfg["drop_path_rate"],
        agent_num=tuple(int(n) for n in cfg["agent_num"]),
    )


# --- variants -------------------------------------------------------------------------------------
_URL = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"  # TsinghuaCloud links of agent_transformer/README.md


def _cfg(file_id: str, input_size: int = 224, crop_pct: float = 0.875, **kwargs) -> dict:
    # test transform (data/build.py): bicubic resize of the image to a (256/224 * size) square, centre crop
    # (TEST.CROP True) -> timm's 'squash' mode with crop_pct 0.875; the Swin 288/384 configs set TEST.CROP
    # False -> 1.0. The links are share pages ending in '/?dl=1': their URL path has no file name, so timm's
    # download (torch.hub) cannot name the cached file; the note says how to load them.
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
        "notes": (
            "TsinghuaCloud share link without a file name: download it, then pass "
            "pretrained_cfg_overlay=dict(file=path) (the authors' {'model': state_dict} is unwrapped)",
        ),
        **kwargs,
    }


def _swin_cfg(file_id: str, input_size: int = 224, **kwargs) -> dict:
    return _cfg(file_id, input_size, pool_size=(input_size // 32,) * 2, classifier="head.fc", **kwargs)


def _pvt_cfg(file_id: str, input_size: int = 224, **kwargs) -> dict:
    return _cfg(file_id, input_size, pool_size=(input_size // 32,) * 2, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "agent_swin_tiny.in1k": _swin_cfg("a2ddc1190c224f768a41"),
        "agent_swin_small.in1k": _swin_cfg("f607172c9fea4d6e99bb"),
        "agent_swin_small_288.in1k": _swin_cfg("09760394e93b4046a25e", 288, crop_pct=1.0),
        "agent_swin_base.in1k": _swin_cfg("4fcd2d0114bb490483c3"),
        "agent_swin_base_384.in1k": _swin_cfg("bb84ee9058954706a557", 384, crop_pct=1.0),
        "agent_deit_tiny.in1k": _cfg("57e0904221824ee7b7af"),
        "agent_deit_small.in1k": _cfg("fdd43304372541db8ea7"),
        "agent_deit_small_448.in1k": _cfg("a228f86241c445f1969b", 448),
        "agent_deit_base.in1k": _cfg("5115f15fdd7e4ab58fbc"),
        "agent_pvt_tiny.in1k": _pvt_cfg("13fdf0e0a7c5498c934f"),
        "agent_pvt_small.in1k": _pvt_cfg("36b8be9a8863456685a3"),
        "agent_pvt_medium.in1k": _pvt_cfg("4d00ecacf18b45f9b88c"),
        "agent_pvt_medium_256.in1k": _pvt_cfg("654df734121643b19c52", 256),
        "agent_pvt_large.in1k": _pvt_cfg("040cfe0cfbbe4762ad09"),
    }
)

# Released architectures (cfgs/*.yaml with config.py defaults, build.py's entrypoint arguments).
_SWIN_ARCHS = {
    # name: (img_size, embed_dim, depths, heads, authors' window_size, attn_type, drop_path)
    "agent_swin_tiny": (224, 96, (2, 2, 6, 2), (3, 6, 12, 24), 56, "AAAB", 0.2),
    "agent_swin_small": (224, 96, (2, 2, 18, 2), (3, 6, 12, 24), 56, "AABB", 0.3),
    "agent_swin_small_288": (288, 96, (2, 2, 18, 2), (3, 6, 12, 24), 72, "AABB", 0.3),
    "agent_swin_base": (224, 128, (2, 2, 18, 2), (4, 8, 16, 32), 56, "AAMB2", 0.5),
    "agent_swin_base_384": (384, 128, (2, 2, 18, 2), (4, 8, 16, 32), 96, "AAMB2", 0.5),
}
_DEIT_ARCHS = {
    # name: (img_size, embed_dim, heads, agent_num, agent_layer, drop_path); all depth 12, patch 16
    "agent_deit_tiny": (224, 192, 3, 49, 12, 0.0),
    "agent_deit_small": (224, 384, 6, 49, 12, 0.1),
    "agent_deit_small_448": (448, 384, 6, 49, 12, 0.1),
    "agent_deit_base": (224, 768, 12, 81, 4, 0.3),
}
_PVT_ARCHS = {
    # name: (img_size, depths, drop_path); all dims (64, 128, 320, 512), heads (1, 2, 5, 8), mlp (8, 8, 4, 4)
    "agent_pvt_tiny": (224, (2, 2, 2, 2), 0.1),
    "agent_pvt_small": (224, (3, 4, 6, 3), 0.1),
    "agent_pvt_medium": (224, (3, 4, 18, 3), 0.3),
    "agent_pvt_medium_256": (256, (3, 4, 18, 3), 0.3),
    "agent_pvt_large": (224, (3, 8, 27, 3), 0.3),
}


def _create_swin(variant: str, pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    img_size, embed_dim, depths, heads, window, attn_type, drop_path = _SWIN_ARCHS[variant]
    model_args = dict(
        img_size=img_size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=max(7, window // 8),
        agent_window_size=window,
        attn_type=attn_type,
        agent_num=(9, 16, 49, 49),
        drop_path_rate=drop_path,
    )
    kwargs = dict(model_args, **kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(
        AgentSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=swin_checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _create_deit(variant: str, pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    img_size, embed_dim, heads, agent_num, agent_layer, drop_path = _DEIT_ARCHS[variant]
    model_args = dict(
        img_size=img_size,
        patch_size=16,
        embed_dim=embed_dim,
        depth=12,
        num_heads=heads,
        agent_num=agent_num,
        agent_layer=agent_layer,
        drop_path_rate=drop_path,
    )
    kwargs = dict(model_args, **kwargs)
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        AgentVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=deit_checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _create_pvt(variant: str, pretrained: bool = False, **kwargs) -> AgentPVT:
    img_size, depths, drop_path = _PVT_ARCHS[variant]
    model_args = dict(
        img_size=img_size,
        patch_size=4,
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=depths,
        agent_num=(9, 16, 49, 49),
        drop_path_rate=drop_path,
    )
    return build_hierarchical(AgentPVT, variant, pretrained, pvt_checkpoint_filter_fn, **dict(model_args, **kwargs))


@register_model
def agent_swin_tiny(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-T (AAAB, global agent attention in stages 1-3): 28.9M params, 4.5 GFLOPs, 82.6% top-1."""
    return _create_swin("agent_swin_tiny", pretrained, **kwargs)


@register_model
def agent_swin_small(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S (AABB): 49.7M params, 8.7 GFLOPs, 83.7% top-1."""
    return _create_swin("agent_swin_small", pretrained, **kwargs)


@register_model
def agent_swin_small_288(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S at 288 (window 72, Swin windows 9): 14.6 GFLOPs, 84.1% top-1."""
    return _create_swin("agent_swin_small_288", pretrained, **kwargs)


@register_model
def agent_swin_base(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B (AAMB2: stage 3 has 2 agent and 16 Swin blocks): 88.1M params, 15.4 GFLOPs, 84.0% top-1."""
    return _create_swin("agent_swin_base", pretrained, **kwargs)


@register_model
def agent_swin_base_384(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B at 384 (window 96, Swin windows 12): 46.3 GFLOPs, 84.9% top-1."""
    return _create_swin("agent_swin_base_384", pretrained, **kwargs)


@register_model
def agent_deit_tiny(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-T (12 agent blocks, 49 agents): 6.0M params, 1.2 GFLOPs, 74.9% top-1."""
    return _create_deit("agent_deit_tiny", pretrained, **kwargs)


@register_model
def agent_deit_small(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S (12 agent blocks, 49 agents): 22.7M params, 4.4 GFLOPs, 80.5% top-1."""
    return _create_deit("agent_deit_small", pretrained, **kwargs)


@register_model
def agent_deit_small_448(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S at 448 (28x28 patch grid): 23.1M params, 17.7 GFLOPs, 83.1% top-1."""
    return _create_deit("agent_deit_small_448", pretrained, **kwargs)


@register_model
def agent_deit_base(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-B (agent attention in blocks 1-4 only, 81 agents): 87.2M params, 17.6 GFLOPs, 82.0% top-1."""
    return _create_deit("agent_deit_base", pretrained, **kwargs)


@register_model
def agent_pvt_tiny(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-T: 11.6M params, 2.0 GFLOPs, 78.4% top-1."""
    return _create_pvt("agent_pvt_tiny", pretrained, **kwargs)


@register_model
def agent_pvt_small(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-S: 20.6M params, 4.0 GFLOPs, 82.2% top-1."""
    return _create_pvt("agent_pvt_small", pretrained, **kwargs)


@register_model
def agent_pvt_medium(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M: 35.9M params, 7.0 GFLOPs, 83.4% top-1."""
    return _create_pvt("agent_pvt_medium", pretrained, **kwargs)


@register_model
def agent_pvt_medium_256(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M at 256: 36.1M params, 9.2 GFLOPs, 83.8% top-1."""
    return _create_pvt("agent_pvt_medium_256", pretrained, **kwargs)


@register_model
def agent_pvt_large(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-L: 48.7M params, 10.4 GFLOPs, 83.7% top-1."""
    return _create_pvt("agent_pvt_large", pretrained, **kwargs)


OFFICIAL_SWIN = register_official(
    OfficialFormat(
        family="Agent-Swin",
        entrypoints=tuple(_SWIN_ARCHS),
        config_to_kwargs=swin_config_to_kwargs,
        checkpoint_filter_fn=swin_checkpoint_filter_fn,
    )
)
OFFICIAL_DEIT = register_official(
    OfficialFormat(
        family="Agent-DeiT",
        entrypoints=tuple(_DEIT_ARCHS),
        config_to_kwargs=deit_config_to_kwargs,
        checkpoint_filter_fn=deit_checkpoint_filter_fn,
    )
)
OFFICIAL_PVT = register_official(
    OfficialFormat(
        family="Agent-PVT",
        entrypoints=tuple(_PVT_ARCHS),
        config_to_kwargs=pvt_config_to_kwargs,
        checkpoint_filter_fn=pvt_checkpoint_filter_fn,
    )
)
