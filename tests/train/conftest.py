"""Fixtures for the training tests: a generated ImageFolder tree and CLI argument helpers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from tests.train.helpers import TINY_NAT

CLASSES = ("circle", "stripes", "square")


def _draw(kind: str, rng: np.random.Generator, size: int = 24) -> np.ndarray:
    """An easy-to-learn but not constant image: a shape per class at a random place, on noise."""
    img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    y, x = np.mgrid[:size, :size]
    cy, cx = rng.integers(8, size - 8, size=2)
    if kind == "circle":
        mask = (y - cy) ** 2 + (x - cx) ** 2 < 30
        img[mask] = (230, 60, 60)
    elif kind == "stripes":
        img[(x // 3) % 2 == 0] = (60, 220, 60)
    else:
        img[cy - 5 : cy + 5, cx - 5 : cx + 5] = (60, 60, 230)
    return img


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """``root/{train,val}/<class>/*.png``: 3 classes, 16 training and 6 validation images each."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("val", 6)):
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_draw(kind, rng)).save(folder / f"{i}.png")
    return root


def fit_args(root, run_dir, *extra: str, model: str = "nat_mini", kwargs: dict | None = None) -> list[str]:
    """``attnzoo-train`` arguments for a few CPU steps of a tiny model on ``root``."""
    kwargs = TINY_NAT if kwargs is None and model == "nat_mini" else (kwargs or {})
    return [
        "--seed_everything=0",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model=ClassificationTask",
        f"--model.model={model}",
        f"--model.model_kwargs={kwargs}",
        "--model.lr=2e-3",
        "--model.warmup_epochs=1",
        "--model.warmup_lr=1e-4",
        "--model.min_lr=1e-5",
        "--data=ImageFolderData",
        f"--data.root={root}",
        "--data.val_split=val",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--data.input_size=32",
        "--data.scale=[0.7, 1.0]",
        *extra,
    ]


def metrics_rows(run_dir, version: int = 0) -> list[dict[str, str]]:
    """The rows of a run's CSV log."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def trained(image_folder, tmp_path_factory):
    """Three epochs of a tiny NAT with Mixup/CutMix, label smoothing and an EMA, through the CLI."""
    from attnzoo.train.cli import build_cli

    run_dir = tmp_path_factory.mktemp("run")
    extra = [
        "--trainer.max_epochs=3",
        "--model.ema_decay=0.8",
        "--model.mixup=0.2",
        "--model.cutmix=0.2",
        "--model.label_smoothing=0.1",
    ]
    cli = build_cli(["fit", *fit_args(image_folder, run_dir, *extra)])
    return run_dir, cli


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """The trained run's last checkpoint exported for timm (``model.safetensors`` + ``config.json``)."""
    from attnzoo.tools.export import export_checkpoint

    run_dir, _ = trained
    return export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and does not collapse when other jobs share the 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
