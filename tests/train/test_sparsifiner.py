"""SparsifinerDistillationTask: the authors' two phases train exactly the parts they should."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from attnzoo.train import ImageFolderData, SparsifinerDistillationTask

# a 2-block, 48-wide DeiT on 32-px images (4 patches a side): the same code as sparsifiner_deit_small
TINY = {"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 3}
TEACHER = {"img_size": 32, "embed_dim": 48, "depth": 2, "num_heads": 3}


def fit(task, root, tmp_path, steps=3):
    data = ImageFolderData(root, val_split="val", batch_size=8, num_workers=0, input_size=32)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(task, datamodule=data)
    return trainer


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_phase_one_trains_only_the_connectivity_predictors(image_folder, tmp_path):
    task = SparsifinerDistillationTask(phase="attn_recon", model_kwargs=TINY, num_classes=3, lr=1e-2)
    before = snapshot(task.model)
    fit(task, image_folder, tmp_path)
    moved = changed(before, task.model)
    assert moved and all(".mask_predictor." in n for n in moved)
    assert task.teacher is None  # the frozen backbone is the teacher in this phase


def test_phase_two_trains_the_backbone_against_a_frozen_teacher(image_folder, tmp_path):
    task = SparsifinerDistillationTask(
        phase="cls_distill",
        teacher="deit_tiny_patch16_224",
        teacher_pretrained=False,
        teacher_kwargs=TEACHER,
        model_kwargs=TINY,
        num_classes=3,
        lr=1e-3,
    )
    before, teacher_before = snapshot(task.model), snapshot(task.teacher)
    fit(task, image_folder, tmp_path)
    moved = changed(before, task.model)
    assert any(".attn.mixer.qkv." in n for n in moved) and not any(".mask_predictor." in n for n in moved)
    assert not changed(teacher_before, task.teacher)


def test_bad_phase_and_non_sparsifiner_model_are_refused():
    with pytest.raises(ValueError, match="phase must be one of"):
        SparsifinerDistillationTask(phase="finetune", model_kwargs=TINY)
    with pytest.raises(ValueError, match="ResNet has no Sparsifiner blocks"):
        SparsifinerDistillationTask(model="resnet18")
