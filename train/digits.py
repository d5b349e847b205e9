"""scikit-learn's handwritten digits as an ImageFolder tree: real labelled images that need no download.

``sklearn.datasets.load_digits`` ships 1,797 8x8 greyscale scans (UCI "Optical Recognition of Handwritten
Digits", 16 grey levels) inside the scikit-learn wheel. :func:`write_digits` writes them once as PNGs to
``root/{train,validation}/<digit>/<index>.png`` (a fixed stratified 80/20 split), so the demo and the tests
take exactly the ImageFolder path ImageNet takes (``make demo`` writes it first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .data import ImageFolderData

__all__ = ["DigitsData", "default_root", "write_digits"]

_MARKER = ".complete"


def default_root() -> Path:
    """``$ATTNZOO_CACHE/digits``, else ``$XDG_CACHE_HOME/attnzoo/digits``, else ``~/.cache/attnzoo/digits``."""
    if os.environ.get("ATTNZOO_CACHE"):
        return Path(os.environ["ATTNZOO_CACHE"]).expanduser() / "digits"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "attnzoo" / "digits"


def write_digits(root: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits as an ImageFolder tree under ``root`` (once; later calls return at once).

    The tree is built in a temporary sibling folder and renamed into place, so an interrupted write or two
    processes writing at once never leave a half-written tree behind.
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root).expanduser() if root is not None else default_root()
    if (root / _MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"root: {str(root)!r} exists, is not empty and is not a finished digits tree")
    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=digits.target)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    try:
        for split, chosen in (("train", train), ("validation", val)):
            for i in chosen:
                folder = tmp / split / str(digits.target[i])
                folder.mkdir(parents=True, exist_ok=True)
                pixels = np.round(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)  # 16 grey levels -> 8 bit
                Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")
        (tmp / _MARKER).write_text(f"{len(train)} train, {len(val)} validation images\n")
        if root.exists():
            root.rmdir()  # empty (checked above)
        try:
            tmp.rename(root)
        except OSError:
            if not (root / _MARKER).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class DigitsData(ImageFolderData):
    """The digits tree (written by ``prepare_data`` if missing) with digit-friendly defaults.

    Defaults differ from :class:`ImageFolderData` where digits differ from photos: no horizontal flip (a
    mirrored 2 is not a 2), no colour jitter (grey scans), milder crops, 32 px inputs (8x8 sources), mean/std
    0.5 and bicubic upsampling. Everything else is ImageFolderData's.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        input_size: int | list[int] | None = 32,
        interpolation: str | None = "bicubic",
        crop_pct: float | None = 1.0,
        mean: Sequence[float] | None = (0.5, 0.5, 0.5),
        std: Sequence[float] | None = (0.5, 0.5, 0.5),
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (0.8, 1.25),
        hflip: float = 0.0,
        color_jitter: float | None = None,
        **kwargs,
    ):
        super().__init__(
            root=root if root is not None else default_root(),
            num_classes=10,
            batch_size=batch_size,
            num_workers=num_workers,
            input_size=input_size,
            interpolation=interpolation,
            crop_pct=crop_pct,
            mean=list(mean) if mean is not None else None,
            std=list(std) if std is not None else None,
            scale=scale,
            ratio=ratio,
            hflip=hflip,
            color_jitter=color_jitter,
            **kwargs,
        )

    def prepare_data(self) -> None:
        write_digits(self.root)
