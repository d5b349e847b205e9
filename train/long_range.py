"""The arena's long-range task as a data module: :func:`attnzoo.train.synthetic.write_long_range` on first use."""

from __future__ import annotations

import os
from pathlib import Path

from .data import ImageFolderData
from .synthetic import write_long_range

__all__ = ["LongRangeData", "default_long_range_root"]


def default_long_range_root(size: int = 64) -> Path:
    """``<attnzoo cache>/long-range-<size>`` (the cache folder of :func:`attnzoo.train.digits.default_root`)."""
    if os.environ.get("ATTNZOO_CACHE"):
        cache = Path(os.environ["ATTNZOO_CACHE"]).expanduser()
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnzoo"
    return cache / f"long-range-{size}"


class LongRangeData(ImageFolderData):
    """Two distant squares; is their colour the same? (written by ``prepare_data`` if missing).

    No flips or crops that could cut a square off: resize only (``scale`` (1, 1)), mean/std 0.5.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        image_size: int = 64,
        num_train: int = 2000,
        num_val: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        input_size: int | list[int] | None = None,
        **kwargs,
    ):
        self.image_size, self.num_train, self.num_val = image_size, num_train, num_val
        # rebound here: Lightning's save_hyperparameters reads this frame's value of input_size too
        input_size = input_size if input_size is not None else image_size
        kwargs = {
            "interpolation": "bicubic",
            "crop_pct": 1.0,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "scale": (1.0, 1.0),
            "ratio": (1.0, 1.0),
            "hflip": 0.0,
            "color_jitter": None,
            **kwargs,
        }
        super().__init__(
            root=root if root is not None else default_long_range_root(image_size),
            num_classes=2,
            batch_size=batch_size,
            num_workers=num_workers,
            input_size=input_size,
            **kwargs,
        )

    def prepare_data(self) -> None:
        write_long_range(self.root, self.num_train, self.num_val, self.image_size)
