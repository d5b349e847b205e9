"""torch.hub entrypoints: one per model attnzoo registers in timm, each a thin ``timm.create_model`` call.

    import torch
    model = torch.hub.load("OWNER/attnzoo", "nat_tiny", pretrained=True)     # from GitHub
    model = torch.hub.load("/path/to/attnzoo", "nat_tiny", source="local")  # from a checkout
    torch.hub.list("OWNER/attnzoo")                                          # every model name

The entrypoints are generated from ``attnzoo.list_models()``, so a new family needs no edit here. A checkout that
torch.hub downloads is not installed, and its folders map into ``attnzoo`` only through ``pyproject.toml``
(``zoo/`` is ``attnzoo``): the finder below gives this checkout the same layout, unless ``attnzoo`` is already
imported (then that one is used) or installed from this very folder. Only public callables count as
entrypoints for torch.hub, hence the underscores on everything else.
"""

import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "timm"]

_ROOT = _Path(__file__).resolve().parent
_FOLDERS = {
    "attnzoo": "zoo",
    "attnzoo.blocks": "blocks",
    "attnzoo.kernels": "kernels",
    "attnzoo.train": "train",
    "attnzoo.tools": "tools",
    "attnzoo.configs": "configs",
}


class _Checkout:
    """A meta path finder: ``attnzoo`` and its floors from this checkout's folders (pyproject's package-dir)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        folder = _FOLDERS.get(fullname)
        if folder is None:
            return None
        init = _ROOT / folder / "__init__.py"
        return _util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _use_this_checkout() -> None:
    if "attnzoo" in _sys.modules:
        return
    spec = _util.find_spec("attnzoo")
    if spec is not None and spec.origin and _Path(spec.origin).resolve() == (_ROOT / "zoo" / "__init__.py"):
        return  # installed (editable) from here
    _sys.meta_path.insert(0, _Checkout)


_use_this_checkout()

import timm as _timm  # noqa: E402

import attnzoo as _attnzoo  # noqa: E402  (after the finder: registers every family in timm)


def _entrypoint(name: str):
    cfg = _timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}

    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    paper = cfg.get("paper_name")
    weights = f"{name}.{cfg['tag']}" if cfg.get("tag") else name
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"attnzoo's ``{name}``" + (f" ({paper}, {cfg.get('paper_ids')})" if paper else "") + ": "
        f"``timm.create_model({name!r}, pretrained=pretrained, **kwargs)``.\n\n"
        f"pretrained=True loads the released ``{weights}`` weights (license: {cfg.get('license', 'not stated')}); "
        "kwargs go to timm (num_classes, features_only, pretrained_cfg_overlay=dict(file=...), ...)."
    )
    return entrypoint


for _name in _attnzoo.list_models():
    globals()[_name] = _entrypoint(_name)
del _name
