"""``attnzoo-train predict`` for the dense tasks: COCO results JSON for detection, PNG label maps for segmentation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as coco_mask
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from attnzoo.train.cli import CommandError, build_cli
from attnzoo.train.predict_writer import PredictionWriter
from attnzoo.train.synthetic import write_ade_shapes, write_coco_shapes
from tests.train.test_detection import det_args
from tests.train.test_segmentation import seg_args

GAPPED = {1: 7, 2: 12, 3: 40}  # COCO-style category ids with gaps: the results must carry these, not labels 1..3


@pytest.fixture(scope="module")
def gapped_coco(tmp_path_factory):
    root = write_coco_shapes(tmp_path_factory.mktemp("coco"), num_train=2, num_val=3, size=(64, 96))
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        for category in data["categories"]:
            category["id"] = GAPPED[category["id"]]
        for annotation in data["annotations"]:
            annotation["category_id"] = GAPPED[annotation["category_id"]]
        path.write_text(json.dumps(data))
    return root


def _detect(root, run_dir, *extra: str) -> None:
    # an untrained Mask R-CNN still scores every class above torchvision's 0.05 threshold: boxes and masks to write
    build_cli(["predict", *det_args(root, run_dir, "mask_rcnn", "--data.eval_batch_size=2", *extra)])


def test_detection_predict_writes_coco_results_that_load_against_the_annotations(gapped_coco, tmp_path):
    _detect(gapped_coco, tmp_path)
    out = tmp_path / "predictions.json"
    results = json.loads(out.read_text())
    assert results, "no detections written"
    gt = COCO(str(gapped_coco / "annotations" / "instances_val.json"))
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    loaded = gt.loadRes(str(out))  # faster-coco-eval takes the file as it is
    assert len(loaded.anns) == len(results)
    assert {r["image_id"] for r in results} <= set(gt.imgs)
    assert {r["category_id"] for r in results} <= set(GAPPED.values())
    for r in results:
        info = gt.imgs[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= info["width"] + 1e-3 and y + h <= info["height"] + 1e-3  # original pixels, not the resized
        assert r["category_name"] == names[r["category_id"]] and 0 <= r["score"] <= 1
        mask = coco_mask.decode(r["segmentation"])
        assert mask.shape == (info["height"], info["width"]) and tuple(r["segmentation"]["size"]) == mask.shape
    scores = [[r["score"] for r in results if r["image_id"] == i] for i in sorted(gt.imgs)]
    assert [r["image_id"] for r in results] == sorted(r["image_id"] for r in results)  # dataset order
    assert all(s == sorted(s, reverse=True) for s in scores)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".predictions")) == []


def test_detection_predict_on_a_plain_folder_names_images_by_file(gapped_coco, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(gapped_coco / "annotations", root / "annotations")
    (root / "photos").mkdir()
    for name in ("000000.png", "000002.png"):
        shutil.copy(gapped_coco / "val" / name, root / "photos" / f"shot_{name}")
    (root / "val").mkdir()
    out = tmp_path / "out" / "boxes.json"
    _detect(root, tmp_path / "run", "--data.predict_split=photos", f"--predictions.path={out}")
    results = json.loads(out.read_text())
    assert results and {r["image_id"] for r in results} == {"shot_000000.png", "shot_000002.png"}
    sizes = {}
    for path in (root / "photos").iterdir():
        with Image.open(path) as image:
            sizes[path.name] = (image.height, image.width)
    assert all(coco_mask.decode(r["segmentation"]).shape == sizes[r["image_id"]] for r in results)
    assert {r["category_id"] for r in results} <= set(GAPPED.values())


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return write_ade_shapes(tmp_path_factory.mktemp("ade"), num_train=2, num_val=3, size=(64, 96))


def _segment(root, run_dir, *extra: str) -> None:
    # scale [48, 32]: the network sees about half-size images, the label maps must come back at the images' sizes
    build_cli(["predict", *seg_args(root, run_dir, "--data.scale=[48, 32]", *extra)])


def test_segmentation_predict_writes_a_label_map_per_image_at_its_size(ade_root, tmp_path):
    _segment(ade_root, tmp_path, "--predictions.overlay=true")
    folder = tmp_path / "predictions"
    stems = sorted(p.stem for p in (ade_root / "images" / "validation").iterdir())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"{s}.png" for s in stems), "overlay"])
    for stem in stems:
        with Image.open(ade_root / "images" / "validation" / f"{stem}.png") as image:
            size = image.size  # the synthetic images differ in size
        with Image.open(folder / f"{stem}.png") as label_map:
            assert label_map.mode == "L" and label_map.size == size
            values = np.asarray(label_map)
        assert values.max() < 4
        with Image.open(folder / "overlay" / f"{stem}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == size
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".predictions")]

    before = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    with pytest.raises(CommandError, match=r"^predictions.path: .* already exists; .*--predictions.overwrite true"):
        _segment(ade_root, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == before  # untouched
    _segment(ade_root, tmp_path, "--predictions.overwrite=true")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.png" for s in stems)  # no overlay this time
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".predictions")]


def test_segmentation_predict_reads_a_folder_without_label_maps(ade_root, tmp_path):
    root = tmp_path / "data"
    (root / "images" / "new").mkdir(parents=True)
    source = sorted((ade_root / "images" / "validation").iterdir())[0]
    with Image.open(source) as image:
        image.resize((80, 50)).save(root / "images" / "new" / "odd.png")
    out = tmp_path / "maps"
    _segment(root, tmp_path / "run", "--data.predict_split=new", f"--predictions.path={out}")
    with Image.open(out / "odd.png") as label_map:
        assert label_map.size == (80, 50)


class _Dense(LightningModule):
    """A stand-in task: detections or label maps of 2 x 3 "images", failing at ``fail_at``."""

    def __init__(self, kind: str, num_classes: int = 4, fail_at: int | None = None):
        super().__init__()
        self.prediction_kind, self.num_classes, self.fail_at = kind, num_classes, fail_at
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("interrupted")
        indices = batch[0].tolist()
        if self.prediction_kind == "segmentation":
            return [{"path": f"img{i}.png", "label_map": torch.full((2, 3), self.num_classes - 1)} for i in indices]
        boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
        return [
            {"image_id": i, "boxes": boxes, "scores": torch.tensor([0.5]), "labels": torch.tensor([1])} for i in indices
        ]


def _predict(root, module, **writer_kwargs) -> None:
    writer = PredictionWriter(**writer_kwargs)
    trainer = Trainer(
        accelerator="cpu", default_root_dir=root, logger=False, enable_progress_bar=False, callbacks=[writer]
    )
    data = DataLoader(TensorDataset(torch.arange(5)), batch_size=2)
    trainer.predict(module, data, return_predictions=False)


def test_an_interrupted_dense_predict_leaves_earlier_outputs_and_nothing_partial(tmp_path):
    _predict(tmp_path, _Dense("detection"))
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert [r["image_id"] for r in results] == [0, 1, 2, 3, 4] and results[0]["bbox"] == [0.0, 0.0, 2.0, 1.0]
    _predict(tmp_path, _Dense("segmentation"))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == [f"img{i}.png" for i in range(5)]
    for kind in ("detection", "segmentation"):
        with pytest.raises(RuntimeError, match="interrupted"):
            _predict(tmp_path, _Dense(kind, fail_at=1), overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions", "predictions.json"]


def test_more_than_256_classes_give_16_bit_label_maps(tmp_path):
    _predict(tmp_path, _Dense("segmentation", num_classes=300))
    with Image.open(tmp_path / "predictions" / "img0.png") as label_map:
        assert label_map.mode.startswith("I;16") and np.asarray(label_map).max() == 299
    _predict(tmp_path / "small", _Dense("segmentation", num_classes=256))
    with Image.open(tmp_path / "small" / "predictions" / "img0.png") as label_map:
        assert label_map.mode == "L" and np.asarray(label_map).max() == 255


def test_detections_are_mapped_back_to_the_original_pixels():
    from attnzoo.train import DetectionTask
    from tests.train.test_segmentation import TINY_NAT4

    task = DetectionTask(backbone="nat_mini", model_kwargs=TINY_NAT4, num_classes=3, fpn_channels=32, min_size=64)
    masks = torch.zeros(1, 1, 50, 80)
    masks[..., 5:25, 10:20] = 1.0
    output = {
        "boxes": torch.tensor([[10.0, 5.0, 20.0, 25.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
    }
    task.detector.forward = lambda images: [dict(output, masks=masks)]  # a detection in the resized image's pixels
    image = torch.zeros(3, 50, 80)  # the data module shrank a 100 x 160 image by 2
    (result,) = task.predict_step(([image], [{"image_id": 7, "orig_size": (100, 160)}]), 0)
    assert result["image_id"] == 7 and result["boxes"].tolist() == [[20.0, 10.0, 40.0, 50.0]]
    assert result["masks"].shape == (1, 100, 160) and result["masks"][0, 10:50, 20:40].all()
    assert result["masks"].sum() == 40 * 20
