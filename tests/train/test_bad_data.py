"""Bad data is an error or a warning naming the file, never a silent relabel (issue 25).

16-bit images and label maps are read at full depth, COCO category ids outside the categories, label values outside
the classes and 32-bit images raise naming the file, symlink loops in an image tree are not followed and empty class
folders are logged.
"""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from attnzoo.train import CocoData, ImageFolderData, SegFolderData
from attnzoo.train.data import NamedImageDataset

GRAY_16 = 128 * 257  # a 16-bit gray that is 128 in 8 bits (PIL's convert("RGB") clipped it to 255)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)


def _seg_root(tmp_path, label, image=None):
    """``images/validation/a.png`` with its label map ``annotations/validation/a.png``."""
    _png(tmp_path / "images" / "validation" / "a.png", _rgb() if image is None else image)
    _png(tmp_path / "annotations" / "validation" / "a.png", label)
    return tmp_path


def _seg_sample(root, num_classes, reduce_zero_label):
    """The validation sample at its own size (scale 8x8: no resize), ``(image, mask)``."""
    data = SegFolderData(root, num_classes, reduce_zero_label, scale=(8, 8), num_workers=0)
    data.setup("validate")
    return data.datasets["val"][0]


def _coco_root(tmp_path, category_ids, annotated_id, image):
    """``val/a.png`` with one box of category ``annotated_id``; the categories are ``category_ids``."""
    _png(tmp_path / "val" / "a.png", image)
    annotation = dict(id=1, image_id=1, category_id=annotated_id, bbox=[1, 1, 4, 4], area=16, iscrowd=0)
    annotation["segmentation"] = [[1, 1, 5, 1, 5, 5, 1, 5]]
    coco = dict(
        images=[dict(id=1, file_name="a.png", height=8, width=8)],
        annotations=[annotation],
        categories=[dict(id=i, name=f"c{i}") for i in category_ids],
    )
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    return tmp_path


def _coco_data(root):
    data = CocoData(root, train_split="val", val_split="val", min_size=8, max_size=9, num_workers=0)
    data.setup("validate")
    return data


# ----------------------------------------------------------------------------- 16-bit and 32-bit images
def test_16_bit_gray_images_are_scaled_to_8_bits_in_every_data_module(tmp_path):
    gray = np.full((8, 8), GRAY_16, dtype=np.uint16)
    gray[0, 0], gray[0, 1] = 0, 65535
    folder = NamedImageDataset(str(_png(tmp_path / "folder" / "a" / "x.png", gray).parents[1]), class_map={"a": 0})
    image, _ = folder[0]
    assert np.asarray(image)[1, 1].tolist() == [128] * 3 and np.asarray(image)[0, :2, 0].tolist() == [0, 255]

    seg_image, _ = _seg_sample(_seg_root(tmp_path / "seg", np.zeros((8, 8), np.uint8), gray), 2, False)
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    torch.testing.assert_close(seg_image[:, 1, 1] * std + mean, torch.full((3,), 128 / 255))

    coco_image, _ = _coco_data(_coco_root(tmp_path / "coco", [1], 1, gray)).datasets["val"][0]
    torch.testing.assert_close(coco_image[:, 1, 1], torch.full((3,), 128 / 255))


def test_32_bit_integer_images_are_refused_naming_the_file(tmp_path):
    root = _seg_root(tmp_path, np.zeros((8, 8), np.uint8))
    (root / "images" / "validation" / "a.png").unlink()
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)).save(root / "images" / "validation" / "a.tif")  # mode I
    with pytest.raises(ValueError, match=r"image .*a\.tif': mode I .* no known white level"):
        _seg_sample(root, num_classes=2, reduce_zero_label=False)


# ----------------------------------------------------------------------------- label maps
def test_16_bit_label_maps_are_read_at_full_depth(tmp_path):
    """Values are read as they are; 258 (which wrapped to class 2) is no class of 3 and raises."""
    label = np.array([[0, 1, 2, 255]] * 8, dtype=np.uint16).repeat(2, axis=1)
    _, mask = _seg_sample(_seg_root(tmp_path / "good", label), num_classes=3, reduce_zero_label=False)
    assert mask[0].tolist() == label[0].tolist()
    label[3, 3] = 258
    with pytest.raises(ValueError, match=r"label map .*a\.png.*values \[258\] are neither classes"):
        _seg_sample(_seg_root(tmp_path / "bad", label), num_classes=3, reduce_zero_label=False)


@pytest.mark.parametrize(
    "dtype,value,reduce_zero_label",
    [(np.uint16, 256, True), (np.uint8, 3, False), (np.uint8, 4, True)],
    ids=["16-bit-256-reduced", "8-bit", "8-bit-reduced"],
)
def test_label_values_outside_the_classes_are_an_error_naming_the_file_and_values(
    tmp_path, dtype, value, reduce_zero_label
):
    """16-bit 256 with reduce_zero_label used to wrap to 0, the ignore index; 3 and 4 (3 classes) reached the loss."""
    label = np.ones((8, 8), dtype=dtype)
    label[2, 2] = value
    root = _seg_root(tmp_path, label)
    with pytest.raises(ValueError, match=rf"label map .*a\.png.*values \[{value}\] are neither classes"):
        _seg_sample(root, num_classes=3, reduce_zero_label=reduce_zero_label)


def test_reduce_zero_label_keeps_255_the_ignore_index(tmp_path):
    label = np.array([[0, 1, 2, 255]] * 8, dtype=np.uint8).repeat(2, axis=1)
    _, mask = _seg_sample(_seg_root(tmp_path, label), num_classes=2, reduce_zero_label=True)
    assert mask[0, ::2].tolist() == [255, 0, 1, 255]  # 255 used to become 254


def test_more_classes_than_the_ignore_index_allows_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"num_classes must be in 1\.\.255 \(255 is the ignore index\), got 300"):
        SegFolderData(tmp_path, num_classes=300)


# ----------------------------------------------------------------------------- COCO category ids
@pytest.mark.parametrize("annotated_id", [2, -1], ids=["gap", "negative"])
def test_coco_category_ids_outside_the_categories_are_an_error_naming_the_file(tmp_path, annotated_id):
    """Id 2 (between the categories 1 and 3) was looked up as the background, -1 as the last class."""
    root = _coco_root(tmp_path, [1, 3], annotated_id, _rgb())
    with pytest.raises(ValueError, match=rf"instances_val\.json.*1 annotations .*2 categories: \[{annotated_id}\]"):
        _coco_data(root)


# ----------------------------------------------------------------------------- image-folder trees
def _folder_tree(root):
    """``train/{a,b}`` (b a symlink to a folder elsewhere) and ``val/{a,b}``, two images each."""
    for split, cls in (("train", "a"), ("val", "a"), ("val", "b"), ("elsewhere", "b")):
        for i in range(2):
            _png(root / split / cls / f"{split}{i}.png", _rgb(i))
    os.symlink(root / "elsewhere" / "b", root / "train" / "b")


def test_a_symlink_loop_is_not_followed_and_named(tmp_path, caplog):
    """The loop (a link to the data root inside a class folder) repeated every image ~100 times, val's included."""
    root = tmp_path / "data"
    _folder_tree(root)
    os.symlink(root, root / "train" / "a" / "loop")
    data = ImageFolderData(root, train_split="train", val_split="val", num_workers=0)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    names = sorted(data.datasets["train"].filenames())
    assert names == ["a/train0.png", "a/train1.png", "b/elsewhere0.png", "b/elsewhere1.png"]  # linked b followed
    assert any(
        "did not follow the symlink" in r.message and str(root / "train/a/loop") in r.message for r in caplog.records
    )


def test_an_empty_class_folder_is_named_in_a_warning(tmp_path, caplog):
    root = tmp_path / "data"
    _folder_tree(root)
    (root / "val" / "c").mkdir()
    (root / "train" / "c").mkdir()
    data = ImageFolderData(root, train_split="train", val_split="val", num_workers=0)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
    assert data.num_classes == 3 and len(data.datasets["train"]) == 4
    warned = [r.message for r in caplog.records if "holds no images" in r.message]
    assert warned == [
        f"train_split: class folder {root / 'train' / 'c'} holds no images",
        f"val_split: class folder {root / 'val' / 'c'} holds no images",
    ]
