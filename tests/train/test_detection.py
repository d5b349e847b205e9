"""DetectionTask + CocoData: a few CLI steps of each detector on the synthetic COCO shapes, mAP in range, and
every zoo family's ``features_only`` backbone under the FPN at an input size that is no multiple of 32."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from attnzoo.train import CocoData, DetectionTask
from attnzoo.train.cli import build_cli
from attnzoo.train.detection import METRIC_KEYS, TimmFPN
from attnzoo.train.synthetic import write_coco_shapes
from tests.train.conftest import metrics_rows
from tests.train.test_segmentation import HIERARCHICAL, TINY_NAT4

PLAIN = ("agent_deit_tiny", "sparsifiner_deit_small")  # one stride-16 map: no pyramid to put an FPN on


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco_shapes(tmp_path_factory.mktemp("coco"), num_train=8, num_val=4, size=(64, 96))


def det_args(root, run_dir, detector: str, *extra: str) -> list[str]:
    return [
        "--seed_everything=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_steps=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--checkpoint.monitor=val/map_50",
        "--model=DetectionTask",
        "--model.backbone=nat_mini",
        f"--model.model_kwargs={TINY_NAT4}",
        f"--model.detector={detector}",
        "--model.fpn_channels=32",
        "--model.min_size=96",
        "--model.max_size=128",
        "--model.anchor_sizes=[8, 16, 32, 64, 128]",
        "--model.lr=1e-3",
        "--model.warmup_steps=1",
        "--data=CocoData",
        f"--data.root={root}",
        "--data.train_split=train",
        "--data.val_split=val",
        "--data.min_size=96",
        "--data.max_size=128",
        "--data.batch_size=4",
        "--data.num_workers=0",
        *extra,
    ]


def _check_metrics(values: dict[str, float], prefix: str = "val/") -> None:
    for key in METRIC_KEYS:
        value = float(values[f"{prefix}{key}"])
        assert value == -1.0 or 0.0 <= value <= 1.0, (key, value)  # -1: no object of that size in the set
    assert 0.0 <= float(values[f"{prefix}map_50"]) <= 1.0


def test_mask_rcnn_fit_then_validate_through_the_cli(coco_root, tmp_path):
    few = "--model.detector_kwargs={box_detections_per_img: 10, rpn_post_nms_top_n_test: 50}"
    cli = build_cli(["fit", *det_args(coco_root, tmp_path, "mask_rcnn", few)])
    assert isinstance(cli.model, DetectionTask) and cli.model.num_classes == 3  # linked: 3 shapes
    assert cli.model.detector.roi_heads.box_predictor.cls_score.out_features == 4  # + background
    rows = metrics_rows(tmp_path)
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    val = [r for r in rows if r.get("val/map_50")][-1]
    _check_metrics(val)
    _check_metrics(val, "val/segm_")
    best = tmp_path / "checkpoints" / "best.ckpt"
    cli = build_cli(["validate", *det_args(coco_root, tmp_path / "v", "mask_rcnn", few), f"--ckpt_path={best}"])
    _check_metrics(cli.trainer.callback_metrics)


@pytest.mark.parametrize("detector", ["retinanet", "faster_rcnn"])
def test_other_detectors_fit(coco_root, tmp_path, detector):
    extra = ["--data.masks=false"]
    if detector == "faster_rcnn":
        extra.append("--model.detector_kwargs={box_batch_size_per_image: 64, rpn_post_nms_top_n_test: 50}")
    cli = build_cli(["fit", *det_args(coco_root, tmp_path, detector, *extra)])
    _check_metrics(cli.trainer.callback_metrics)
    assert "val/segm_map" not in cli.trainer.callback_metrics


def test_coco_labels_masks_and_variable_sizes(coco_root):
    data = CocoData(coco_root, train_split="train", val_split="val", min_size=64, max_size=96, num_workers=0)
    assert data.num_classes == 3  # counted from the categories
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    assert len({tuple(image.shape) for image in images}) > 1  # a list of differently sized images
    for image, target in zip(images, targets, strict=True):
        assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
        assert target["labels"].min() >= 1 and target["labels"].max() <= 3
        boxes = target["boxes"]
        assert boxes.shape[1] == 4 and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 2] <= image.shape[-1]).all() and (boxes[:, 3] <= image.shape[-2]).all()
        masks = target["masks"]
        assert masks.shape == (len(boxes), *image.shape[-2:]) and (masks.flatten(1).sum(1) > 0).all()


def test_arguments_are_checked(coco_root):
    with pytest.raises(ValueError, match="detector"):
        DetectionTask(backbone="nat_mini", detector="yolo", num_classes=3)
    with pytest.raises(ValueError, match="detector_kwargs"):
        DetectionTask(backbone="nat_mini", model_kwargs=TINY_NAT4, num_classes=3, detector_kwargs={"box_nms": 0.3})
    with pytest.raises(ValueError, match="anchor_sizes"):
        DetectionTask(backbone="nat_mini", model_kwargs=TINY_NAT4, num_classes=3, anchor_sizes=[8, 16])
    with pytest.raises(ValueError, match="num_classes"):
        CocoData(coco_root, train_split="train", val_split="val", num_classes=5).setup("validate")
    with pytest.raises(ValueError, match="ann_file"):
        CocoData(coco_root, ann_file="annotations/instances.json", num_classes=3)
    with pytest.raises(ValueError, match="input_size"):
        DetectionTask(backbone="agent_swin_tiny", num_classes=3, input_size=[800, 800], max_size=1333)
    with pytest.raises(ValueError, match="input_size"):
        DetectionTask(backbone="agent_swin_tiny", num_classes=3, input_size=[800, 810])
    with pytest.raises(ValueError, match="graft"):
        DetectionTask(backbone="davit_tiny", num_classes=3, graft={"stages": [0]})


def test_fixed_size_backbone_sees_padded_batches_and_the_fpn_their_extent():
    torch.manual_seed(0)
    fpn = TimmFPN("agent_swin_tiny", (4, 8, 16, 32), 32, input_size=(256, 352), depths=[1, 1, 1, 1]).eval()
    with torch.no_grad():
        features = fpn(torch.randn(1, 3, 160, 224))
        assert [tuple(f.shape[-2:]) for f in features.values()] == [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
        with pytest.raises(ValueError, match="input_size"):
            fpn(torch.randn(1, 3, 288, 352))


def test_pretrained_weights_load_into_a_grafted_backbone(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("davit_tiny", depths=[1, 1, 1, 1]).eval()
    path = tmp_path / "davit.pth"
    torch.save(source.state_dict(), path)
    kwargs = {"depths": [1, 1, 1, 1], "pretrained_cfg_overlay": {"file": str(path)}}
    task = DetectionTask(
        backbone="davit_tiny", model_kwargs=kwargs, graft={"mixer": "dual"}, pretrained=True, num_classes=3
    ).eval()
    body = task.detector.backbone.body
    assert any(name.endswith("attn.mixer") for name, _ in body.named_modules())  # attnzoo's dual mixer
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)
        assert not torch.allclose(body(x)[-1], expected[-1])
        task.setup("fit")
        for got, want in zip(body(x), expected, strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", PLAIN)
def test_plain_vits_are_refused_by_name(name):
    with pytest.raises(ValueError, match="backbone: .* no feature maps at strides"):
        TimmFPN(name, (4, 8, 16, 32), 32)


@pytest.mark.parametrize("name", sorted(HIERARCHICAL))
def test_every_hierarchical_family_under_the_fpn_at_250x330(name):
    torch.manual_seed(0)
    task = DetectionTask(
        backbone=name,
        **HIERARCHICAL[name],
        detector="faster_rcnn",
        num_classes=3,
        fpn_channels=32,
        min_size=250,
        max_size=330,
        detector_kwargs={"rpn_post_nms_top_n_test": 20},
    ).eval()
    with torch.no_grad():
        (detections,) = task([torch.rand(3, 250, 330)])  # padded to 256x352 by the detector
    assert detections["boxes"].shape[1] == 4 and torch.isfinite(detections["boxes"]).all()
    features = task.detector.backbone(torch.rand(1, 3, 256, 352))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(64, 88), (32, 44), (16, 22), (8, 11), (4, 6)]
