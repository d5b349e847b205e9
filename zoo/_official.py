"""The authors' constructor arguments and state dicts -> attnzoo models, for every family.

Each family registers one :class:`OfficialFormat`: its entrypoints, how the authors' constructor keywords
become ours, and its ``checkpoint_filter_fn`` (which timm also calls when loading pretrained weights).
:func:`from_official` and :func:`load_official_state_dict` are the public API; the converter steps several
families share (:func:`rename_keys`, :func:`attn_into_mixer`, :func:`per_stage`) live here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import timm
import torch
from timm.models import model_entrypoint, split_model_name_tag
from torch import nn

# The DeiT-style VisionTransformer class defaults (facebookresearch/deit, timm 0.4 ``vision_transformer.py``)
# that both the Agent-DeiT and the Sparsifiner authors' model classes inherit; each adds its own keywords.
DEIT_AUTHOR_DEFAULTS = dict(
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
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
)


@dataclass(frozen=True)
class OfficialFormat:
    """How one family's released code maps onto ours.

    ``config_to_kwargs(config)`` turns the authors' constructor keywords (their names and their
    class defaults for whatever is missing) into a complete set of our model keywords, so that the
    variant's own defaults never leak in. ``checkpoint_filter_fn(state_dict, model)`` renames and
    reshapes the authors' keys into ours and drops buffers we regenerate.
    """

    family: str
    entrypoints: tuple[str, ...]
    config_to_kwargs: Callable[[dict], dict]
    checkpoint_filter_fn: Callable[[dict, nn.Module], dict]


_BY_ENTRYPOINT: dict[str, OfficialFormat] = {}


def register_official(fmt: OfficialFormat) -> OfficialFormat:
    for name in fmt.entrypoints:
        if name in _BY_ENTRYPOINT and _BY_ENTRYPOINT[name] is not fmt:
            raise ValueError(f"{name!r} already has an official format ({_BY_ENTRYPOINT[name].family})")
        _BY_ENTRYPOINT[name] = fmt
    return fmt


def official_entrypoints() -> list[str]:
    """Every registered model name that :func:`from_official` accepts."""
    return sorted(_BY_ENTRYPOINT)


def _format_for(entrypoint: str) -> OfficialFormat:
    if not isinstance(entrypoint, str):
        raise TypeError(f"entrypoint must be a model name (str), got {type(entrypoint).__name__}")
    name = entrypoint.split(".", 1)[0]  # "nat_tiny.in1k" -> "nat_tiny"
    try:
        return _BY_ENTRYPOINT[name]
    except KeyError:
        raise ValueError(
            f"entrypoint {entrypoint!r} has no authors' format; known: {', '.join(official_entrypoints())}"
        ) from None


def unwrap_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The bare state dict inside an authors' checkpoint (``{"model": sd}``, ``{"state_dict": sd}`` or sd).

    A ``module.`` prefix left by DataParallel/DDP training is removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict", "model_state"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    state_dict = dict(checkpoint)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def check_config_keys(family: str, config: Mapping, known: Iterable[str]) -> None:
    """Refuse authors' keywords we do not translate, instead of silently building another model."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"{family}: unsupported authors' constructor argument(s) {unknown}; known: {sorted(known)}")


# --- converter steps shared by the families ---------------------------------------------------------
def rename_keys(state_dict: Mapping, rules: Sequence[tuple[str, str | Callable]]) -> dict:
    """Each key through the first ``(pattern, replacement)`` rule whose regex matches it (``re.sub`` semantics)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, replace in rules:
            key, hits = re.subn(pattern, replace, key)
            if hits:
                break
        out[key] = value
    return out


def attn_into_mixer(state_dict: Mapping, model: nn.Module) -> dict:
    """``<block>.attn.<name>`` -> ``<block>.attn.mixer.<name>`` for the blocks :func:`attnzoo.graft` gave a mixer.

    Blocks of ``model`` without a grafted mixer keep their keys; keys already under ``attn.mixer.`` stay.
    """
    grafted = {name.removesuffix(".mixer") for name, _ in model.named_modules() if name.endswith(".attn.mixer")}
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.partition(".attn.")
        if sep and head + ".attn" in grafted and not tail.startswith("mixer."):
            key = f"{head}.attn.mixer.{tail}"
        out[key] = value
    return out


def per_stage(name: str, values, num: int) -> list:
    """``values`` as one value per stage: an int is repeated ``num`` times, a sequence must have ``num`` items."""
    values = [values] * num if isinstance(values, int) else list(values)
    if len(values) != num:
        raise ValueError(f"{name} must give one value per stage ({num}), got {values}")
    return values


def _check_depths(config: Mapping) -> None:
    """Stage depths must be positive integers: a zero or negative depth would build an empty stage silently."""
    for key in ("depths", "depth"):
        value = config.get(key)
        values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        bad = [d for d in values if isinstance(d, bool) or not isinstance(d, int) or d < 1]
        if bad:
            raise ValueError(f"config[{key!r}] must hold integers >= 1 (blocks per stage), got {value!r}")


def from_official(entrypoint: str, config: Mapping | None = None, state_dict: Mapping | None = None) -> nn.Module:
    """Build ``entrypoint`` for the authors' constructor arguments ``config`` and load their weights.

    ``config`` holds the keyword arguments of the authors' model class (their names; their class
    defaults apply to what is missing); ``None`` builds the registered variant as released.
    ``state_dict`` (optional) is an authors' checkpoint, loaded strictly through the family's
    converter. The model is returned in eval mode when weights were loaded.
    """
    fmt = _format_for(entrypoint)
    if config is None:
        model = timm.create_model(entrypoint, pretrained=False)
    else:
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping of the authors' constructor arguments, got {type(config)}")
        # the entrypoint itself, not timm.create_model, which drops None-valued keywords (e.g. layer_scale=None)
        name, tag = split_model_name_tag(entrypoint)
        _check_depths(config)
        kwargs = fmt.config_to_kwargs(dict(config))
        model = model_entrypoint(name)(pretrained=False, pretrained_cfg=tag or None, **kwargs)
    if state_dict is not None:
        load_official_state_dict(model, state_dict)
        model.eval()
    return model


def load_official_state_dict(model: nn.Module, state_dict: Mapping) -> nn.Module:
    """Load an authors' checkpoint into an attnzoo model through its family's converter (strict)."""
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if architecture is None:
        raise ValueError(
            "model has no pretrained_cfg['architecture']; build it with timm.create_model or attnzoo.from_official"
        )
    fmt = _format_for(architecture)
    converted = fmt.checkpoint_filter_fn(unwrap_state_dict(state_dict), model)
    model.load_state_dict(converted, strict=True)
    return model
