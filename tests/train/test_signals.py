"""Nothing overwritten (issue 25, item 2): SIGTERM/SIGINT to a run or its process group, DataLoader workers included,
leave a loadable last.ckpt of the last completed step and exit 143/130; the resumed run reaches the uninterrupted
step count with every validation done; predict stops and writes nothing; another run's checkpoint cannot take
over a run folder.

Each run is a subprocess in a session of its own (its process group: the main process and its workers), held at a
chosen batch by ``PauseForSignal`` until the test, which polls the marker file it writes, has sent the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnzoo.train.cli import CommandError, build_cli
from tests.train.conftest import fit_args, metrics_rows
from tests.train.signal_helpers import task_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 12  # 2 epochs of 6 steps
VALIDATIONS = {5, 11}  # the steps at which the uninterrupted run logs its validations (one per epoch)
PAUSE = "tests.train.signal_helpers.PauseForSignal"


def start(args: list[str]) -> subprocess.Popen:
    """``attnzoo-train ARGS`` in a new session, so that its process group is the run alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "attnzoo.train", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)


def signal_when_paused(args: list[str], marker: Path, signum: int, group: bool = True) -> tuple[int, str, str]:
    """Start the run, wait for ``marker``, send ``signum`` to its group (or its main process); (status, marker text,
    stderr's tail)."""
    process = start(args)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    where = marker.read_text() if marker.exists() else "never paused"
    if process.poll() is None:
        (os.killpg if group else os.kill)(process.pid, signum)
    try:
        _, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        return -1, where, "hung after the signal\n" + err[-3000:]
    return process.returncode, where, err[-3000:]


def pause(marker: Path, hook: str, **where: int) -> list[str]:
    """The arguments adding a ``PauseForSignal`` at ``hook`` (``step=``/``epoch=``)."""
    given = {"marker": marker, "hook": hook, **where}
    return [f"--trainer.callbacks+={PAUSE}", *(f"--trainer.callbacks.{key}={value}" for key, value in given.items())]


def validation_steps(run_dir: Path) -> set[int]:
    """The steps of every validation logged by any of the run's processes."""
    versions = sorted((run_dir / "csv").glob("version_*"))
    return {int(r["step"]) for v in versions for r in metrics_rows(run_dir, int(v.name[8:])) if r.get("val/acc1")}


def interrupt_then_resume(tmp_path, image_folder, signum, hook, workers=2, group=True, **where) -> None:
    """The whole check: stopped with the shell's status, last.ckpt of the paused step, nothing partial, resumed to
    the uninterrupted step count with every validation."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    args = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", f"--data.num_workers={workers}")
    status, paused, err = signal_when_paused(["fit", *args, *pause(marker, hook, **where)], marker, signum, group)
    assert status == 128 + signum, f"paused at {paused}, status {status}\n{err}"

    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # no partial file, no best yet
    saved = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    reached = int(paused.split()[1]) if paused.startswith("step") else 6  # validation 0 follows step 6
    assert saved["global_step"] == reached, f"paused at {paused}, saved at step {saved['global_step']}"

    resumed = subprocess.run(
        [sys.executable, "-m", "attnzoo.train", "fit", *args, "--ckpt_path=last"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == STEPS
    assert validation_steps(run_dir) == VALIDATIONS  # the interrupted epoch's validation too


def test_sigterm_to_the_group_mid_epoch_saves_exits_143_and_resumes(image_folder, tmp_path):
    interrupt_then_resume(tmp_path, image_folder, signal.SIGTERM, "train", step=3)


def test_sigint_to_the_group_during_validation_exits_130_and_the_resume_validates_that_epoch(image_folder, tmp_path):
    interrupt_then_resume(tmp_path, image_folder, signal.SIGINT, "validation", epoch=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, hook, workers, group",
    [
        (signal.SIGTERM, "validation", 2, True),
        (signal.SIGINT, "train", 2, True),
        (signal.SIGTERM, "train", 0, False),
        (signal.SIGINT, "validation", 0, False),
        (signal.SIGTERM, "train", 4, False),
    ],
)
def test_every_signal_target_and_worker_count(image_folder, tmp_path, signum, hook, workers, group):
    where = {"step": 6} if hook == "train" else {"epoch": 0}  # step 6: the last of epoch 0, right before validation
    interrupt_then_resume(tmp_path, image_folder, signum, hook, workers, group, **where)


@pytest.mark.slow
def test_a_signal_at_any_moment_leaves_a_checkpoint_of_the_last_step_before_it(image_folder, tmp_path):
    """No pause: the signal lands wherever the run is a moment after its first step (fetch, forward, a save...)."""
    run_dir, marker = tmp_path / "run", tmp_path / "paused"
    args = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", "--data.num_workers=2")
    extra = [*pause(marker, "train", step=1), "--trainer.callbacks.timeout=0"]
    status, paused, err = signal_when_paused(["fit", *args, *extra], marker, signal.SIGTERM)
    assert status == 143, err
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] >= int(paused.split()[1])


def test_a_kill_9_during_validation_resumes_into_that_validation(image_folder, tmp_path):
    """A step save that falls on an epoch's last step waits for its validation: written before it, it would resume
    past it (Lightning counts that epoch as done)."""
    run_dir = tmp_path / "run"
    args = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", "--last_checkpoint.every_n_train_steps=2")
    kill = ["--trainer.callbacks+=tests.train.signal_helpers.KillAtValidation", "--trainer.callbacks.epoch=0"]
    command = [sys.executable, "-m", "attnzoo.train", "fit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    options = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    killed = subprocess.run([*command, *kill], **options)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = subprocess.run([*command, "--ckpt_path=last"], **options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert validation_steps(run_dir) == VALIDATIONS


def test_sigterm_during_predict_stops_and_writes_nothing(image_folder, tmp_path):
    ckpt = task_checkpoint(tmp_path / "task.ckpt")
    out, marker = tmp_path / "predict", tmp_path / "paused"
    out.mkdir()
    (out / "predictions.csv").write_text("an earlier run's predictions\n")
    args = fit_args(image_folder, out, "--data.num_workers=2", "--data.batch_size=4", f"--ckpt_path={ckpt}")
    status, _, err = signal_when_paused(["predict", *args, *pause(marker, "predict")], marker, signal.SIGTERM)
    assert status == 143, err
    assert (out / "predictions.csv").read_text() == "an earlier run's predictions\n"  # neither replaced nor partial
    assert not [p.name for p in out.iterdir() if p.name.startswith(".predictions")]


def test_another_runs_checkpoint_cannot_take_over_a_run_folder(image_folder, tmp_path):
    """``fit --ckpt_path OTHER`` into a folder holding a run would replace that run's best.ckpt and last.ckpt."""
    other, run_dir = tmp_path / "other", tmp_path / "run"
    build_cli(["fit", *fit_args(image_folder, other, "--trainer.max_epochs=1")])
    build_cli(["fit", *fit_args(image_folder, run_dir, "--trainer.max_epochs=1", "--seed_everything=1")])
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    from_other = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", f"--ckpt_path={other}/checkpoints/last.ckpt")
    with pytest.raises(CommandError, match=r"holds an earlier run's checkpoints .*last.ckpt is not one of them"):
        build_cli(["fit", *from_other])
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == before
    cli = build_cli(["fit", *from_other, "--overwrite=true"])  # said so: that run's files go, the other run goes on
    assert cli.trainer.global_step == STEPS
    own = fit_args(image_folder, run_dir, "--trainer.max_epochs=3", f"--ckpt_path={run_dir}/checkpoints/best.ckpt")
    assert build_cli(["fit", *own]).trainer.global_step == 18  # its own checkpoint continues it


def test_predict_stops_without_a_collective_each_batch():
    """Under DDP, predict's ranks run different numbers of batches (no padding): a per-batch agreement would wait
    forever, so predict checks its own signal only; training and validation still agree across ranks."""
    from types import SimpleNamespace

    from attnzoo.train.signals import StopOnSignal, StopRequested

    calls = []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda stop, all: calls.append(stop) or stop)
    trainer = SimpleNamespace(world_size=2, strategy=strategy)
    stopper = StopOnSignal()
    stopper.on_predict_batch_end(trainer, None)
    stopper.on_validation_batch_end(trainer, None)
    assert calls == [False]  # validation asked the other rank; predict did not
    stopper.signum = 15
    with pytest.raises(StopRequested):
        stopper.on_predict_batch_end(trainer, None)
    assert calls == [False]
