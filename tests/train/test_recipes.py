"""``--config nat_tiny``: the recipes shipped in the wheel found by name, from any folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnzoo.train.cli import build_cli, main
from attnzoo.train.recipes import RecipeError, list_recipes, resolve_config, resolve_config_args

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_shipped_recipes_are_the_repositorys_and_each_resolves_by_its_short_name():
    recipes = list_recipes()
    assert {p.resolve() for p in recipes.values()} == {p.resolve() for p in CONFIGS.glob("*/*.yaml")}
    for name, path in recipes.items():
        assert resolve_config(name) == resolve_config(name.split("/")[1]) == str(path)  # short names are unique


def test_files_win_and_path_like_values_are_left_to_the_parser(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nat_tiny").write_text("trainer: {}\n")  # a file of that name is the file
    assert resolve_config("nat_tiny") == "nat_tiny"
    for value in ("missing.yaml", "./nat_mini", "some/folder/nat_mini", "other/nat_mini", "{trainer: {}}"):
        assert resolve_config(value) == value
    resolved = resolve_config_args(["fit", "-c", "digits", "--config=demo/digits", "--trainer.max_epochs=1"])
    assert resolved[:2] == ["fit", "-c"] and resolved[3:] == ["--config=" + resolved[2], "--trainer.max_epochs=1"]
    assert Path(resolved[2]).resolve() == (CONFIGS / "demo" / "digits.yaml").resolve()


def test_an_unknown_recipe_ends_in_one_line_with_close_names(capsys):
    with pytest.raises(RecipeError, match=r"close matches: classification/nat_tiny"):
        resolve_config("nat_tinyy")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "classification/nat_tinyy"])
    message = str(exit_info.value.code)
    assert "\n" not in message and message.startswith("attnzoo-train: error: --config:")
    assert "classification/nat_tiny" in message and "`attnzoo-train recipes`" in message


def test_a_recipe_by_name_runs_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", "digits", "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "attnzoo.train.DigitsData"
    assert printed["trainer"]["default_root_dir"] == "lightning_logs/digits"  # relative to the working folder


def test_recipes_lists_names_with_their_summaries(capsys):
    main(["recipes", "demo/"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["demo/detection", "demo/digits", "demo/segmentation"]
    summary = (CONFIGS / "demo" / "digits.yaml").read_text().split("\n", 1)[0].lstrip("# ")
    assert summary[:60] in lines[1]  # the recipe's first comment line
    main(["recipes", "nat_t*"])  # a glob, as `attnzoo list` takes, over the full or the short name
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["classification/nat_tiny"]
    with pytest.raises(SystemExit, match="no recipe name matches 'zzz'"):
        main(["recipes", "zzz"])
