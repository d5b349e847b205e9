"""A bad option or value is one line naming the key, exit status 2 (jsonargparse printed the whole usage)."""

from __future__ import annotations

import argparse

import pytest

from attnzoo.train.cli import main


def _error_lines(capsys, *args: str) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", "digits", *args])
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--trainer.max_epochs", "abc"], "trainer.max_epochs: expected int, got 'abc'"),
        (
            ["--model.init_args.lr", "abc"],
            "model.init_args.lr: expected float, got 'abc' (attnzoo.train.ClassificationTask)",
        ),
        (
            ["--model.init_args.nonexistent", "3"],
            "model.init_args: option 'nonexistent' is not accepted (attnzoo.train.ClassificationTask)",
        ),
        (
            ["--data.init_args.batch_size", "x"],
            "data.init_args.batch_size: expected int, got 'x' (attnzoo.train.DigitsData)",
        ),
        (["--no_such_option", "1"], "unrecognized arguments: --no_such_option 1"),
    ],
)
def test_a_bad_argument_is_one_line_naming_its_key(capsys, args, expected):
    lines = _error_lines(capsys, *args)
    assert lines == [f"attnzoo-train: error: {expected} (`attnzoo-train fit --help` lists the options)"]


def test_the_debug_variable_keeps_jsonargparses_exception(monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    with pytest.raises(argparse.ArgumentError, match='Parser key "trainer.max_epochs"'):
        main(["fit", "--config", "digits", "--trainer.max_epochs", "abc"])
