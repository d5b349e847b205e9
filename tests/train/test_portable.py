"""Recipes run on any machine: devices, strategy and precision follow the machine, the paper's total batch is kept by
gradient accumulation for any world size, and the class count follows the data (issue 28)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from attnzoo.train import CocoData
from attnzoo.train.cli import CommandError, build_cli
from attnzoo.train.portable import accumulation, cpu_precision
from attnzoo.train.synthetic import write_ade_shapes
from tests.train.helpers import write_coco_2017

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "demo")
CLASSIFICATION = sorted((CONFIGS / "classification").glob("*.yaml"))
DETECTION = sorted((CONFIGS / "detection").glob("*.yaml"))
SEGMENTATION = sorted((CONFIGS / "segmentation").glob("*.yaml"))
# the smallest recipe of each classification family, and the digits demo
FAST = ["nat_mini", "litv2_small", "quadtree_b0", "agent_pvt_tiny", "digits"]


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """``train/<class>/*`` with 1 image of each of 2 classes, ``val/`` the same: fewer than any recipe's batch (and
    the least memory for the large models at 384 px)."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, count in (("train", 1), ("val", 1)):
        for kind in ("a", "b"):
            folder = root / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return write_coco_2017(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory):
    """ADE20K's layout: ``images/{training,validation}/`` and their label maps under ``annotations/``."""
    return write_ade_shapes(tmp_path_factory.mktemp("ade"), num_train=2, num_val=1)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(CONFIGS)) for p in RECIPES])
def test_a_recipe_names_no_machine_but_keeps_the_papers_total_batch(path):
    config = yaml.safe_load(path.read_text())
    trainer = config["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["strategy"]) == ("auto", "auto", "auto")
    assert "accumulate_grad_batches" not in trainer  # derived from total_batch_size
    assert config["total_batch_size"] == 8 * config["data"]["init_args"]["batch_size"]  # the authors' 8 GPUs
    if path.parent.name in ("classification", "detection"):
        assert "num_classes" not in config["data"]["init_args"]  # the data's class folders / categories


def test_accumulation_keeps_the_total_for_any_world_size():
    assert accumulation(1024, 128, 1, None)[0] == 8
    assert accumulation(1024, 128, 8, 1)[0] == 1
    steps, note = accumulation(1024, 128, 2, 4)
    assert steps == 4 and note == "total_batch_size 1024 = 128 per process x 2 processes x 4 accumulated"
    steps, note = accumulation(1000, 128, 3, None)
    assert steps == 3 and "1152" in note  # rounded up, and said
    with pytest.raises(ValueError, match=r"^total_batch_size 1024 needs trainer.accumulate_grad_batches 8 .* not 2;"):
        accumulation(1024, 128, 1, 2)


def test_float16_falls_back_on_the_cpu_with_a_note():
    note = "trainer.precision 16-mixed needs a GPU; running in 32-true on the CPU"
    assert cpu_precision("16-mixed") == ("32-true", note)
    assert cpu_precision("bf16-mixed") == ("bf16-mixed", None)
    assert cpu_precision("32-true") == ("32-true", None)


def _cli(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with torch.device("meta"):
        return build_cli(args, run=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_a_recipe_builds_for_this_cpu(tiny_tree, tmp_path, monkeypatch, capsys):
    cli = _cli(["--config", "nat_mini", "--data.root", str(tiny_tree)], tmp_path, monkeypatch)
    assert cli.trainer.accumulate_grad_batches == 8  # 1024 = 128 x 1 process x 8
    assert cli.trainer.precision == "32-true" and cli.trainer.world_size == 1
    assert cli.model.num_classes == cli.datamodule.num_classes == 2


def test_two_processes_accumulate_half_as_much(tiny_tree, tmp_path, monkeypatch):
    args = ["--config", "nat_mini", "--data.root", str(tiny_tree), "--trainer.accelerator=cpu", "--trainer.devices=2"]
    cli = _cli([*args, "--trainer.strategy=ddp"], tmp_path, monkeypatch)
    assert cli.trainer.world_size == 2 and cli.trainer.accumulate_grad_batches == 4


def test_an_inconsistent_accumulation_is_one_error_naming_it(tiny_tree, tmp_path, monkeypatch):
    args = ["--config", "nat_mini", "--data.root", str(tiny_tree), "--trainer.accumulate_grad_batches=2"]
    with pytest.raises(CommandError, match=r"^total_batch_size 1024 needs trainer.accumulate_grad_batches 8 with"):
        _cli(args, tmp_path, monkeypatch)
    cli = _cli([*args, "--total_batch_size=null"], tmp_path, monkeypatch)
    assert cli.trainer.accumulate_grad_batches == 2


def offline(name: str) -> list[str]:
    """This machine has no network: a recipe that downloads pretrained weights (a fine-tuning, a dense backbone, a
    distillation teacher) starts from random weights instead, the only other override."""
    path = Path(name) if name.endswith(".yaml") else None
    init_args = yaml.safe_load(path.read_text())["model"]["init_args"] if path else {}
    flags = [f"--model.init_args.{key}=false" for key in ("pretrained", "teacher_pretrained") if init_args.get(key)]
    return flags + (["--model.init_args.pretrained_file=null"] if init_args.get("pretrained_file") else [])


def _fast_dev_run(name: str, root: Path, tmp_path: Path, monkeypatch) -> None:
    """``attnzoo-train fit --config NAME --data.root ROOT --trainer.fast_dev_run true``: nothing else overridden
    (but for downloads: :func:`offline`)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    build_cli(["fit", "--config", name, "--data.root", str(root), "--trainer.fast_dev_run", "true", *offline(name)])


@pytest.mark.parametrize("name", FAST)
def test_the_smallest_recipes_run_on_the_cpu_with_only_the_data_root(name, tiny_tree, tmp_path, monkeypatch):
    root = tmp_path / "digits" if name == "digits" else tiny_tree
    _fast_dev_run(name, root, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", CLASSIFICATION, ids=[p.stem for p in CLASSIFICATION])
def test_every_classification_recipe_runs_on_the_cpu_with_only_the_data_root(path, tiny_tree, tmp_path, monkeypatch):
    _fast_dev_run(str(path), tiny_tree, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", DETECTION, ids=[p.stem for p in DETECTION])
def test_every_detection_recipe_runs_on_the_cpu_with_only_the_data_root(path, tiny_coco, tmp_path, monkeypatch):
    _fast_dev_run(str(path), tiny_coco, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", SEGMENTATION, ids=[p.stem for p in SEGMENTATION])
def test_every_segmentation_recipe_runs_on_the_cpu_with_only_the_data_root(path, tiny_ade, tmp_path, monkeypatch):
    _fast_dev_run(str(path), tiny_ade, tmp_path, monkeypatch)


@pytest.mark.parametrize("path", DETECTION, ids=[p.stem for p in DETECTION])
def test_a_detection_recipe_gives_task_and_data_the_same_sizes(path, tmp_path):
    """Lightning refuses to fit a task and a data module whose hparams share a key with different values."""
    config = yaml.safe_load(path.read_text())
    for key in ("min_size", "max_size"):
        assert config["model"]["init_args"][key] == config["data"]["init_args"][key], key
    root = write_coco_2017(tmp_path / "coco")
    data = CocoData(root=root, **{k: config["data"]["init_args"][k] for k in ("min_size", "max_size")})
    data.setup("fit")
    sizes = config["data"]["init_args"]["min_size"]
    image, _ = data.datasets["val"][0]
    assert min(image.shape[-2:]) == (max(sizes) if isinstance(sizes, list) else sizes)  # evaluated at the largest
