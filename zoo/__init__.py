"""attnzoo: vision transformers built on efficient attention, registered in timm.

Layers, in dependency order: :mod:`attnzoo.kernels` (functional attention ops with backends),
:mod:`attnzoo.blocks` (the token mixers), ``attnzoo`` itself (model families registered in timm)
and :mod:`attnzoo.train` (Lightning tasks and the ``attnzoo-train`` CLI).

Importing ``attnzoo`` registers every family in timm, so ``timm.create_model("nat_tiny")`` works.
"""

import fnmatch as _fnmatch
from importlib import metadata as _metadata

import timm as _timm

# each family registers its models in timm
from . import agent_deit, agent_pvt, agent_swin, arena, litv2, nat, quadtree, sparsifiner  # noqa: F401
from ._official import from_official, load_official_state_dict, official_entrypoints
from .graft import graft

try:
    __version__ = _metadata.version("attnzoo")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def list_models(pattern: str = "*") -> list[str]:
    """Names of the models attnzoo registers in timm (those matching the glob ``pattern``)."""
    return [
        name
        for name in _timm.list_models(pattern)
        if _timm.models.model_entrypoint(name).__module__.startswith(__name__ + ".") and _fnmatch.fnmatch(name, pattern)
    ]


__all__ = ["__version__", "from_official", "graft", "list_models", "load_official_state_dict", "official_entrypoints"]
