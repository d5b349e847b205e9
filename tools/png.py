"""A matplotlib figure written to the file a user named (``attnzoo viz``, ``attnzoo bench plot``): PNG, SVG or PDF.

The path is checked before any drawing (a run may take minutes), the format is the path's suffix (each command says
which suffixes it takes), the file appears whole or not at all, and an existing file is replaced only with
``force``, even one created while the figure was drawn. Each command passes its own one-line error class, which its
CLI prints as a parser error. (The module keeps its first name, ``png``: ``bench plot`` writes PNGs only.)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FORMATS", "check_out", "figure_format", "write_figure", "write_png"]

FORMATS = ("png", "svg", "pdf")  # what matplotlib's Agg, SVG and PDF backends write without a display
# no creation date in vector files: the same figure gives the same bytes (README pictures regenerate without a diff)
_NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def _suffixes(formats: Sequence[str]) -> str:
    names = [f".{f}" for f in formats]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"


def figure_format(out: str | Path, formats: Sequence[str], error: type[Exception]) -> str:
    """The format ``out``'s suffix names (``"png"``, ``"svg"``, ``"pdf"``), one of ``formats``; else ``error``."""
    out = Path(out)
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f"ends in {out.suffix!r}" if out.suffix else "has no suffix"
        kind = "the picture is a PNG" if tuple(formats) == ("png",) else "the suffix picks the format"
        raise error(f"--out: {out} {what}; give a {_suffixes(formats)} path ({kind})")
    return suffix


def check_out(
    out: str | Path,
    force: bool,
    error: type[Exception],
    example: str,
    png_suffix: bool = False,
    formats: Sequence[str] | None = None,
) -> Path:
    """``out`` as a path the figure may be written to: not a folder (``example`` names a file in it), ending in one
    of ``formats`` when given (``png_suffix``: ``.png`` only), and not an existing file unless ``force``."""
    out = Path(out)
    if out.is_dir():
        raise error(f"--out: {out} is a folder; give a file path such as {out / example}")
    if png_suffix and out.suffix.lower() != ".png":
        raise error(f"--out: {out} is not a .png path (the picture is a PNG)")
    if formats is not None:
        figure_format(out, formats, error)
    if out.exists() and not force:
        raise error(f"--out: {out} exists; pass --force to overwrite it")
    return out


def write_figure(
    figure,
    out: str | Path,
    force: bool,
    dpi: int,
    error: type[Exception],
    example: str,
    formats: Sequence[str] = FORMATS,
) -> Path:
    """Save ``figure`` in the format of ``out``'s suffix (one of ``formats``) through a temporary file next to
    ``out``, then move it in: never over an existing file without ``force`` (arguments: :func:`check_out`)."""
    out = check_out(out, force, error, example, formats=formats)
    return _save(figure, out, force, dpi, error, example, figure_format(out, formats, error), {"formats": formats})


def write_png(
    figure, out: str | Path, force: bool, dpi: int, error: type[Exception], example: str, png_suffix: bool = False
) -> Path:
    """A PNG, whatever ``out``'s suffix unless ``png_suffix`` (``bench plot``'s writer; see :func:`write_figure`)."""
    out = check_out(out, force, error, example, png_suffix)
    return _save(figure, out, force, dpi, error, example, "png", {"png_suffix": png_suffix})


def _save(figure, out: Path, force: bool, dpi: int, error: type[Exception], example: str, fmt: str, checks) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            figure.savefig(handle, format=fmt, dpi=dpi, metadata=_NO_DATE.get(fmt))
        if force:
            os.replace(temporary, out)
        else:
            try:
                os.link(temporary, out)  # creates, never replaces
            except FileExistsError:
                raise error(f"--out: {out} exists; pass --force to overwrite it") from None
            except OSError:  # a file system without hard links
                check_out(out, force, error, example, **checks)
                os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
    return out
