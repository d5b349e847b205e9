"""The repository stands alone: its tests read nothing outside the checkout, and a clone with no sibling folders
collects and runs the authors'-code parity tests from ``tests/fixtures``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
# the absolute folders of one machine or another (spelled in pieces so this file does not match itself)
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(" + "|".join(["wo" + "rk", "ho" + "me", "ro" + "ot", "t" + "mp"]) + r")/")
CODE_AND_CONFIG = {".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".txt"}
# One parity test per family (the authors' logits reproduced from a fixture), run in the clone.
PARITY = ["tests/zoo/test_nat.py", "tests/zoo/test_litv2.py", "tests/zoo/test_quadtree.py", "tests/zoo/test_agent.py"]


def _tracked_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in names.decode().split("\0") if name]


def test_fixtures_are_inside_the_checkout():
    if os.environ.get("ATTNZOO_FIXTURES"):
        pytest.skip("ATTNZOO_FIXTURES points the tests at another copy")
    assert FIXTURES == ROOT / "tests" / "fixtures"
    assert (len(list(FIXTURES.glob("*.pt"))), len(list(FIXTURES.glob("*.json")))) == (11, 4)
    assert (FIXTURES / "README.md").is_file()


def test_no_code_or_config_names_an_absolute_path_of_a_machine():
    offenders = []
    for path in _tracked_files():
        if path.suffix not in CODE_AND_CONFIG and path.name not in ("Makefile", "run"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_a_clone_with_no_siblings_collects_and_runs_the_parity_tests(tmp_path):
    _tracked_files()  # a git checkout
    clone = tmp_path / "alone" / "attnzoo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, capture_output=True)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["attnzoo"]
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNZOO_FIXTURES", "PYTEST_ADDOPTS", "PYTHONPATH")}
    env = {k: v for k, v in env.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    where = subprocess.run(
        [sys.executable, "-c", "from tests.fixtures import FIXTURES; print(FIXTURES)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0 and Path(where.stdout.strip()) == clone / "tests" / "fixtures", where.stderr

    # every parity test of the four families with authors' fixtures (one per fixture file), collected and run there
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs"]
        + ["-k", "reproduces_the_authors_logits", *PARITY],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert re.match(rf"{len(list(FIXTURES.glob('*.pt')))} passed, \d+ deselected in ", summary), summary
