"""Every YAML under configs/ parses and instantiates; every registered zoo variant has a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import attnzoo
from attnzoo.train import ClassificationTask, CocoData, DetectionTask, SegFolderData, SegmentationTask
from attnzoo.train.cli import build_cli
from tests.train.helpers import write_coco_2017

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the detection/segmentation recipes and demos: (task, data module, checkpoint monitors they may choose)
DENSE = {
    "detection": (DetectionTask, CocoData, {"val/map", "val/map_50"}),
    "segmentation": (SegmentationTask, SegFolderData, {"val/miou"}),
}
DENSE_ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name in DENSE or p.stem in DENSE)
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in DENSE_ALL)
CLASSIFICATION = CONFIGS / "classification"
# The recipes ask for 8 GPUs and mixed precision; the dry instantiation runs them on this CPU.
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]


def test_every_registered_variant_has_a_classification_recipe():
    """A model registered in attnzoo without ``configs/classification/<name>.yaml`` fails here: add its recipe."""
    missing = [name for name in attnzoo.list_models() if not (CLASSIFICATION / f"{name}.yaml").is_file()]
    assert not missing, f"no configs/classification/<name>.yaml with the paper's recipe for: {', '.join(missing)}"


@pytest.mark.parametrize("name", attnzoo.list_models())
def test_a_recipe_trains_its_own_variant_and_cites_its_source(name):
    path = CLASSIFICATION / f"{name}.yaml"
    if not path.is_file():
        pytest.skip("reported by test_every_registered_variant_has_a_classification_recipe")
    text = path.read_text()
    assert "# Source: " in text.split("\n", 3)[1] + text.split("\n", 3)[2], "cite the recipe's source file on top"
    config = yaml.safe_load(text)
    assert config["model"]["init_args"]["model"].split(".")[0] == name


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_config_prints_its_resolved_form(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["trainer"]["default_root_dir"]  # where checkpoints/ and the logs go
    assert printed["checkpoint"]["monitor"] == "val/acc1" and printed["last_checkpoint"]["filename"] == "last"


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(CONFIGS)) for p in ALL])
def test_config_instantiates(path, image_folder):
    """Task, data module and trainer are built (the models on the meta device: no memory, no weights)."""
    root = [] if path.parent.name == "demo" else [f"--data.root={image_folder}"]  # the classes are the data's
    with torch.device("meta"):
        cli = build_cli(["--config", str(path), *ON_CPU, *root], run=False)
    assert isinstance(cli.model, ClassificationTask)
    assert cli.model.num_classes == cli.datamodule.num_classes  # linked
    assert sum(p.numel() for p in cli.model.model.parameters()) > 0
    assert cli.trainer.checkpoint_callback.dirpath.endswith("checkpoints")


@pytest.mark.parametrize("path", DENSE_ALL, ids=[str(p.relative_to(CONFIGS)) for p in DENSE_ALL])
def test_dense_config_cites_its_source_and_instantiates(path, tmp_path):
    task, data, monitors = DENSE[path.parent.name if path.parent.name in DENSE else path.stem]
    header = [line for line in path.read_text().split("\n")[:12] if line.startswith("#")]
    assert any(line.startswith("# Source: ") for line in header), "cite the recipe's source in the top comment"
    # the detection recipes count the categories of the data's annotations
    root = write_coco_2017(tmp_path / "coco") if path.parent.name == "detection" else tmp_path
    before = sorted(tmp_path.rglob("*"))
    with torch.device("meta"):
        cli = build_cli(["--config", str(path), *ON_CPU, f"--data.root={root}"], run=False)
    assert isinstance(cli.model, task) and isinstance(cli.datamodule, data)
    assert cli.model.num_classes == cli.datamodule.num_classes  # linked
    assert cli.trainer.checkpoint_callback.monitor in monitors
    assert sorted(tmp_path.rglob("*")) == before  # nothing written or downloaded at instantiation
