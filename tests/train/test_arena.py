"""``attnzoo arena`` end to end on the long-range task: reports, resume after kill -9, one-line errors; the task."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import attnzoo_cli
from attnzoo.train.synthetic import LONG_RANGE_CHANCE, LONG_RANGE_COLOURS, write_long_range

# two entries, one epoch, two sizes, on 64 + 32 long-range images: about 20 s on 2 shared cores
TINY = [
    "arena",
    "--mixers",
    "neighborhood,dense",
    "--budget",
    "0.015",
    "--data",
    "long-range",
    "--train-images",
    "64",
    "--val-images",
    "32",
    "--epochs",
    "1",
    "--sizes",
    "32,64",
    "--batch-size",
    "32",
    "--bench-batch",
    "2",
    "--device",
    "cpu",
]


def _arena(out: Path, *extra: str) -> None:
    attnzoo_cli.main([*TINY, "--out", str(out), *extra])


def test_a_tiny_arena_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "arena"
    _arena(out)
    report = json.loads((out / "arena.json").read_text())
    assert list(report["entries"]) == ["neighborhood", "dense"]
    assert report["chance"] == LONG_RANGE_CHANCE and report["train_size"] == 32 and report["sizes"] == [32, 64]
    assert (
        report["device"].endswith("(cpu)")
        and report["versions"]["torch"]
        and report["command"][:2]
        == [
            "attnzoo",
            "arena",
        ]
    )
    for name, entry in report["entries"].items():
        assert entry["status"] == "done" and entry["gmacs"] == pytest.approx(0.015, rel=0.02), name
        for size in ("32", "64"):
            row = entry["sizes"][size]
            assert row["reason"] is None and 0.0 <= row["top1"] <= 1.0
            assert row["infer_images_per_s"] > 0 and row["train_images_per_s"] > 0
        assert (out / "entries" / name / "checkpoints" / "last.ckpt").is_file()  # attnzoo-train's run folder
    markdown = (out / "arena.md").read_text()
    assert "| neighborhood |" in markdown and "| dense |" in markdown and "Chance level: 50.0%" in markdown
    with Image.open(out / "arena.png") as image:
        assert image.size[0] > 800


def test_a_killed_arena_resumes_with_its_finished_entries_kept(tmp_path):
    out = tmp_path / "arena"
    command = [sys.executable, "-c", "import attnzoo_cli, sys; attnzoo_cli.main(sys.argv[1:])", *TINY]
    process = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    first = out / "entries" / "neighborhood" / "result.json"
    deadline = time.monotonic() + 240
    while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert first.is_file(), "the first entry never finished"
    kept = first.read_bytes()
    stamp = first.stat().st_mtime_ns
    _arena(out)  # resumes: the first entry is read back, the second (killed or never started) runs
    assert first.read_bytes() == kept and first.stat().st_mtime_ns == stamp
    report = json.loads((out / "arena.json").read_text())
    assert [e["status"] for e in report["entries"].values()] == ["done", "done"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--mixers", "neighborhood,lsh"], "--mixers: unknown entry lsh"),
        (["--budget", "0.001"], "--budget: 0.001 GMACs at 32x32 cannot be met by neighborhood"),
        (["--sizes", "16,64"], "--sizes: 16 is below the arena's minimum of 32 px"),
        (["--data", "/no/such/folder"], "--data: '/no/such/folder' is neither digits, long-range nor a folder"),
    ],
)
def test_bad_input_is_a_one_line_error(change, message, tmp_path, capsys):
    args = list(TINY)
    index = args.index(change[0])
    args[index + 1] = change[1]
    with pytest.raises(SystemExit) as exit_info:
        attnzoo_cli.main([*args, "--out", str(tmp_path / "arena")])
    text = str(exit_info.value.code)
    assert text.startswith("attnzoo arena: error: ") and message in text and "\n" not in text
    assert not (tmp_path / "arena").exists()


def test_a_size_an_entry_refuses_is_recorded_not_fatal(tmp_path):
    out = tmp_path / "arena"
    args = [a if a != "neighborhood,dense" else "quadtree" for a in TINY]
    args[args.index("--sizes") + 1] = "32,48"
    args[args.index("--budget") + 1] = "0.015"
    attnzoo_cli.main([*args, "--out", str(out)])
    entry = json.loads((out / "arena.json").read_text())["entries"]["quadtree"]
    assert entry["sizes"]["32"]["reason"] is None
    assert "multiples of 32" in entry["sizes"]["48"]["reason"]


def _digest(root: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_the_long_range_task_is_deterministic_balanced_and_long_range(tmp_path):
    a = write_long_range(tmp_path / "a", num_train=40, num_val=10, size=64, seed=3)
    b = write_long_range(tmp_path / "b", num_train=40, num_val=10, size=64, seed=3)
    assert _digest(a) == _digest(b)
    assert write_long_range(a, num_train=40, num_val=10, size=64, seed=3) == a  # written once
    for split in ("train", "validation"):
        counts = {c: len(list((a / split / c).glob("*.png"))) for c in ("different", "same")}
        assert counts["different"] == counts["same"]
    palette = np.array(LONG_RANGE_COLOURS)
    for path in sorted((a / "train").rglob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        ys, xs, colours = [], [], []
        for index, colour in enumerate(palette):
            mask = (pixels == colour).all(-1)
            if mask.any():
                rows, cols = np.nonzero(mask)
                ys += [rows.min()]
                xs += [cols.min()]
                colours += [index] * (2 if mask.sum() > 8 * 8 else 1)
        assert len(colours) == 2 and (colours[0] == colours[1]) == (path.parent.name == "same")
        if len(ys) == 2:
            assert max(abs(ys[0] - ys[1]), abs(xs[0] - xs[1])) >= 32  # at least half the image apart
    with pytest.raises(ValueError, match="size must be an int of at least 32 px"):
        write_long_range(tmp_path / "c", size=16)


def test_an_arena_leaves_lightnings_log_levels_as_they_were():
    """The arena quiets Lightning's info lines only while it runs (a later fit in the same process logs as before)."""
    import logging

    from attnzoo.train.arena import _quiet_lightning

    logger = logging.getLogger("lightning.pytorch")
    before = logger.level
    with _quiet_lightning():
        assert logger.level == logging.WARNING
    assert logger.level == before
