"""attnzoo: vision transformers built on efficient attention, registered in timm.

Layers, in dependency order: :mod:`attnzoo.kernels` (functional attention ops with backends),
:mod:`attnzoo.blocks` (the token mixers), ``attnzoo`` itself (model families registered in timm)
and :mod:`attnzoo.train` (Lightning tasks and the ``attnzoo-train`` CLI).
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("attnzoo")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from ._official import from_official, load_official_state_dict, official_entrypoints
from . import nat  # noqa: E402,F401  (registers NAT and DiNAT in timm)

__all__ = ["__version__", "from_official", "load_official_state_dict", "official_entrypoints"]
