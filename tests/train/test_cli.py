"""``attnzoo-train`` end to end on a generated ImageFolder: fit, validate, export, resume."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from attnzoo.tools import cli as tools_cli
from attnzoo.tools.export import export_checkpoint
from attnzoo.train import ClassificationTask
from attnzoo.train.checkpoint import read_checkpoint
from attnzoo.train.cli import build_cli, main
from tests.train.conftest import fit_args, metrics_rows
from tests.train.helpers import TINY_NAT

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _column(rows, key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


def test_fit_writes_best_and_last_checkpoints_csv_and_tensorboard_logs(trained):
    run_dir, cli = trained
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    assert (run_dir / "csv" / "version_0" / "config.yaml").is_file()  # the resolved config of the run
    rows = metrics_rows(run_dir)
    acc, ema_acc = _column(rows, "val/acc1"), _column(rows, "val/ema_acc1")
    assert len(acc) == len(ema_acc) == 3  # the EMA is validated alongside, every epoch
    assert all(0.0 <= a <= 1.0 for a in acc + ema_acc + _column(rows, "val/acc5"))
    assert max(acc) > 0.6  # three classes (chance 1/3): it learned
    assert cli.trainer.global_step == 3 * (48 // 8)  # 48 images, batch 8, drop_last


def test_lr_follows_warmup_then_cosine_per_step(trained):
    run_dir, _ = trained
    lrs = _column(metrics_rows(run_dir), "train/lr")
    assert len(lrs) == 18 and lrs[0] == pytest.approx(1e-4)  # warmup_lr at the first of 3 x 6 updates
    warmup, decay = lrs[:6], lrs[5:]
    assert all(
        b - a == pytest.approx((2e-3 - 1e-4) / 6) for a, b in zip(warmup, warmup[1:], strict=False)
    )  # linear, 1 epoch
    assert all(
        a > b for a, b in zip(decay, decay[1:], strict=False)
    )  # then cosine (timm: warmup inside the cosine's span)
    assert lrs[6] == pytest.approx(1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + math.cos(math.pi * 6 / 18)))
    assert lrs[-1] < 1e-4


def test_validate_from_the_best_checkpoint_reproduces_its_score(trained, image_folder):
    run_dir, fit_cli = trained
    best = fit_cli.trainer.checkpoint_callback
    assert best.best_model_path.endswith("best.ckpt")
    cli = build_cli(["validate", *fit_args(image_folder, run_dir), "--ckpt_path", best.best_model_path])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["val/acc1"]) == pytest.approx(float(best.best_model_score), abs=1e-6)
    assert 0.0 <= float(metrics["val/acc5"]) <= 1.0


def test_checkpoint_reads_without_lightning_objects(trained):
    run_dir, _ = trained
    contents = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert contents.model == "nat_mini" and contents.num_classes == 3
    assert contents.model_kwargs["depths"] == TINY_NAT["depths"]
    assert contents.data_config["input_size"] == [3, 32, 32]
    assert contents.label_names == ["circle", "square", "stripes"]  # the class folders, by class index
    assert all(not k.startswith(("model.", "model_ema.")) for k in contents.state_dict)


@pytest.mark.parametrize("ema", [False, True])
def test_export_then_timm_reload_gives_identical_logits(trained, tmp_path, ema, capsys):
    run_dir, _ = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "export"
    tools_cli.main(["export", str(ckpt), str(out)] + (["--ema"] if ema else []))
    assert "model.safetensors" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "nat_mini" and config["num_classes"] == 3
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]  # the preprocessing it was trained with

    task = ClassificationTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    reference = task.model_ema.module if ema else task.model
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_file = timm.create_model(
        "nat_mini",
        pretrained=True,
        num_classes=3,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=3),
        **TINY_NAT,
    ).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(by_dir(x), expected)
        assert torch.equal(by_file(x), expected)
        other = task.model if ema else task.model_ema.module
        assert not torch.equal(other(x), expected)  # the two weight sets really differ
    assert tuple(timm.data.resolve_model_data_config(by_dir)["input_size"]) == (3, 32, 32)


def test_export_errors_name_the_problem(trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out")
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="not a ClassificationTask checkpoint"):
        export_checkpoint(tmp_path / "plain.ckpt", tmp_path / "out")
    with pytest.raises(SystemExit):
        tools_cli.main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")])


def test_an_interrupted_fit_resumes_from_last_and_continues_the_step_count(image_folder, tmp_path):
    """Ctrl-C mid-epoch writes last.ckpt; ``--ckpt_path last`` continues from that step (any timm model)."""
    run_dir = tmp_path / "run"
    common = fit_args(
        image_folder,
        run_dir,
        "--trainer.max_epochs=2",
        "--last_checkpoint.every_n_train_steps=2",
        model="test_vit",
        kwargs={"img_size": 32},
    )
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful Ctrl-C: save, tear down, exit 1
            interrupt = ["--trainer.callbacks+=tests.train.helpers.InterruptAt", "--trainer.callbacks.step=9"]
            build_cli(["fit", *common, *interrupt])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT after a KeyboardInterrupt
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 9  # written at the interruption, not only at the last 2-step mark (8)

    cli = build_cli(["fit", *common, "--trainer.callbacks+=tests.train.helpers.RecordStart", "--ckpt_path=last"])
    start = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RecordStart")
    assert (start.start_step, start.start_epoch) == (9, 1)  # in the middle of epoch 1 (6 steps per epoch)
    assert cli.trainer.global_step == 2 * 6  # the planned end, not 9 + 12
    resumed = metrics_rows(run_dir, version=1)
    assert min(int(r["step"]) for r in resumed) >= 9  # the second run trained (and logged) only the rest


def test_export_needs_no_lightning(trained, tmp_path):
    """``attnzoo export`` (tools floor, through the training floor's checkpoint reader) needs no Lightning."""
    run_dir, _ = trained
    code = (
        "import sys\n"
        "sys.modules['lightning'] = sys.modules['pytorch_lightning'] = None  # any import of them fails\n"
        "from attnzoo.tools import cli\n"
        f"cli.main(['export', {str(run_dir / 'checkpoints' / 'best.ckpt')!r}, {str(tmp_path / 'out')!r}])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_checkpoint_label_names_must_fit_the_classes(trained, tmp_path):
    ckpt = torch.load(trained[0] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["label_names"] = ["circle", "square"]
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="label_names is not a list of its 3 class names"):
        read_checkpoint(tmp_path / "bad.ckpt")


@pytest.mark.parametrize("where", ["flag", "yaml", "backbone"])
def test_a_mistyped_model_name_ends_in_one_line_with_close_names(where, tmp_path):
    """Not jsonargparse's usage and config dump: one line naming the argument and the close model names."""
    if where == "flag":
        args = ["--config", "digits", "--model.init_args.model", "nat_minii"]
    elif where == "yaml":
        config = yaml.safe_load((CONFIGS / "demo" / "digits.yaml").read_text())
        config["model"]["init_args"]["model"] = "nat_minii"
        (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
        args = ["--config", str(tmp_path / "typo.yaml")]
    else:
        args = ["--config", "demo/detection", "--model.init_args.backbone", "nat_minii"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, f"--trainer.default_root_dir={tmp_path}"])
    message = str(exit_info.value.code)
    key = "backbone" if where == "backbone" else "model"
    assert message.startswith(f"attnzoo-train: error: model.init_args.{key}: unknown model 'nat_minii'")
    assert "\n" not in message and "close matches: nat_mini" in message
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # it stopped before the run started
