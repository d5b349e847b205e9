"""kill -9 a training run at random points, a checkpoint write included, then resume: nothing is lost.

Each seed picks where the kill lands: after a random training step, halfway through writing a random
checkpoint, or after writing one but before it is renamed into place. The resumed run must end at the
uninterrupted run's step count, every checkpoint left on disk must load, and no partial file may remain.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import pytest
import torch

from tests.train.conftest import fit_args

STEPS = 12  # 2 epochs of 6 steps: the uninterrupted run's final global_step
WRITES = 7  # checkpoint writes before the end: last.ckpt every 2 steps and best.ckpt at each epoch end

DRIVER = r"""
import os, signal, sys
from attnzoo.train import checkpoint_io
from attnzoo.train.cli import main

mode, when, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
writes = [0]
write, commit = checkpoint_io.AtomicCheckpointIO._write, checkpoint_io.AtomicCheckpointIO._commit

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def half_write(checkpoint, temp):
    writes[0] += 1
    if writes[0] == when:
        with open(temp, "wb") as handle:
            handle.write(b"PK" + bytes(100))  # the first bytes of a zip, then the kill
            handle.flush()
        kill()
    write(checkpoint, temp)

def write_then_die(temp, path):
    writes[0] += 1
    if writes[0] == when:
        kill()
    commit(temp, path)

if mode == "write":
    checkpoint_io.AtomicCheckpointIO._write = staticmethod(half_write)
elif mode == "commit":
    checkpoint_io.AtomicCheckpointIO._commit = staticmethod(write_then_die)
main(args)
"""


def run(mode: str, when: int, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", DRIVER, mode, str(when), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def kill_point(seed: int) -> tuple[str, int]:
    rng = random.Random(seed)
    mode = ("step", "write", "commit")[seed % 3]
    return mode, rng.randint(1, STEPS - 1) if mode == "step" else rng.randint(1, WRITES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_anywhere_then_resume_loses_nothing(image_folder, tmp_path, seed):
    run_dir = tmp_path / "run"
    args = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", "--last_checkpoint.every_n_train_steps=2")
    mode, when = kill_point(seed)
    extra = ["--trainer.callbacks+=tests.train.helpers.KillAt", f"--trainer.callbacks.step={when}"]
    killed = run(mode, when, ["fit", *args, *(extra if mode == "step" else [])])
    assert killed.returncode == -signal.SIGKILL, f"{mode} {when}: the kill did not land\n{killed.stderr[-3000:]}"

    checkpoints = run_dir / "checkpoints"
    resume = ["--ckpt_path=last"] if (checkpoints / "last.ckpt").is_file() else ["--overwrite=true"]
    resumed = run("none", 0, ["fit", *args, *resume])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    left = sorted(p.name for p in checkpoints.iterdir())
    assert left == ["best.ckpt", "last.ckpt"], left  # no partial file survives
    for name in left:
        saved = torch.load(checkpoints / name, map_location="cpu", weights_only=True)
        assert saved["state_dict"]
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == STEPS
