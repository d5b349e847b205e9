"""The distribution: one import name over the repository's folders, live edits, the console script."""

import os
import re
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

import attnzoo
import attnzoo.blocks
import attnzoo.kernels
import attnzoo.tools
import attnzoo.train
from tests.source_tree import copy_source_tree

ROOT = Path(__file__).resolve().parents[2]


def test_folders_map_into_one_namespace():
    assert Path(attnzoo.__file__).parent == ROOT / "zoo"
    folders = [
        (attnzoo.blocks, "blocks"),
        (attnzoo.kernels, "kernels"),
        (attnzoo.train, "train"),
        (attnzoo.tools, "tools"),
    ]
    for module, folder in folders:
        assert Path(module.__file__).parent == ROOT / folder
    assert attnzoo.__version__ != "0.0.0+unknown"  # installed, not just on sys.path


def test_editable_install_sees_new_files_live(tmp_path):
    """An editable install maps the folders into ``attnzoo``: a file added to ``kernels/`` imports at once.

    Run on an editable install of a copy of the tree in a fresh environment (it sees this one's packages through a
    ``.pth`` line), so the checkout itself is never written to.
    """
    source = copy_source_tree(tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "zz-outer-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    pip += ["--no-deps", "--no-build-isolation", "--no-index", "--editable", str(source)]
    subprocess.run(pip, check=True, capture_output=True)
    name = f"_live_probe_{uuid.uuid4().hex[:8]}"
    (source / "kernels" / f"{name}.py").write_text("VALUE = 42\n")
    script = f"import attnzoo.kernels.{name} as m, attnzoo; print(m.VALUE, attnzoo.__file__)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([venv / "bin" / "python", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    value, location = out.stdout.split()
    assert value == "42" and Path(location) == source / "zoo" / "__init__.py"


@pytest.mark.quick
def test_layer_dependency_direction():
    """kernels imports no attnzoo, timm or Lightning; blocks no timm model files; zoo no Lightning; nothing imports
    the tools floor, which takes only the checkpoint reader from the training floor."""

    def imports(folder):
        lines = []
        for path in (ROOT / folder).rglob("*.py"):
            lines += [
                line.strip() for line in path.read_text().splitlines() if line.strip().startswith(("import ", "from "))
            ]
        return lines

    assert not [line for line in imports("kernels") if "attnzoo" in line or "timm" in line or "lightning" in line]
    assert not [
        line for line in imports("blocks") if "timm.models" in line or "attnzoo.train" in line or "lightning" in line
    ]
    assert not [line for line in imports("zoo") if "lightning" in line or "attnzoo.train" in line]
    assert not [
        line
        for folder in ("kernels", "blocks", "zoo", "train")
        for line in imports(folder)
        if re.search(r"\btools\b", line)
    ]
    assert not [line for line in imports("tools") if "attnzoo.train" in line and "attnzoo.train.checkpoint" not in line]
