"""SegmentationTask + SegFolderData: a few CLI steps on the synthetic ADE-style folder, and every zoo family's
``features_only`` backbone under UPerNet at an input size that is no multiple of 32."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from attnzoo.blocks.agent import AgentAttention
from attnzoo.train import SegFolderData, SegmentationTask
from attnzoo.train.cli import build_cli
from attnzoo.train.synthetic import write_ade_shapes
from tests.train.conftest import metrics_rows

TINY_NAT4 = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "kernel_size": 3}
ONE_BLOCK = {"depths": [1, 1, 1, 1]}
# task arguments of one small variant per hierarchical family, one block per stage (strides 4-32: what UPerNet and the
# FPN take). Agent-Swin/PVT in their dense mode (any size, the authors' downstream agent grids); DaViT and FocalNet
# are timm's with attnzoo's mixer grafted.
HIERARCHICAL = {
    "nat_mini": {"model_kwargs": ONE_BLOCK},
    "dinat_mini": {"model_kwargs": {**ONE_BLOCK, "dilations": [[1], [2], [1], [1]]}},
    "litv2_small": {"model_kwargs": ONE_BLOCK},
    "quadtree_b0": {"model_kwargs": ONE_BLOCK},
    "agent_pvt_tiny": {"model_kwargs": {**ONE_BLOCK, "dynamic_img_size": True, "agent_grid": [4, 5, 7, 7]}},
    "agent_swin_tiny": {"model_kwargs": {**ONE_BLOCK, "dynamic_img_size": True, "agent_grid": [4, 5, 7, 7]}},
    "davit_tiny": {"model_kwargs": ONE_BLOCK, "graft": {"mixer": "dual"}},
    "focalnet_tiny_srf": {"graft": {"mixer": "focal"}},  # timm fixes FocalNet's depths
}


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return write_ade_shapes(tmp_path_factory.mktemp("ade"), num_train=8, num_val=4, size=(64, 96))


def seg_args(root, run_dir, *extra: str) -> list[str]:
    return [
        "--seed_everything=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_steps=3",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--checkpoint.monitor=val/miou",
        "--model=SegmentationTask",
        "--model.backbone=nat_mini",
        f"--model.model_kwargs={TINY_NAT4}",
        "--model.decoder_channels=32",
        "--model.lr=1e-3",
        "--model.warmup_steps=1",
        "--data=SegFolderData",
        f"--data.root={root}",
        "--data.num_classes=4",
        "--data.scale=[96, 64]",
        "--data.crop_size=64",
        "--data.batch_size=4",
        "--data.eval_batch_size=2",
        "--data.num_workers=0",
        *extra,
    ]


def test_fit_then_validate_through_the_cli(ade_root, tmp_path):
    cli = build_cli(["fit", *seg_args(ade_root, tmp_path)])
    assert isinstance(cli.model, SegmentationTask) and cli.model.num_classes == 4  # linked from the data
    rows = metrics_rows(tmp_path)
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    val = [r for r in rows if r.get("val/miou")][-1]
    assert 0.0 <= float(val["val/miou"]) <= 1.0 and 0.0 <= float(val["val/pixel_acc"]) <= 1.0
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert best.is_file()

    # validate from the checkpoint with the sliding window: same metrics, in range
    args = seg_args(ade_root, tmp_path / "validate", "--model.inference=slide", "--model.slide_crop=64")
    args += ["--model.slide_stride=32", f"--ckpt_path={best}"]
    cli = build_cli(["validate", *args])
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/miou"]) <= 1.0 and 0.0 <= float(metrics["val/pixel_acc"]) <= 1.0


def test_reduce_zero_label_and_variable_size_collation(ade_root):
    data = SegFolderData(ade_root, num_classes=4, scale=(96, 64), crop_size=64, eval_batch_size=4, num_workers=0)
    data.setup("validate")
    images, masks = next(iter(data.val_dataloader()))
    assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0  # padded to the backbone's stride
    values = set(masks.unique().tolist())
    assert values <= {0, 1, 2, 3, 255} and 255 in values  # 0 ("unlabelled" outlines) became the ignore index
    plain = SegFolderData(ade_root, num_classes=5, reduce_zero_label=False, scale=(96, 64), num_workers=0)
    plain.setup("validate")
    assert 0 in set(plain.datasets["val"][0][1].unique().tolist())


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="decoder"):
        SegmentationTask(backbone="nat_mini", decoder="deeplab", num_classes=3)
    with pytest.raises(ValueError, match="decoder_channels"):
        SegmentationTask(backbone="nat_mini", decoder="fpn", decoder_channels=96, num_classes=3)
    with pytest.raises(ValueError, match="input_size"):
        SegmentationTask(backbone="agent_pvt_tiny", input_size=[500, 500], num_classes=3)
    with pytest.raises(ValueError, match="slide_crop"):
        SegmentationTask(backbone="nat_mini", input_size=[256, 256], inference="slide", slide_crop=512, num_classes=3)
    with pytest.raises(ValueError, match="graft"):
        SegmentationTask(backbone="davit_tiny", graft={"mixer": "nope"}, num_classes=3)
    with pytest.raises(ValueError, match="inference"):
        SegmentationTask(backbone="nat_mini", inference="tiles", num_classes=3, model_kwargs=TINY_NAT4)
    with pytest.raises(ValueError, match="backbone"):
        SegmentationTask(backbone="nat_tinyy", num_classes=3)
    with pytest.raises(ValueError, match="crop_size"):
        SegFolderData("/nonexistent", crop_size=[64, 64, 3])


@pytest.mark.parametrize("name", sorted(HIERARCHICAL))
def test_every_hierarchical_family_under_upernet_at_250x330(name):
    torch.manual_seed(0)
    task = SegmentationTask(backbone=name, **HIERARCHICAL[name], num_classes=3, decoder_channels=32).eval()
    with torch.no_grad():
        logits = task(torch.randn(1, 3, 250, 330))
    assert logits.shape == (1, 3, 250, 330) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["agent_deit_tiny", "sparsifiner_deit_small"])
def test_plain_vits_are_refused_by_name(name):
    with pytest.raises(ValueError, match="backbone: .* no feature maps at strides .*plain ViTs need decoder: dpt"):
        SegmentationTask(backbone=name, num_classes=3)


@pytest.mark.parametrize("name", ["agent_deit_tiny", "sparsifiner_deit_small"])
def test_plain_vits_segment_with_dpt(name):
    torch.manual_seed(0)
    task = SegmentationTask(
        backbone=name,
        decoder="dpt",
        decoder_channels=32,
        input_size=[128, 128],
        num_classes=3,
    )
    assert type(task.model).__name__ == "DPT"
    images, masks = torch.randn(2, 3, 100, 120), torch.randint(0, 3, (2, 100, 120))
    logits = task(images)  # padded to the 128x128 the ViT was built for, cropped back
    assert logits.shape == (2, 3, 100, 120)
    loss = task.loss(logits, masks)
    loss.backward()
    assert torch.isfinite(loss) and next(task.model.encoder.parameters()).grad.abs().sum() > 0


def test_semantic_fpn_decoder_trains():
    torch.manual_seed(0)
    task = SegmentationTask(
        backbone="nat_mini", model_kwargs=TINY_NAT4, decoder="fpn", decoder_channels=64, num_classes=4
    )
    assert type(task.model).__name__ == "FPN" and task.model.decoder.seg_blocks[0].block[0].block[0].out_channels == 32
    images, masks = torch.randn(2, 3, 70, 90), torch.randint(0, 4, (2, 70, 90))
    loss = task.loss(task(images), masks)
    loss.backward()
    assert torch.isfinite(loss) and next(task.model.encoder.parameters()).grad.abs().sum() > 0


def test_fixed_size_backbone_pads_inputs_and_refuses_larger_ones():
    torch.manual_seed(0)
    task = SegmentationTask(backbone="agent_pvt_tiny", model_kwargs=ONE_BLOCK, input_size=[256, 352], num_classes=3)
    task.eval()
    agents = [m for m in task.modules() if isinstance(m, AgentAttention)]
    assert agents[0].window_size == (64, 88)  # built for 256x352
    with torch.no_grad():
        assert task(torch.randn(2, 3, 100, 352)).shape == (2, 3, 100, 352)
        with pytest.raises(ValueError, match="input_size"):
            task(torch.randn(1, 3, 288, 352))


@pytest.mark.parametrize("name", ["davit_tiny", "focalnet_tiny_srf"])
def test_grafted_mixer_keeps_timm_outputs(name):
    """attnzoo's mixer in timm's DaViT/FocalNet encoder: the decoder sees the same features (weights carried)."""
    tasks = []
    for graft in (None, HIERARCHICAL[name]["graft"]):
        torch.manual_seed(0)
        kwargs = {**HIERARCHICAL[name], "graft": graft}
        tasks.append(SegmentationTask(backbone=name, **kwargs, num_classes=3).eval())
    plain, grafted = tasks
    assert "mixer" in dict(grafted.model.encoder.named_modules()).keys().__str__()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(grafted(x), plain(x))


@pytest.mark.parametrize(
    "name,model_kwargs,graft",
    [
        ("davit_tiny", ONE_BLOCK, {"mixer": "dual"}),
        ("focalnet_tiny_srf", {}, {"mixer": "focal", "focal_window": 9}),  # kernels 3/5 -> 9/11, zero-padded
    ],
)
def test_pretrained_weights_load_into_a_grafted_encoder(tmp_path, name, model_kwargs, graft):
    torch.manual_seed(0)
    source = timm.create_model(name, **model_kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    task = SegmentationTask(
        backbone=name,
        model_kwargs={**model_kwargs, "pretrained_cfg_overlay": {"file": str(path)}},
        graft=graft,
        pretrained=True,
        num_classes=3,
    ).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = task.model.encoder(x)[-1]
        task.setup("fit")  # no trainer: nothing to restore, so the weights load
        after = task.model.encoder(x)[-1]
        expected = source.forward_intermediates(x, intermediates_only=True)[-1]
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected)
