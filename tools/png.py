"""A matplotlib figure written to the PNG path a user named (``attnzoo viz``, ``attnzoo bench plot``).

The path is checked before any drawing (a run may take minutes), the file appears whole or not at all, and an
existing file is replaced only with ``force``, even one created while the figure was drawn. Each command passes
its own one-line error class, which its CLI prints as a parser error.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def check_out(out: str | Path, force: bool, error: type[Exception], example: str, png_suffix: bool = False) -> Path:
    """``out`` as a path the PNG may be written to: not a folder (``example`` names a file in it), ending in .png
    when ``png_suffix``, and not an existing file unless ``force``."""
    out = Path(out)
    if out.is_dir():
        raise error(f"--out: {out} is a folder; give a file path such as {out / example}")
    if png_suffix and out.suffix.lower() != ".png":
        raise error(f"--out: {out} is not a .png path (the picture is a PNG)")
    if out.exists() and not force:
        raise error(f"--out: {out} exists; pass --force to overwrite it")
    return out


def write_png(
    figure, out: str | Path, force: bool, dpi: int, error: type[Exception], example: str, png_suffix: bool = False
) -> Path:
    """Save through a temporary file next to ``out``, then move it in (arguments after ``dpi``: :func:`check_out`)."""
    out = check_out(out, force, error, example, png_suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            figure.savefig(handle, format="png", dpi=dpi)
        if force:
            os.replace(temporary, out)
        else:
            try:
                os.link(temporary, out)  # creates, never replaces
            except FileExistsError:
                raise error(f"--out: {out} exists; pass --force to overwrite it") from None
            except OSError:  # a file system without hard links
                check_out(out, force, error, example, png_suffix)
                os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return out
