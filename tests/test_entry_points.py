"""The console scripts' own behaviour: ``--version``, the install command a missing extra names (a checkout or
not), ``export --onnx`` without the ``[onnx]`` extra, and the dependency noise the entry points silence."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import attnzoo_cli
from attnzoo_cli import install_hint
from tests.source_tree import ROOT

BIN = Path(sys.executable).parent


def _hide(monkeypatch, *names: str) -> None:
    """``importlib.util.find_spec`` answers None for ``names``, as if they were not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


# --- --version ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["attnzoo", "attnzoo-train"])
def test_version(script):
    run = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{script} {metadata.version('attnzoo')}\n" and run.stderr == ""


def test_train_version_imports_neither_lightning_nor_torch():
    code = (
        "import sys, attnzoo_cli; attnzoo_cli.train(['--version'])\n"
        "print(sorted({'lightning', 'torch'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"attnzoo-train {attnzoo_cli.version()}", "[]"]


# --- install hints ------------------------------------------------------------------------------------------------


def test_a_checkout_gets_an_editable_install_of_itself(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert install_hint("train") == "pip install -e '.[train]'"
    monkeypatch.chdir(tmp_path)
    assert install_hint("train") == f"pip install -e '{ROOT}[train]'"


class _Dist:
    def __init__(self, direct_url: dict | None):
        self.direct_url = direct_url

    def read_text(self, name):
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """attnzoo_cli as installed in site-packages (no checkout around it), with the given distributions."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(attnzoo_cli, "__file__", str(site / "attnzoo_cli.py"))
    monkeypatch.chdir(tmp_path)

    def use(*direct_urls):
        dists = [_Dist(d) for d in direct_urls]
        monkeypatch.setattr(metadata, "distributions", lambda name=None: iter(dists))

    return use


def test_a_package_from_an_index_gets_the_index_command(installed):
    installed(None)  # pip writes no direct_url.json for an index install
    assert install_hint("train") == "pip install 'attnzoo[train]'"


def test_a_folder_or_wheel_install_names_where_it_came_from(installed, tmp_path):
    source = tmp_path / "my checkout"
    source.mkdir()
    installed(None, {"url": source.as_uri(), "dir_info": {}})  # a stale egg-info first, then pip's record
    assert install_hint("train") == f"pip install '{source}[train]'"
    installed({"url": source.as_uri(), "dir_info": {"editable": True}})
    assert install_hint("viz") == f"pip install -e '{source}[viz]'"
    wheel = tmp_path / "attnzoo-0.1.0-py3-none-any.whl"
    wheel.touch()
    installed({"url": wheel.as_uri(), "archive_info": {}})
    assert install_hint("onnx") == f"pip install '{wheel}[onnx]'"
    wheel.unlink()  # gone since: nothing better than the index to offer
    assert install_hint("onnx") == "pip install 'attnzoo[onnx]'"
    installed({"url": "https://github.com/o/attnzoo", "vcs_info": {"vcs": "git", "commit_id": "abc123"}})
    assert install_hint("train") == "pip install 'attnzoo[train] @ git+https://github.com/o/attnzoo@abc123'"


def test_train_without_lightning_names_the_extra_and_the_checkouts_command(monkeypatch, capsys):
    _hide(monkeypatch, "lightning")
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        attnzoo_cli.train(["fit"])
    assert exit_info.value.code == (
        "attnzoo-train: error: training needs lightning (the [train] extra): pip install -e '.[train]'"
    )


def test_export_onnx_without_the_extra_is_one_line_naming_the_package_and_the_extra(monkeypatch, tmp_path, capsys):
    from attnzoo.tools import cli

    _hide(monkeypatch, "onnxscript")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(tmp_path / "run.ckpt"), str(out), "--onnx"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"attnzoo export: error: --onnx needs onnxscript (the [onnx] extra): {install_hint('onnx')}\n"
    assert not out.exists()  # refused before anything was written


def test_export_onnx_function_names_the_missing_package(monkeypatch, tmp_path):
    from attnzoo.tools.export import export_onnx

    _hide(monkeypatch, "onnx", "onnxruntime")
    with pytest.raises(RuntimeError, match=r"needs onnx, onnxruntime \(the \[onnx\] extra\): pip install"):
        export_onnx(tmp_path)


# --- dependency noise ---------------------------------------------------------------------------------------------


@pytest.fixture
def quiet():
    """quiet_dependencies(), undone afterwards (warning filters and the loggers' filters)."""
    loggers = [logging.getLogger(name) for name in attnzoo_cli.ADVERTISING_LOGGERS]
    before = [list(logger.filters) for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        attnzoo_cli.quiet_dependencies()
        yield
    for logger, filters in zip(loggers, before, strict=True):
        logger.filters[:] = filters


def test_lightning_advertisements_are_dropped_and_nothing_else(quiet, caplog):
    pytest.importorskip("lightning")
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    with caplog.at_level(logging.INFO):
        for advertisement in attnzoo_cli.ADVERTISEMENTS:
            rank_zero_info(advertisement + " to enable ...")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_known_deprecation_warnings_are_dropped_and_nothing_else(quiet, monkeypatch):
    jsonargparse = pytest.importorskip("jsonargparse")
    from torch.utils._pytree import LeafSpec

    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--x", type=int, default=None)
    with warnings.catch_warnings(record=True) as caught:
        LeafSpec()  # what Lightning's _pytree builds on every run
        config = parser.parse_args([])
        parser.dump(config, skip_none=False)  # what Lightning's SaveConfigCallback passes
        parser.instantiate_classes(config)  # what LightningCLI calls
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["some other deprecation"]
