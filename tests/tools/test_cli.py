"""The ``attnzoo`` command: list/info as data, one flag style, one-line errors, a launcher that needs no torch."""

import argparse
import json
import logging
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import timm
import torch

import attnzoo_cli
from attnzoo.kernels import BACKENDS
from attnzoo.tools import cli
from attnzoo.tools import export as exporting
from attnzoo.tools.bench import kernels as bench_kernels
from attnzoo.tools.bench import models as bench_models


def _one_line_error(capsys, argv: list[str], prefix: str) -> str:
    """Run ``attnzoo argv`` expecting a parser-style error; return its one line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prefix}: error: ") and err.count("\n") == 1, err
    return err


def _subcommands(parser: argparse.ArgumentParser):
    """Every (sub)parser of the command, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subcommands(sub)


def test_list_shows_every_registered_model_with_its_weights(capsys):
    cli.main(["list", "dinat_large*"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["dinat_large", "dinat_large_384", "dinat_large_384_11x11"]
    assert "in22k, in22k_ft_in1k" in lines[0]
    cli.main(["list", "dinat_large*", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == [line.split()[0] for line in lines]
    assert listed[0]["tags"] == ["in22k", "in22k_ft_in1k"] and listed[1]["tags"] == ["in22k_ft_in1k"]


def test_list_with_no_match_is_an_error(capsys):
    assert "no attnzoo model matches 'vit_*'" in _one_line_error(capsys, ["list", "vit_*"], "attnzoo list")


def test_info_counts_on_the_meta_device_and_describes_the_tag(capsys):
    """Parameters and GMACs at 224 as the QuadTree README prints them (3.6M, 0.6), the weights of the tag."""
    cli.main(["info", "quadtree_b0.in1k"])
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "quadtree_b0.in1k" and info["architecture"] == "quadtree_b0"
    assert round(info["params"] / 1e6, 1) == 3.6 and round(info["gmacs"], 1) == 0.6
    assert info["input_size"] == [3, 224, 224]
    assert list(info["tags"]) == ["in1k"]
    tag = info["tags"]["in1k"]
    assert tag["url"] == timm.models.get_pretrained_cfg("quadtree_b0.in1k").url and tag["url"].startswith("https://")
    assert tag["license"] == "mit" and tag["paper_top1"] == 72.0 and tag["num_classes"] == 1000


def test_info_is_one_document_for_every_tag(monkeypatch, capsys):
    """DiNAT-L has two tags: one JSON object holds both; top-1 only for the ImageNet-1k head."""
    monkeypatch.setattr(cli, "_count", lambda name: (7, 30.4e9, [3, 224, 224]))  # GMACs are tested above
    cli.main(["info", "dinat_large"])
    info = json.loads(capsys.readouterr().out)  # one document, or this fails
    assert info["name"] == "dinat_large" and info["params"] == 7 and info["gmacs"] == 30.4
    assert set(info["tags"]) == {"in22k", "in22k_ft_in1k"}
    assert info["tags"]["in22k_ft_in1k"]["paper_top1"] == 86.6 and info["tags"]["in22k"]["paper_top1"] is None
    assert info["tags"]["in22k"]["num_classes"] == 21841 and info["tags"]["in22k"]["license"] == "mit"


@pytest.mark.parametrize(
    "name, messages",
    [
        ("nat_tinyy", ["unknown model 'nat_tinyy'; close matches: nat_tiny"]),
        ("nat_tiny.in22k", ["unknown tag 'in22k' of nat_tiny; its tags: in1k"]),
    ],
)
def test_info_on_an_unknown_name_or_tag_says_what_exists(name, messages, capsys):
    err = _one_line_error(capsys, ["info", name], "attnzoo info")
    assert all(m in err for m in messages)


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "kernels"],
        ["bench", "blocks"],
        ["bench", "models", "resnet18"],
    ],
)
def test_device_cuda_without_cuda_is_a_one_line_error(argv, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _one_line_error(capsys, [*argv, "--device", "cuda"], f"attnzoo {' '.join(argv[:2])}")
    assert err.endswith("error: --device: CUDA is not available on this machine\n")
    err = _one_line_error(capsys, [*argv, "--device", "gpu0"], f"attnzoo {' '.join(argv[:2])}")
    assert "--device: expected cpu, cuda or cuda:N, got 'gpu0'" in err


def test_one_flag_style_and_every_command_runs_something():
    """Long options are kebab-case everywhere; each leaf command names a function of attnzoo.tools.cli."""
    leaves = 0
    for parser in _subcommands(attnzoo_cli.build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                assert re.fullmatch(r"-h|--[a-z0-9]+(-[a-z0-9]+)*", option), (parser.prog, option)
        run = parser.get_default("run")
        if run is not None:
            leaves += 1
            assert run in cli.COMMANDS and parser.get_default("parser") is parser, parser.prog
    assert leaves == len(cli.COMMANDS) == 11


def test_launcher_choices_match_their_sources():
    """The launcher lists choices without importing torch; they must be the implementation's."""
    assert attnzoo_cli.BACKENDS == BACKENDS
    assert attnzoo_cli.NAT_TINY_STAGES == tuple(bench_kernels.NAT_TINY_STAGES)
    assert attnzoo_cli.GATHER_SHAPES == tuple(bench_kernels.GATHER_SHAPES)
    assert attnzoo_cli.PRECISIONS == tuple(bench_models.PRECISIONS)


def test_help_and_parse_errors_import_neither_torch_nor_timm():
    """``attnzoo --help`` answers in a fresh interpreter without torch, timm or attnzoo, well under a second."""
    code = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "import attnzoo_cli\n"
        "for argv in (['--help'], ['bench', 'kernels', '--help'], ['timm', '--help'], ['bench', 'kernels', '--bad']):\n"
        "    try:\n"
        "        attnzoo_cli.main(argv)\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code)\n"
        "print('ELAPSED', time.perf_counter() - start)\n"
        "print('heavy', sorted(m for m in ('torch', 'timm', 'attnzoo') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    out = done.stdout
    assert done.returncode == 0 and "heavy []" in out, out + done.stderr
    assert out.count("exit 0") == 3 and "exit 2" in out and "usage: attnzoo bench kernels" in out
    assert done.stderr == "attnzoo: error: unrecognized arguments: --bad\n"
    assert float(re.search(r"ELAPSED (\S+)", out).group(1)) < 1.0


def test_cuda_home_warning_alone_is_silenced():
    """cpp_extension's CUDA_HOME notice on a GPU-less machine is dropped; its other messages are not."""
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("torch.utils.cpp_extension")
    logger.addHandler(handler)
    try:
        cli.quiet_cuda_home_warning()
        cli.quiet_cuda_home_warning()  # idempotent
        logger.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        logger.warning("Error checking compiler version for %s", "c++")
    finally:
        logger.removeHandler(handler)
    assert seen == ["Error checking compiler version for c++"]
    assert sum(isinstance(f, cli._CudaHomeFilter) for f in logger.filters) == 1


def test_export_wiring_writes_the_folder_then_onnx(tmp_path, monkeypatch, capsys):
    calls = []

    def export_checkpoint(checkpoint, out_dir, ema=False, datasets=(), force=False):
        calls.append(("checkpoint", checkpoint, out_dir, ema, datasets, force))
        out_dir.mkdir()
        config = {"architecture": "nat_mini", "num_classes": 3, "pretrained_cfg": {"input_size": [3, 32, 32]}}
        (out_dir / "config.json").write_text(json.dumps(config))
        return out_dir

    def export_onnx(out_dir, **tolerance):
        calls.append(("onnx", out_dir, tolerance))
        return out_dir / "model.onnx"

    monkeypatch.setattr(exporting, "export_checkpoint", export_checkpoint)
    monkeypatch.setattr(exporting, "export_onnx", export_onnx, raising=False)
    out = tmp_path / "out"
    cli.main(["export", "run.ckpt", str(out), "--ema", "--onnx", "--onnx-atol", "0.01", "--dataset", "a/b"])
    assert calls == [("checkpoint", Path("run.ckpt"), out, True, ["a/b"], False), ("onnx", out, {"atol": 0.01})]
    assert f"{out / 'README.md'}, {out / 'model.onnx'}" in capsys.readouterr().out

    def mismatch(out_dir, **tolerance):
        raise ValueError("model.onnx differs from the eager model by 0.3")

    monkeypatch.setattr(exporting, "export_onnx", mismatch, raising=False)
    err = _one_line_error(capsys, ["export", "run.ckpt", str(tmp_path / "again"), "--onnx"], "attnzoo export")
    assert "differs from the eager model" in err


def test_push_to_hub_wiring_prints_the_url_and_reports_errors(monkeypatch, capsys):
    calls = []

    def push_to_hub(checkpoint, repo_id, *, ema, private, revision, token, commit_message, datasets):
        calls.append((checkpoint, repo_id, ema, private, revision, token, commit_message, datasets))
        if repo_id == "me/missing":
            raise FileNotFoundError(f"checkpoint: no such file {checkpoint}")
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setitem(sys.modules, "attnzoo.tools.hub", types.SimpleNamespace(push_to_hub=push_to_hub))
    argv = ["push-to-hub", "run.ckpt", "me/nat", "--ema", "--private", "--revision", "dev", "--token", "t"]
    cli.main([*argv, "--message", "m", "--dataset", "a/b", "--dataset", "c/d"])
    assert capsys.readouterr().out == "https://huggingface.co/me/nat\n"
    assert calls == [(Path("run.ckpt"), "me/nat", True, True, "dev", "t", "m", ["a/b", "c/d"])]
    err = _one_line_error(capsys, ["push-to-hub", "gone.ckpt", "me/missing"], "attnzoo push-to-hub")
    assert "checkpoint: no such file gone.ckpt" in err
    assert calls[-1] == (Path("gone.ckpt"), "me/missing", False, False, None, None, None, [])
