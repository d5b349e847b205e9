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
