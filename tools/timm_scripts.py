"""``attnzoo timm SCRIPT [ARGS...]``: timm's own scripts on attnzoo's models.

timm's ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` live in its git repository, not in
the pip package, and build models by name through ``timm.create_model``. attnzoo's names exist in timm only
after ``import attnzoo``, which the scripts never do (``train.py``'s ``--device-modules attnzoo`` is the one
exception). So the script runs here, in this interpreter, as ``__main__`` after that import, exactly as
``python SCRIPT ARGS...`` would run it otherwise.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ScriptNotFoundError", "run_script"]


class ScriptNotFoundError(FileNotFoundError):
    """The script file itself is missing (not a file the script then fails to open)."""


def run_script(script: str | Path, args: Sequence[str] = ()) -> None:
    """Run the Python file ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` after ``import attnzoo``.

    Its folder goes first on ``sys.path``, as for ``python script``; ``sys.argv`` and ``sys.path`` are restored
    afterwards. A ``SystemExit`` of the script propagates (its exit status is the command's).
    """
    path = Path(script)
    if not path.is_file():
        raise ScriptNotFoundError(
            f"no such script file: {path} (timm's train.py, validate.py, benchmark.py and inference.py are in a git "
            "checkout of https://github.com/huggingface/pytorch-image-models, not in the pip package)"
        )
    import attnzoo  # noqa: F401  (registers attnzoo's models in timm)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
