"""Reading images and label maps at their full bit depth, for every data module; bad files raise naming the file.

PIL's ``convert("RGB")`` clips a 16-bit grayscale image (mode ``I;16``) to 255, so it came out white, and
``np.array(label, dtype=np.uint8)`` wrapped 16-bit label values modulo 256 into other classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "list_images", "read_label_map", "read_rgb"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""The suffixes the detection and segmentation data modules read as images (any case)."""

# 16-bit unsigned grayscale as PIL opens it (PNG: I;16; TIFF: also the explicitly ordered ones)
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# class indices: 8-bit grayscale, palette indices (ADE-style PNGs are often 'P'), 16-bit and 32-bit integers
_LABEL_MODES = ("L", "P", "I", *_UINT16_MODES)


def uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    """``round(v / 257)``: 0 -> 0 and 65535 -> 255, so a 16-bit image keeps the white point of an 8-bit one."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def read_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, 16-bit grayscale scaled by 1/257 rather than clipped.

    Scaled, not kept at 16 bits: every transform and normalisation downstream (timm's, torchvision's
    ``ToDtype(scale=True)``) takes 8-bit images, and dividing by 257 maps the 16-bit range exactly onto the 8-bit
    one (PIL itself reads 16-bit RGB PNGs to 8 bits the same way). Modes without a known white level, 32-bit
    integers (``I``) and floats (``F``), are refused: any scale chosen for them would be a guess.
    """
    with Image.open(path) as image:
        if image.mode in _UINT16_MODES:
            return Image.fromarray(uint16_to_uint8(np.asarray(image))).convert("RGB")
        if image.mode.startswith(("I", "F")):
            raise ValueError(
                f"image {str(path)!r}: mode {image.mode} (32-bit or signed integer, or float pixels) has no known "
                "white level; save it as 8- or 16-bit"
            )
        return image.convert("RGB")


def read_label_map(path: str | Path) -> np.ndarray:
    """The class indices of the label map at ``path`` as int64, 16-bit values as they are (no wrap at 256).

    Colour (RGB) and float maps are refused: their pixels are not class indices.
    """
    with Image.open(path) as image:
        if image.mode not in _LABEL_MODES:
            raise ValueError(
                f"label map {str(path)!r}: mode {image.mode} is not a class-index image "
                "(expected 8- or 16-bit grayscale or palette)"
            )
        return np.asarray(image).astype(np.int64)


def list_images(folder: Path, what: str) -> list[Path]:
    """The images directly in ``folder`` (by :data:`IMAGE_EXTENSIONS`), sorted; none is an error naming ``what``."""
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not paths:
        raise ValueError(f"{what}: {str(folder)!r} holds no images")
    return paths
