"""The distribution: one import name over the repository's folders, live edits, the console script."""

import re
import subprocess
import sys
import uuid
from pathlib import Path

import attnzoo
import attnzoo.blocks
import attnzoo.kernels
import attnzoo.tools
import attnzoo.train

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


def test_editable_install_sees_new_files_live():
    name = f"_live_probe_{uuid.uuid4().hex[:8]}"
    probe = ROOT / "kernels" / f"{name}.py"
    probe.write_text("VALUE = 42\n")
    try:
        out = subprocess.run(
            [sys.executable, "-c", f"import attnzoo.kernels.{name} as m; print(m.VALUE)"],
            capture_output=True,
            text=True,
            check=True,
            cwd="/",
        )
        assert out.stdout.strip() == "42"
    finally:
        probe.unlink()


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
