"""Deterministic synthetic data for the detection and segmentation demos and tests (no download, no wheel data).

No wheel ships a real detection or segmentation set, so the demos draw coloured circles, squares and triangles
on a noisy background, written as PNG (byte-identical for the same arguments) with labels in the real data
sets' formats, so the demos run the same loaders as COCO and ADE20K:

* :func:`write_coco_shapes` — ``root/{train,val}/*.png`` + ``root/annotations/instances_{train,val}.json``
  (polygons, category ids 1..3; images vary in size). The polygon that fills a shape is the one written, so
  decoded masks agree with the pixels.
* :func:`write_ade_shapes` — ``root/images/{training,validation}/*.png`` + PNG label maps under
  ``root/annotations/``: 0 "unlabelled" (an outline around every shape, as ADE20K leaves borders), 1 the
  background, 2..4 the shapes; four classes after ``reduce_zero_label``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from faster_coco_eval.core import mask as coco_mask
from PIL import Image, ImageDraw

__all__ = ["LONG_RANGE_CHANCE", "SHAPES", "write_ade_shapes", "write_coco_shapes", "write_long_range"]

SHAPES = ("circle", "square", "triangle")
_COLOURS = {"circle": (230, 60, 60), "square": (60, 200, 60), "triangle": (70, 90, 240)}


def _check_counts(num_train: int, num_val: int, size: tuple[int, int], max_shapes: int) -> tuple[int, int]:
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if max_shapes < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    height, width = (int(s) for s in size)
    if min(height, width) < 32:
        raise ValueError(f"size must be at least 32 px per side, got {size}")
    return height, width


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The outline of a shape centred at ``(cx, cy)`` with half-size ``r`` (a 24-gon for a circle)."""
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx + r * math.cos(2 * math.pi * i / 24), cy + r * math.sin(2 * math.pi * i / 24)) for i in range(24)]


def _scene(rng: np.random.Generator, height: int, width: int, max_shapes: int):
    """A noisy background and up to ``max_shapes`` non-overlapping shapes: ``(image, [(kind, polygon)])``."""
    h = int(rng.integers(int(height * 0.8), height + 1))
    w = int(rng.integers(int(width * 0.8), width + 1))
    base = rng.integers(20, 90, size=3)
    pixels = np.clip(base + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    shapes: list[tuple[str, list[tuple[float, float]]]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):  # rejection sampling: no overlaps, so every instance is fully visible
            r = float(rng.uniform(0.08, 0.2) * min(h, w))
            cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
            if all(math.hypot(cx - x, cy - y) > r + q + 3 for x, y, q in placed):
                break
        else:
            continue
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        polygon = _polygon(kind, cx, cy, r)
        colour = tuple(int(c) for c in np.clip(np.array(_COLOURS[kind]) + rng.integers(-25, 26, size=3), 0, 255))
        draw.polygon(polygon, fill=colour)
        placed.append((cx, cy, r))
        shapes.append((kind, polygon))
    return image, shapes


def write_coco_shapes(
    root: str | Path,
    num_train: int = 256,
    num_val: int = 32,
    size: tuple[int, int] = (96, 128),
    max_shapes: int = 3,
    seed: int = 0,
) -> Path:
    """Write a COCO-format shapes data set under ``root`` (deterministic for the same arguments); returns ``root``.

    ``size`` is the largest ``(height, width)``; each image is 80-100% of it per side.
    """
    height, width = _check_counts(num_train, num_val, size, max_shapes)
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    annotation_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image, shapes = _scene(rng, height, width, max_shapes)
            name = f"{index:06d}.png"
            image.save(folder / name)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "height": image.height, "width": image.width})
            for kind, polygon in shapes:
                flat = [round(c, 2) for point in polygon for c in point]
                rle = coco_mask.merge(coco_mask.frPyObjects([flat], image.height, image.width))
                xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
                x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
                x1, y1 = min(max(xs), image.width), min(max(ys), image.height)
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": image_id,
                        "category_id": SHAPES.index(kind) + 1,
                        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "segmentation": [flat],
                        "area": float(coco_mask.area(rle)),  # as COCO defines it: the decoded polygon's pixels
                        "iscrowd": 0,
                    }
                )
                annotation_id += 1
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def write_ade_shapes(
    root: str | Path,
    num_train: int = 256,
    num_val: int = 32,
    size: tuple[int, int] = (96, 128),
    max_shapes: int = 3,
    seed: int = 0,
) -> Path:
    """Write an ADE20K-style segmentation folder under ``root`` (deterministic); returns ``root``.

    Label maps: 0 unlabelled outline, 1 background, ``2 + SHAPES.index(kind)`` for a shape (see the module doc).
    """
    height, width = _check_counts(num_train, num_val, size, max_shapes)
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, shapes = _scene(rng, height, width, max_shapes)
            label = Image.new("L", image.size, 1)
            draw = ImageDraw.Draw(label)
            for kind, polygon in shapes:
                draw.polygon(polygon, fill=2 + SHAPES.index(kind), outline=0)
            name = f"ADE_{split[:5]}_{index:08d}"
            image.save(root / "images" / split / f"{name}.png")
            label.save(root / "annotations" / split / f"{name}.png")
    return root


# --- the arena's long-range task --------------------------------------------------------------------------------
LONG_RANGE_COLOURS = ((220, 50, 50), (50, 190, 60), (60, 90, 235), (230, 200, 40), (200, 70, 210), (40, 200, 210))
LONG_RANGE_CHANCE = 0.5
"""Chance level of :func:`write_long_range`: two balanced classes, and neither square alone says anything."""
_LONG_RANGE_MARKER = ".complete"


def _long_range_image(rng: np.random.Generator, size: int, same: bool) -> Image.Image:
    """Two ``size // 8`` squares whose centres are at least half the image apart (Chebyshev), on grey noise.

    The first colour is uniform over the palette, the second equal to it (``same``) or uniform over the others, so
    each square's colour alone is uniform in both classes: only comparing the two, across the image, beats chance.
    """
    side = max(size // 8, 2)
    pixels = np.clip(110 + rng.integers(-25, 26, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    while True:
        (x0, y0), (x1, y1) = rng.integers(0, size - side + 1, size=(2, 2))
        if max(abs(int(x0) - int(x1)), abs(int(y0) - int(y1))) >= size // 2:
            break
    first = int(rng.integers(len(LONG_RANGE_COLOURS)))
    second = first if same else (first + 1 + int(rng.integers(len(LONG_RANGE_COLOURS) - 1))) % len(LONG_RANGE_COLOURS)
    for (x, y), colour in (((x0, y0), first), ((x1, y1), second)):
        draw.rectangle([int(x), int(y), int(x) + side - 1, int(y) + side - 1], fill=LONG_RANGE_COLOURS[colour])
    return image


def write_long_range(
    root: str | Path, num_train: int = 2000, num_val: int = 500, size: int = 64, seed: int = 0
) -> Path:
    """Write the long-range task under ``root`` once (deterministic, byte-identical PNGs; later calls return).

    Classes ``different`` (0) and ``same`` (1), balanced per split; chance is :data:`LONG_RANGE_CHANCE`. The two
    squares are at least ``size // 2`` px apart, beyond any one 7x7 window of the stride-4 stage-1 map (28 px), so
    a local mixer must stack layers to relate them while a global one sees both in its first block. Written in a
    temporary sibling folder and renamed into place, as :func:`attnzoo.train.write_digits`.
    """
    import shutil
    import tempfile

    if num_train < 2 or num_val < 2:
        raise ValueError(f"num_train and num_val must be >= 2 (both classes), got {num_train} and {num_val}")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int of at least 32 px, got {size!r}")
    root = Path(root).expanduser()
    if (root / _LONG_RANGE_MARKER).is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"root: {str(root)!r} exists, is not empty and is not a finished long-range tree")
    rng = np.random.default_rng(seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".long-range-", dir=root.parent))
    try:
        for split, count in (("train", num_train), ("validation", num_val)):
            for index in range(count):
                same = index % 2 == 1
                folder = tmp / split / ("same" if same else "different")
                folder.mkdir(parents=True, exist_ok=True)
                _long_range_image(rng, size, same).save(folder / f"{index:06d}.png")
        (tmp / _LONG_RANGE_MARKER).write_text(f"{num_train} train, {num_val} validation images, {size} px\n")
        if root.exists():
            root.rmdir()
        try:
            tmp.rename(root)
        except OSError:
            if not (root / _LONG_RANGE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
