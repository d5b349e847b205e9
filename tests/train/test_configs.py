"""Every YAML under configs/ parses and instantiates; every registered zoo variant has a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import attnzoo
from attnzoo.train import ClassificationTask
from attnzoo.train.cli import build_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the detection/segmentation recipes and demos are checked by test_detection.py / test_segmentation.py
DENSE = {"detection", "segmentation"}
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name not in DENSE and p.stem not in DENSE)
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
def test_config_instantiates(path):
    """Task, data module and trainer are built (the models on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        cli = build_cli(["--config", str(path), *ON_CPU], run=False)
    assert isinstance(cli.model, ClassificationTask)
    assert cli.model.num_classes == cli.datamodule.num_classes  # linked
    assert sum(p.numel() for p in cli.model.model.parameters()) > 0
    assert cli.trainer.checkpoint_callback.dirpath.endswith("checkpoints")
