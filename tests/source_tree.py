"""A copy of the repository's source folders, for tests that build or install the project without writing into
the checkout."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "attnzoo_cli.py", "zoo", "blocks", "kernels", "train", "tools"]
SOURCES += ["configs"]


def copy_source_tree(into: Path) -> Path:
    """Copy what ``pip install`` reads (no tests, fixtures or caches) into ``into``; returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, into / name)
    return into
