"""Model-name lookup for the floors above the zoo (training configs, the ``attnzoo`` tools)."""

from __future__ import annotations

import difflib

import timm


def unknown_model_message(name: str, limit: int = 12) -> str | None:
    """Why ``name`` is not a timm model (attnzoo's included), with close names; ``None`` if it is one.

    Close names: timm's wildcard match ``*name*`` first (``nat`` -> ``nat_tiny``...), then spelling
    neighbours (``resnt18`` -> ``resnet18``).
    """
    if timm.is_model(name):
        return None
    close = timm.list_models(f"*{name}*")
    close += [m for m in difflib.get_close_matches(name, timm.list_models(), n=limit, cutoff=0.6) if m not in close]
    hint = f"; close matches: {', '.join(close[:limit])}" if close else "; see timm.list_models() for the names"
    return f"unknown model {name!r}{hint}"
