"""What `pip install attnzoo` gives: the core (torch, torchvision, timm, safetensors, huggingface_hub, triton) runs
every model; Lightning and the rest of training are the `[train]` extra.

The wheel is built from a copy of the source tree (so nothing is written into the checkout) and installed into a
fresh virtual environment that sees exactly the distributions the wheel's core requirements pull in, resolved from
their own metadata. They are linked from this environment rather than installed again: torch alone is gigabytes.
`pip check` in the fresh environment proves the linked set satisfies every requirement it holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.source_tree import ROOT, copy_source_tree


def _core_closure(requirements: list[str]) -> set[str]:
    """Distribution names reached from ``requirements`` (no extras of attnzoo), following each one's metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    pending = [Requirement(text) for text in requirements]
    while pending:
        requirement = pending.pop()
        extras = frozenset(requirement.extras)
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""})
        ):
            continue
        key = (canonicalize_name(requirement.name), extras)
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for text in metadata.distribution(requirement.name).requires or []:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ({""} | extras)):
                pending.append(child)
    return names


def _link_distributions(names: set[str], into: Path) -> None:
    """Symlink each distribution's top-level files (packages, modules, .dist-info) into ``into``."""
    into.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            target = into / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = copy_source_tree(tmp_path_factory.mktemp("source"))
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--wheel-dir", str(dist), str(source)], check=True, capture_output=True)
    (built,) = dist.glob("attnzoo-*.whl")
    return built


def test_wheel_ships_the_recipes_the_license_and_no_tests(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "attnzoo/configs/classification/nat_tiny.yaml" in names
    assert len([n for n in names if n.startswith("attnzoo/configs/") and n.endswith(".yaml")]) == len(
        list((ROOT / "configs").glob("*/*.yaml"))
    )
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "attnzoo_cli.py" in names and not any(n.startswith("tests/") for n in names)
    core = " ".join(_core_requirements(wheel, tmp_path))
    assert not any(name in core for name in ("lightning", "natten", "scikit-learn", "tensorboard"))


def test_core_install_runs_a_model_without_lightning(wheel, tmp_path):
    _link_distributions(_core_closure(_core_requirements(wheel, tmp_path)), tmp_path / "core")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "attnzoo-core.pth").write_text(f"{tmp_path / 'core'}\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    script = (
        "import importlib.util, sys, torch, timm, attnzoo\n"
        "assert importlib.util.find_spec('lightning') is None, 'lightning is visible'\n"
        "assert attnzoo.__file__.startswith(sys.prefix), attnzoo.__file__\n"
        "model = timm.create_model('nat_mini', num_classes=3, depths=(1, 1, 1, 1)).eval()\n"
        "with torch.no_grad():\n"
        "    print(tuple(model(torch.randn(1, 3, 64, 64)).shape))\n"
        "import importlib.resources as r\n"
        "print((r.files('attnzoo.configs') / 'classification' / 'nat_tiny.yaml').is_file())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["(1,", "3)", "True"]

    listing = subprocess.run([str(venv / "bin" / "attnzoo"), "list", "nat_mini"], capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stdout.split() == ["nat_mini", "in1k"], listing.stderr[-3000:]
    training = subprocess.run([str(venv / "bin" / "attnzoo-train"), "--help"], capture_output=True, text=True)
    assert training.returncode == 1
    assert (  # installed from a wheel file, not an index: the command adds the extra to that wheel
        training.stderr.strip()
        == f"attnzoo-train: error: training needs lightning (the [train] extra): pip install '{wheel}[train]'"
    )
    version = wheel.name.split("-")[1]
    for script in ("attnzoo", "attnzoo-train"):  # --version needs neither Lightning nor torch
        answer = subprocess.run([str(venv / "bin" / script), "--version"], capture_output=True, text=True)
        assert answer.returncode == 0 and answer.stdout == f"{script} {version}\n", answer.stderr[-3000:]


def _core_requirements(wheel: Path, tmp_path: Path) -> list[str]:
    """The wheel's requirements outside every extra, read from its unpacked .dist-info folder."""
    with zipfile.ZipFile(wheel) as archive:
        members = [n for n in archive.namelist() if ".dist-info/" in n]
        archive.extractall(tmp_path / "unpacked", members)
    (info,) = (tmp_path / "unpacked").glob("*.dist-info")
    return [r for r in metadata.Distribution.at(info).requires or [] if "extra ==" not in r]


def test_import_attnzoo_leaves_lightning_out():
    training = "('lightning', 'pytorch_lightning', 'torchmetrics', 'sklearn')"
    script = f"import sys, attnzoo; print(sorted(m for m in sys.modules if m.split('.')[0] in {training}))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
