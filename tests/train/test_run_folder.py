"""A run folder belongs to one run, checkpoints name this run's files, and reading one never executes code."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import torch

from attnzoo.train.cli import LOCK_NAME, CommandError, build_cli, main
from tests.train.conftest import fit_args


def short_fit(image_folder, run_dir, *extra):
    """One epoch of six steps with a 4-step last checkpoint: the epoch ends between two step saves."""
    args = fit_args(image_folder, run_dir, "--trainer.max_epochs=1", "--last_checkpoint.every_n_train_steps=4", *extra)
    return build_cli(["fit", *args])


def test_last_checkpoint_is_the_final_state_even_with_a_step_interval(image_folder, tmp_path):
    cli = short_fit(image_folder, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert cli.trainer.global_step == 6 and last["global_step"] == 6  # not the 4-step mark


def test_a_new_run_into_a_used_folder_is_refused_unless_it_continues_or_overwrites(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    short_fit(image_folder, run_dir)
    with pytest.raises(CommandError, match=r"holds an earlier run's checkpoints \(best.ckpt, last.ckpt\)"):
        short_fit(image_folder, run_dir)
    with pytest.raises(SystemExit, match="attnzoo-train: error: run folder .* --overwrite true"):
        main(["fit", *fit_args(image_folder, run_dir, "--trainer.max_epochs=1")])
    before = (run_dir / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    short_fit(image_folder, run_dir, "--overwrite=true", "--seed_everything=1")
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt"]  # this run's files under the documented names, no best-v1.ckpt
    assert (run_dir / "checkpoints" / "best.ckpt").stat().st_mtime_ns != before


def test_resuming_without_a_last_checkpoint_is_an_error(image_folder, tmp_path):
    with pytest.raises(CommandError, match=r"--ckpt_path last: there is no .*last.ckpt"):
        short_fit(image_folder, tmp_path / "empty", "--ckpt_path=last")


def test_a_second_fit_into_a_folder_in_use_is_refused(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / LOCK_NAME, "a+") as other:  # another fit holds the folder (a separate open file: a lock)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("pid 12345")
        other.flush()
        with pytest.raises(CommandError, match=r"in use by another attnzoo-train fit \(pid 12345\)"):
            short_fit(image_folder, run_dir)
    assert not (run_dir / "checkpoints").exists()  # refused before anything was written
    short_fit(image_folder, run_dir)  # released: the folder is free again


class Marker:
    """Unpickling this creates a file: a stand-in for a checkpoint that runs code when read."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("where", ["local", "url"])
def test_a_checkpoint_that_runs_code_is_refused_not_executed(image_folder, tmp_path, server, monkeypatch, where):
    folder, base = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # the URL's download cache
    marker = tmp_path / "executed"
    torch.save({"state_dict": {}, "payload": Marker(marker)}, folder / "evil.ckpt")
    path = str(folder / "evil.ckpt") if where == "local" else f"{base}/evil.ckpt"
    for command in ("fit", "validate"):
        args = fit_args(image_folder, tmp_path / f"run-{where}-{command}", "--trainer.max_epochs=1")
        with pytest.raises(Exception, match="Weights only load failed|weights_only"):
            build_cli([command, *args, f"--ckpt_path={path}"])
        assert not marker.exists(), f"{command} executed code from a {where} checkpoint"


def test_weights_only_false_is_refused(image_folder, tmp_path):
    args = fit_args(image_folder, tmp_path / "run", "--trainer.max_epochs=1")
    with pytest.raises(CommandError, match="--weights_only false would let a checkpoint execute code"):
        build_cli(["validate", *args, "--weights_only=false"])


def test_export_and_pretrained_files_refuse_code_too(tmp_path, server, monkeypatch):
    """``attnzoo export`` and pretrained weights (a local file or a URL through timm) read with weights_only."""
    import timm

    from attnzoo.tools.export import export_checkpoint

    folder, base = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    marker = tmp_path / "executed"
    torch.save({"state_dict": {}, "payload": Marker(marker)}, folder / "evil.pth")
    with pytest.raises(ValueError, match="cannot be read with weights_only=True"):
        export_checkpoint(folder / "evil.pth", tmp_path / "out")
    for overlay in (dict(file=str(folder / "evil.pth")), dict(url=f"{base}/evil.pth")):
        with pytest.raises(Exception, match="Weights only load failed|weights_only"):
            timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=overlay)
    assert not marker.exists()
