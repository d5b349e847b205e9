"""``attnzoo-train predict``: the top-k classes of every image with their names in one CSV, like timm's inference.py."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from timm.utils.misc import natural_key
from torch.utils.data import DataLoader, TensorDataset

from attnzoo.train.cli import build_cli
from attnzoo.train.predict_writer import PredictionWriter, merge_parts, part_path
from tests.train.conftest import CLASSES, fit_args, metrics_rows

NAMES = sorted(CLASSES)  # the class indices: natural sort of the class folders


def _read(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _val_images(image_folder) -> list[str]:
    return sorted((str(p) for p in (image_folder / "val").rglob("*.png")), key=natural_key)


def test_predict_writes_the_top_k_classes_with_names_in_dataset_order(trained, image_folder, tmp_path, caplog):
    run_dir, _ = trained
    out = tmp_path / "predict"
    with caplog.at_level("INFO"):
        build_cli(["predict", *fit_args(image_folder, out), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    header, rows = _read(out / "predictions.csv")
    k = range(3)  # top-5 by default, clamped to the 3 classes
    assert header == ["filename", *(f"index_{i}" for i in k), *(f"label_{i}" for i in k), *(f"prob_{i}" for i in k)]
    assert [r["filename"] for r in rows] == _val_images(image_folder)
    for row in rows:
        indices = [int(row[f"index_{i}"]) for i in k]
        probs = [float(row[f"prob_{i}"]) for i in k]
        assert sorted(indices) == [0, 1, 2] and [row[f"label_{i}"] for i in k] == [NAMES[i] for i in indices]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
    # the same weights on the same images and transform as the run's last validation: the same top-1
    top1 = sum(r["label_0"] == r["filename"].split("/")[-2] for r in rows) / len(rows)
    last_val = [float(r["val/acc1"]) for r in metrics_rows(run_dir) if r.get("val/acc1")][-1]
    assert top1 == pytest.approx(last_val, abs=1e-6)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".predictions")]  # no part or temporary left
    assert f"to {out / 'predictions.csv'}" in caplog.text


def test_predict_reads_loose_images_with_the_checkpoints_class_names(trained, image_folder, tmp_path):
    """No training split and no class folders: the class names come from the checkpoint; path and top_k are set."""
    run_dir, _ = trained
    photos = tmp_path / "photos" / "new"
    photos.mkdir(parents=True)
    for kind in ("circle", "stripes"):
        for i in range(2):
            shutil.copy(image_folder / "val" / kind / f"{i}.png", photos / f"{kind}{i}.png")
    out = tmp_path / "out" / "top1.csv"
    extra = ["--data.predict_split=new", "--data.num_classes=3", f"--predictions.path={out}", "--predictions.top_k=1"]
    args = fit_args(tmp_path / "photos", tmp_path / "run", *extra)
    build_cli(["predict", *args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    header, rows = _read(out)
    assert header == ["filename", "index_0", "label_0", "prob_0"]
    assert [r["filename"] for r in rows] == sorted((str(p) for p in photos.iterdir()), key=natural_key)
    assert all(r["label_0"] == NAMES[int(r["index_0"])] and 1 / 3 <= float(r["prob_0"]) <= 1 for r in rows)


class _Probe(LightningModule):
    """Probabilities of 4 classes (or a segmentation-like map), failing at ``fail_at``."""

    def __init__(self, fail_at: int | None = None, dense: bool = False):
        super().__init__()
        self.layer = torch.nn.Linear(2, 4)
        self.fail_at, self.dense = fail_at, dense
        self.label_names = ["a", "b", "c", "d"]

    def predict_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("interrupted")
        logits = self.layer(batch[0])
        return logits.argmax(1)[:, None, None].expand(-1, 2, 2) if self.dense else logits.softmax(-1)


def _predict(tmp_path, module: LightningModule, writer: PredictionWriter) -> None:
    trainer = Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[writer]
    )
    data = DataLoader(TensorDataset(torch.randn(10, 2)), batch_size=4)
    trainer.predict(module, data, return_predictions=False)


def test_an_interrupted_predict_leaves_the_earlier_csv_and_no_parts(tmp_path):
    _predict(tmp_path, _Probe(), PredictionWriter(top_k=2))
    csv_path = tmp_path / "predictions.csv"
    header, rows = _read(csv_path)
    assert header == ["filename", "index_0", "index_1", "label_0", "label_1", "prob_0", "prob_1"]
    assert [r["filename"] for r in rows] == [str(i) for i in range(10)]  # no paths in the batch: the sample index
    before = csv_path.read_bytes()
    with pytest.raises(RuntimeError, match="interrupted"):
        _predict(tmp_path, _Probe(fail_at=1), PredictionWriter(top_k=2))
    assert csv_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_outputs_that_are_not_class_probabilities_write_no_csv(tmp_path):
    with pytest.warns(UserWarning, match="no class probabilities"):
        _predict(tmp_path, _Probe(dense=True), PredictionWriter())
    assert not list(tmp_path.iterdir())


def test_merge_orders_the_ranks_rows_by_dataset_index(tmp_path):
    out = tmp_path / "predictions.csv"
    for rank in (0, 1):  # a DistributedSampler's interleaving: rank r holds indices r, r + 2, ...
        with open(part_path(out, rank), "w", newline="") as f:
            csv.writer(f).writerows([0, i, f"img{i}.png", i % 3, f"{0.5:.6g}"] for i in range(rank, 7, 2))
    assert merge_parts([part_path(out, 0), part_path(out, 1)], out, ["filename", "index_0", "prob_0"]) == 7
    _, rows = _read(out)
    assert [r["filename"] for r in rows] == [f"img{i}.png" for i in range(7)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    with pytest.raises(FileNotFoundError, match="predictions: .* is not visible here"):
        merge_parts([part_path(out, 0)], out, ["filename"])
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        PredictionWriter(top_k=0)


@pytest.mark.slow
def test_ddp_predict_writes_one_csv_in_dataset_order(trained, image_folder, tmp_path):
    run_dir, _ = trained
    args = [a for a in fit_args(image_folder, tmp_path) if a != "--trainer.devices=1"]
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    done = subprocess.run(
        [sys.executable, "-m", "attnzoo.train", "predict", *args, *ddp], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    _, rows = _read(tmp_path / "predictions.csv")
    assert [r["filename"] for r in rows] == _val_images(image_folder)
    assert all(r["label_0"] in NAMES for r in rows)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".predictions")]
