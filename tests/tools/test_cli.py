"""`attnzoo list` and `attnzoo info`: what a user sees before choosing a model."""

import json

import pytest

from attnzoo.tools import cli


def test_list_shows_every_registered_model_with_its_weights(capsys):
    cli.main(["list", "dinat_large*"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dinat_large", "dinat_large_384", "dinat_large_384_11x11"]
    assert "in22k, in22k_ft_in1k" in lines[0]


def test_info_prints_the_pretrained_config_as_json(capsys):
    cli.main(["info", "nat_tiny.in1k"])
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["url"] == "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth"
    assert cfg["license"] == "mit" and cfg["input_size"] == [3, 224, 224]


def test_info_on_an_unknown_model_names_close_ones(capsys):
    with pytest.raises(SystemExit):
        cli.main(["info", "nat_huge"])
    err = capsys.readouterr().err
    assert "'nat_huge' is not an attnzoo model; close: " in err and "nat_base" in err


def test_list_with_no_match_is_an_error():
    with pytest.raises(SystemExit, match=r"no attnzoo model matches 'vit_\*'"):
        cli.main(["list", "vit_*"])
