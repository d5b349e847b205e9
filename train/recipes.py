"""The YAML recipes shipped in the wheel (``attnzoo.configs``), found by name: ``--config nat_tiny``.

A ``--config`` value that is an existing file is used as is. One that looks like a recipe name (``nat_tiny`` or
``classification/nat_tiny``: no ``.yaml`` suffix, at most one ``/`` after a recipe folder) is looked up among the
shipped recipes, so a run needs no checkout of the repository. Recipes refer to no other files (their relative
``default_root_dir`` is relative to the working directory, as for any config), so a resolved recipe runs as is.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from importlib.resources import files
from pathlib import Path

__all__ = ["RecipeError", "describe_recipes", "list_recipes", "resolve_config", "resolve_config_args"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_CONFIG_FLAGS = ("-c", "--config")


class RecipeError(ValueError):
    """A ``--config`` value names no file and no shipped recipe."""


def _root() -> Path:
    """The recipes' folder. Installed wheels and editable installs both give a real folder, never a zip."""
    return Path(str(files("attnzoo.configs")))


def list_recipes() -> dict[str, Path]:
    """Every shipped recipe by its qualified name (``classification/nat_tiny``), sorted."""
    root = _root()
    found = {f"{path.parent.name}/{path.stem}": path for path in root.glob("*/*.yaml")}
    return dict(sorted(found.items()))


def _categories() -> set[str]:
    return {name.split("/")[0] for name in list_recipes()}


def looks_like_recipe_name(value: str) -> bool:
    """``nat_tiny`` or ``<recipe folder>/nat_tiny``; never a value with a suffix, ``~``, ``./`` or deeper paths."""
    if Path(value).suffix in (".yaml", ".yml", ".json"):
        return False
    parts = value.split("/")
    if not all(_NAME.fullmatch(part) for part in parts):
        return False
    return len(parts) == 1 or (len(parts) == 2 and parts[0] in _categories())


def resolve_config(value: str) -> str:
    """The file a ``--config`` value means: the value itself unless it is a recipe name and no such file exists.

    An unknown recipe name raises :class:`RecipeError` (one line, with close names).
    """
    if Path(value).expanduser().is_file() or not looks_like_recipe_name(value):
        return value
    recipes = list_recipes()
    if value in recipes:
        return str(recipes[value])
    matches = [name for name in recipes if name.split("/", 1)[1] == value]
    if len(matches) == 1:
        return str(recipes[matches[0]])
    if len(matches) > 1:
        raise RecipeError(f"--config: {value!r} names several recipes: {', '.join(matches)}; give one of them")
    stems = {name.split("/", 1)[1]: name for name in recipes}
    close = difflib.get_close_matches(value, [*recipes, *stems], n=6, cutoff=0.6)
    close = list(dict.fromkeys(stems.get(name, name) for name in close))
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise RecipeError(
        f"--config: no file or shipped recipe named {value!r}{hint} (`attnzoo-train recipes` lists the recipes)"
    )


def resolve_config_args(args: list[str]) -> list[str]:
    """``args`` with every ``--config``/``-c`` value resolved by :func:`resolve_config`."""
    out: list[str] = []
    expect_value = False
    for arg in args:
        if expect_value:
            out.append(resolve_config(arg))
            expect_value = False
        elif arg in _CONFIG_FLAGS:
            out.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


def _summary(path: Path, width: int = 100) -> str:
    """The recipe's first comment line (what it trains, on what), shortened to ``width`` characters."""
    with open(path) as f:
        first = f.readline().strip()
    text = first.lstrip("#").strip() if first.startswith("#") else ""
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def describe_recipes(pattern: str | None = None) -> list[str]:
    """One line per recipe whose name matches ``pattern`` (a glob, as ``attnzoo list`` takes; a plain word matches
    names that contain it): the name to pass to ``--config`` and its summary."""
    glob = "*" if pattern is None else pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    recipes = {
        n: p
        for n, p in list_recipes().items()
        if fnmatch.fnmatchcase(n, glob) or fnmatch.fnmatchcase(n.split("/")[-1], glob)
    }
    width = max((len(name) for name in recipes), default=0)
    return [f"{name:<{width}}  {_summary(path)}" for name, path in recipes.items()]
