"""No code from data (issue 25, item 1): a checkpoint's hyper-parameters are plain values, the command's own values win
over them, and a checkpoint of another network than the one asked for is an error naming both."""

from __future__ import annotations

import re

import pytest
import torch

from attnzoo.tools import cli as tools_cli
from attnzoo.tools.viz import VizError, load_model
from attnzoo.train.checkpoint import read_checkpoint
from attnzoo.train.cli import CommandError, build_cli, main
from tests.train.conftest import fit_args, metrics_rows
from tests.train.helpers import TINY_NAT
from tests.train.signal_helpers import popen_spec, task_checkpoint


def minimal_args(image_folder, run_dir, *extra: str) -> list[str]:
    """The task and data by class alone: everything else about the model comes from the checkpoint."""
    return [
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.enable_progress_bar=false",
        "--model=ClassificationTask",
        "--data=ImageFolderData",
        f"--data.root={image_folder}",
        "--data.val_split=val",
        "--data.num_workers=0",
        "--data.input_size=32",
        *extra,
    ]


@pytest.mark.parametrize("command", ["fit", "validate", "test", "predict"])
def test_a_class_path_in_checkpoint_hyper_parameters_is_refused_not_built(image_folder, tmp_path, command):
    """``{class_path: subprocess.Popen, ...}`` in a free-form dict of a checkpoint that loads with weights_only."""
    marker = tmp_path / "executed"
    evil = task_checkpoint(tmp_path / "evil.ckpt", opt_kwargs={"eps": popen_spec(marker)})
    args = fit_args(image_folder, tmp_path / "run", "--trainer.max_epochs=1")
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args, f"--ckpt_path={evil}"])
    message = str(exit_info.value.code)
    assert message.startswith(f"attnzoo-train: error: --ckpt_path '{evil}': ") and "\n" not in message
    assert "hyper_parameters.opt_kwargs.eps.class_path" in message
    assert not marker.exists(), f"{command} ran a shell command named in a checkpoint"


@pytest.mark.parametrize(
    "where, value",
    [
        ("model_kwargs.act_layer", "spec"),  # a dict inside a free-form dict
        ("sched_kwargs.noise[0]", "spec in list"),  # inside a list
        ("opt_kwargs.eps", "spec as yaml text"),  # a string jsonargparse would parse into the dict
        ("model_kwargs.init_args", "bare init_args"),
    ],
)
def test_export_and_viz_refuse_class_paths_in_checkpoint_hyper_parameters(tmp_path, capsys, where, value):
    marker = tmp_path / "executed"
    spec = popen_spec(marker)
    text = f"{{class_path: subprocess.Popen, init_args: {{args: touch {marker}, shell: true}}}}"
    forged = {
        "spec": {"model_kwargs": {**TINY_NAT, "act_layer": spec}},
        "spec in list": {"sched_kwargs": {"noise": [spec]}},
        "spec as yaml text": {"opt_kwargs": {"eps": text}},
        "bare init_args": {"model_kwargs": {**TINY_NAT, "init_args": {"args": "x"}}},
    }[value]
    path = task_checkpoint(tmp_path / "evil.ckpt", **forged)
    key = f"hyper_parameters.{where}" + (".class_path" if value != "bare init_args" else "")
    with pytest.raises(ValueError, match=rf"^checkpoint: .*: {re.escape(key)}: .*never a class to build$"):
        read_checkpoint(path)
    with pytest.raises(SystemExit):
        tools_cli.main(["export", str(path), str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert key in error[-1] and error[-1].startswith("attnzoo export: error: checkpoint: ")
    with pytest.raises(VizError, match=re.escape(key)):
        load_model(checkpoint=path)
    assert not (tmp_path / "out").exists() and not marker.exists()


def test_a_checkpoint_of_another_network_is_an_error_naming_both(image_folder, tmp_path):
    ckpt = task_checkpoint(tmp_path / "nat.ckpt")
    args = minimal_args(image_folder, tmp_path / "run")
    with pytest.raises(CommandError, match=r"model.init_args.model: .* holds a 'nat_mini' network, not the requested "):
        build_cli(["validate", *args, "--model.model=litv2_small", f"--ckpt_path={ckpt}"])
    other_task = task_checkpoint(tmp_path / "seg.ckpt", _class_path="attnzoo.train.SegmentationTask")
    with pytest.raises(CommandError, match=r"of attnzoo.train.SegmentationTask, not of the requested .*Classif"):
        build_cli(["validate", *args, f"--ckpt_path={other_task}"])


def test_explicit_arguments_win_over_the_checkpoints_and_the_rest_comes_from_it(image_folder, tmp_path):
    ckpt = task_checkpoint(tmp_path / "nat.ckpt", label_smoothing=0.1)
    args = minimal_args(image_folder, tmp_path / "run")
    cli = build_cli(["validate", *args, "--model.label_smoothing=0.3", f"--ckpt_path={ckpt}"])
    assert cli.model.hparams.label_smoothing == 0.3  # the flag, not the checkpoint's 0.1
    assert cli.model.hparams.model_kwargs == TINY_NAT  # not given: the checkpoint's, so its weights load


def test_a_resume_trains_with_the_commands_learning_rate(image_folder, tmp_path):
    """``fit --ckpt_path last --model.lr 0.5``: the optimizer and schedule use 0.5, not the checkpoint's 2e-3."""
    run_dir = tmp_path / "run"
    build_cli(["fit", *fit_args(image_folder, run_dir, "--trainer.max_epochs=1")])
    resumed = fit_args(image_folder, run_dir, "--trainer.max_epochs=2", "--model.lr=0.5", "--ckpt_path=last")
    cli = build_cli(["fit", *resumed])
    lrs = [float(r["train/lr"]) for r in metrics_rows(run_dir, version=1) if r.get("train/lr")]
    assert len(lrs) == 6 and max(lrs) > 0.1  # the second epoch, on a schedule whose peak is 0.5
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["lr"] == 0.5 and cli.trainer.global_step == 12
    assert {g["initial_lr"] for g in saved["optimizer_states"][0]["param_groups"]} == {0.5}
