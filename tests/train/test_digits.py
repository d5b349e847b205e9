"""The offline demo data: scikit-learn's digits written once as an ImageFolder tree."""

from __future__ import annotations

import pytest
from PIL import Image

from attnzoo.train import DigitsData, write_digits
from attnzoo.train.checkpoint import read_checkpoint
from attnzoo.train.cli import build_cli
from attnzoo.train.digits import default_root


def test_write_digits_writes_a_stratified_split_once(tmp_path):
    root = write_digits(tmp_path / "digits")
    train = sorted((root / "train").rglob("*.png"))
    val = sorted((root / "validation").rglob("*.png"))
    assert (len(train), len(val)) == (1437, 360)  # all 1,797 images, 80/20
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    assert all(34 <= len(list((root / "validation" / str(d)).iterdir())) <= 38 for d in range(10))  # stratified
    with Image.open(train[0]) as img:
        assert img.size == (8, 8) and img.mode == "L" and img.getextrema()[1] > 200  # real 16-level scans
    stamp = (root / ".complete").stat().st_mtime_ns
    assert write_digits(root) == root and (root / ".complete").stat().st_mtime_ns == stamp  # not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-")]  # no temporary left


def test_write_digits_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "other.txt").write_text("not digits")
    with pytest.raises(FileExistsError, match="root: .* is not a finished digits tree"):
        write_digits(tmp_path)


def test_digits_data_writes_the_tree_in_prepare_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    assert default_root() == tmp_path / "cache" / "digits"
    data = DigitsData()
    assert data.num_classes == 10 and not data.root.exists()
    data.prepare_data()
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and y.max() <= 9
    assert data.data_config["mean"] == (0.5, 0.5, 0.5)


@pytest.mark.quick
def test_the_digits_recipe_fits_through_the_cli(tmp_path, monkeypatch):
    """The shipped demo recipe, by name, on the real digits: a short fit writes both checkpoints and a score."""
    monkeypatch.setenv("ATTNZOO_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    args = ["fit", "--config", "digits", f"--trainer.default_root_dir={run_dir}", "--trainer.max_epochs=1"]
    args += ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"]
    cli = build_cli(args)
    assert cli.trainer.global_step == 3
    assert {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")} == {"best.ckpt", "last.ckpt"}
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc1"]) <= 1.0
    assert read_checkpoint(run_dir / "checkpoints" / "best.ckpt").label_names == [str(d) for d in range(10)]
