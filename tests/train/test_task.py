"""ClassificationTask and ImageFolderData: fine-tuning, linear probe, optimizer groups, errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import timm
import torch

from attnzoo.train import ClassificationTask, ImageFolderData
from tests.train.helpers import TINY_NAT

TINY_LITV2 = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def _data(root, **kw) -> ImageFolderData:
    return ImageFolderData(root, val_split="val", batch_size=8, num_workers=0, input_size=32, **kw)


def _backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = {f"{model.pretrained_cfg['classifier']}.{n}" for n, _ in model.get_classifier().named_parameters()}
    return {k: v for k, v in model.state_dict().items() if k not in head}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("source", ["local-dir", "pretrained_file"])
def test_fine_tuning_loads_the_backbone_and_resets_a_head_of_another_size(exported, source):
    reference = timm.create_model(f"local-dir:{exported}", pretrained=True)
    if source == "local-dir":
        task = ClassificationTask(model=f"local-dir:{exported}", pretrained=True, num_classes=5)
    else:
        file = str(exported / "model.safetensors")
        task = ClassificationTask(model="nat_mini", model_kwargs=TINY_NAT, pretrained_file=file, num_classes=5)
    fresh_head = task.model.head.weight.detach().clone()
    assert not _same(_backbone(task.model), _backbone(reference))  # nothing loaded at construction
    task.setup("fit")  # weights load here, unless a Lightning checkpoint is being restored
    assert _same(_backbone(task.model), _backbone(reference))
    assert task.model.head.weight.shape == (5, reference.num_features)
    assert torch.equal(task.model.head.weight, fresh_head)  # the 3-class head was not forced in


def test_fine_tuning_keeps_a_head_with_the_same_classes_and_syncs_the_ema(exported):
    reference = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    task = ClassificationTask(
        model="nat_mini", model_kwargs=TINY_NAT, pretrained_file=str(exported / "model.safetensors"), ema_decay=0.9
    )
    assert task.num_classes == 1000  # the model's default without num_classes...
    task = ClassificationTask(
        model="nat_mini",
        model_kwargs=TINY_NAT,
        num_classes=3,
        pretrained_file=str(exported / "model.safetensors"),
        ema_decay=0.9,
    )
    task.setup("validate")
    task.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(task(x), reference(x))
        assert torch.equal(task.model_ema.module(x), reference(x))  # the EMA starts from the loaded weights


def test_linear_probe_trains_only_the_head_and_keeps_the_backbone_in_eval_mode(image_folder, exported, tmp_path):
    task = ClassificationTask(model=f"local-dir:{exported}", pretrained=True, num_classes=3, freeze_backbone=True)
    trainable = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    task.train()
    assert not task.model.stages.training and task.model.head.training
    task.setup("fit")  # load the weights now (fit's own setup then leaves them alone)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    _trainer(tmp_path, max_steps=3).fit(task, _data(image_folder))
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}
    assert _same(_backbone(task.model), _backbone(timm.create_model(f"local-dir:{exported}", pretrained=True)))


def test_layer_decay_gives_each_depth_its_own_scale_and_timm_applies_it(image_folder, tmp_path):
    task = ClassificationTask(model="nat_mini", model_kwargs=TINY_NAT, num_classes=3, layer_decay=0.5, lr=1e-3)
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, _data(image_folder))
    groups = trainer.optimizers[0].param_groups
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) >= 4 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(scales) - 1))
    assert {round(g["lr"] / g["lr_scale"], 12) for g in groups} == {round(groups[0]["lr"] / groups[0]["lr_scale"], 12)}
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, param in task.model.named_parameters():  # 1-D parameters and NAT's position tables are not decayed
        assert (id(param) in no_decay) == (param.ndim <= 1 or name.endswith(".rpb")), name


def test_a_module_lr_scale_reaches_the_optimizer_as_litv2_offsets_need(image_folder, tmp_path):
    task = ClassificationTask(model="litv2_small", model_kwargs=TINY_LITV2, num_classes=3)
    offsets = {id(m.conv_offset.weight) for m in task.model.modules() if hasattr(m, "conv_offset")}
    assert offsets
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(task, _data(image_folder))
    for group in trainer.optimizers[0].param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & offsets:
            assert ids <= offsets and group["lr_scale"] == pytest.approx(0.01) and group["weight_decay"] > 0
        else:
            assert group.get("lr_scale", 1.0) == 1.0
    assert len(offsets) == sum(len({id(p) for p in g["params"]} & offsets) for g in trainer.optimizers[0].param_groups)


def test_data_module_takes_preprocessing_from_the_model_unless_given(image_folder, tmp_path):
    data = ImageFolderData(image_folder, val_split="val", batch_size=4, num_workers=0)
    assert data.num_classes == 3  # counted from train/
    task = ClassificationTask(model="nat_mini", model_kwargs=TINY_NAT, num_classes=3)
    _trainer(tmp_path, limit_val_batches=1).validate(task, data, verbose=False)
    assert data.data_config["input_size"] == (3, 224, 224)  # nat_mini's pretrained config
    assert data.data_config["interpolation"] == "bicubic" and data.data_config["crop_pct"] == 0.875
    x, y = next(iter(data.val_dataloader()))
    assert x.shape == (4, 3, 224, 224) and set(y.tolist()) <= {0, 1, 2}
    assert data.class_to_idx == {"circle": 0, "square": 1, "stripes": 2}
    small = _data(image_folder, mean=[0.5, 0.5, 0.5], crop_pct=1.0)
    small.setup("validate")
    assert small.data_config["input_size"] == (3, 32, 32) and small.data_config["mean"] == (0.5, 0.5, 0.5)


def test_bad_arguments_are_named(image_folder, tmp_path):
    with pytest.raises(ValueError, match=r"model: unknown model 'nat_minii'; close matches: .*nat_mini"):
        ClassificationTask(model="nat_minii")
    with pytest.raises(FileNotFoundError, match="model: 'local-dir:/nonexistent' has no config.json"):
        ClassificationTask(model="local-dir:/nonexistent")
    with pytest.raises(FileNotFoundError, match="pretrained_file: no such file"):
        ClassificationTask(model="resnet18", pretrained_file=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="sched: 'cosin' is not one of"):
        ClassificationTask(model="resnet18", sched="cosin")
    with pytest.raises(ValueError, match="opt: unknown timm optimizer 'adamx'"):
        ClassificationTask(model="resnet18", opt="adamx")
    with pytest.raises(FileNotFoundError, match="root: no such folder"):
        ImageFolderData(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"val_split: no folder 'holdout' in root"):
        data = ImageFolderData(image_folder, val_split="holdout", num_workers=0)
        data.setup("validate")
    with pytest.raises(ValueError, match="num_classes is 5 but"):
        ImageFolderData(image_folder, num_classes=5, val_split="val").setup("validate")
