"""The same CLI under DDP: two CPU processes (gloo) train one model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.train.conftest import fit_args, metrics_rows


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    args = fit_args(
        image_folder,
        run_dir,
        "--trainer.max_epochs=4",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--model.lr=3e-3",
    )
    args = [a for a in args if a != "--trainer.devices=1"]
    done = subprocess.run(
        [sys.executable, "-m", "attnzoo.train", "fit", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr + done.stdout
    rows = metrics_rows(run_dir)
    steps = max(int(r["step"]) for r in rows)
    assert steps + 1 == 4 * (48 // 2 // 8)  # each process sees half of the 48 images: 3 batches of 8 per epoch
    acc = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(acc) == 4 and max(acc) > 0.6 and loss[-1] < loss[0]  # it learns (chance is 1/3)
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_predict_over_an_uneven_split_finishes(trained, image_folder, tmp_path):
    """3 images on 2 processes at batch 1: the ranks run 2 and 1 batches (Lightning does not pad predict)."""
    run_dir, _ = trained
    loose = tmp_path / "data" / "new"
    loose.mkdir(parents=True)
    for number, image in enumerate(sorted((image_folder / "val" / "circle").glob("*.png"))[:3]):
        (loose / f"{number}.png").write_bytes(image.read_bytes())
    out = tmp_path / "predict"
    args = fit_args(tmp_path / "data", out, "--trainer.strategy=ddp", "--trainer.devices=2")
    args = [a for a in args if a != "--trainer.devices=1" and not a.startswith("--data.batch_size")]
    args += ["--data.predict_split=new", "--data.num_classes=3", "--data.batch_size=1", "--data.eval_batch_size=1"]
    args += ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    done = subprocess.run(
        [sys.executable, "-m", "attnzoo.train", "predict", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((out / "predictions.csv").read_text().strip().splitlines()) == 1 + 3
