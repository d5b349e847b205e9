"""The synthetic detection and segmentation sets: deterministic, well-formed, labels that agree with pixels."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from faster_coco_eval.core import mask as coco_mask
from PIL import Image

from attnzoo.train.synthetic import SHAPES, write_ade_shapes, write_coco_shapes


def _digest(root) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.mark.parametrize("writer", [write_coco_shapes, write_ade_shapes])
def test_same_arguments_same_bytes(writer, tmp_path):
    a = writer(tmp_path / "a", num_train=4, num_val=2, size=(48, 64), seed=3)
    b = writer(tmp_path / "b", num_train=4, num_val=2, size=(48, 64), seed=3)
    c = writer(tmp_path / "c", num_train=4, num_val=2, size=(48, 64), seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_coco_boxes_and_polygons_match_the_pixels(tmp_path):
    root = write_coco_shapes(tmp_path, num_train=6, num_val=3, size=(64, 96))
    for split, count in (("train", 6), ("val", 3)):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == [1, 2, 3] and len(data["images"]) == count
        sizes = {(i["height"], i["width"]) for i in data["images"]}
        assert len(sizes) > 1  # variable image sizes
        images = {i["id"]: i for i in data["images"]}
        for ann in data["annotations"]:
            info = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
            rle = coco_mask.merge(coco_mask.frPyObjects(ann["segmentation"], info["height"], info["width"]))
            mask = coco_mask.decode(rle).astype(bool)
            assert mask.sum() == ann["area"] > 0
            pixels = np.asarray(Image.open(root / split / info["file_name"]))
            colour = pixels[mask].mean(0)  # the shape's colour: its class's dominant channel is the largest
            assert int(colour.argmax()) == [0, 1, 2][ann["category_id"] - 1], SHAPES[ann["category_id"] - 1]


def test_ade_layout_and_labels(tmp_path):
    root = write_ade_shapes(tmp_path, num_train=5, num_val=2, size=(64, 96))
    for split, count in (("training", 5), ("validation", 2)):
        images = sorted((root / "images" / split).iterdir())
        labels = sorted((root / "annotations" / split).iterdir())
        assert len(images) == len(labels) == count and [p.stem for p in images] == [p.stem for p in labels]
        for image, label in zip(images, labels, strict=True):
            values = np.asarray(Image.open(label))
            assert Image.open(image).size == Image.open(label).size
            assert set(np.unique(values)) <= {0, 1, 2, 3, 4} and {0, 1} <= set(np.unique(values))


def test_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        write_coco_shapes(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="size"):
        write_ade_shapes(tmp_path, size=(16, 16))
