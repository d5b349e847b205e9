"""``attnzoo bench plot``: the committed reports drawn at the asked size, never over a file, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from attnzoo.tools import cli
from attnzoo.tools.bench import plot
from attnzoo_cli import install_hint

pytest.importorskip("matplotlib")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
REPORTS = {name: BENCHMARKS / f"{name}-cpu.json" for name in ("kernels", "blocks", "models")}


def _png(path: Path, size: tuple[int, int]) -> Image.Image:
    """The written PNG, checked: the asked size, and a picture (varying pixels, many colours), not a blank canvas."""
    image = Image.open(path).convert("RGB")
    assert image.size == size
    assert max(ImageStat.Stat(image).var) > 0
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, len(colours or [])
    return image


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "plot", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo bench plot: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "names, size",
    [(["kernels"], (900, 320)), (["blocks"], (640, 360)), (["models"], (701, 333)), (list(REPORTS), (1000, 1100))],
)
def test_committed_reports_are_drawn_at_the_asked_size(names, size, tmp_path, capsys):
    out = tmp_path / "figures" / "bench.png"  # the folder is created
    cli.main(["bench", "plot", *(str(REPORTS[n]) for n in names), "--out", str(out), "--size", f"{size[0]}x{size[1]}"])
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"
    _png(out, size)
    assert [p.name for p in out.parent.iterdir()] == ["bench.png"]  # no temporary file left behind


def test_default_size_grows_with_the_reports_and_out_is_never_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "kernels.png"
    cli.main(["bench", "plot", str(REPORTS["kernels"]), "--out", str(out)])
    one = Image.open(out).size
    assert f"--out: {out} exists; pass --force to overwrite it" in _one_line_error(
        capsys, [str(REPORTS["kernels"]), str(REPORTS["blocks"]), "--out", str(out)]
    )
    assert Image.open(out).size == one  # untouched
    cli.main(["bench", "plot", str(REPORTS["kernels"]), str(REPORTS["blocks"]), "--out", str(out), "--force"])
    two = _png(out, Image.open(out).size).size
    assert two[0] == one[0] and two[1] == 2 * one[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels.png"]


def test_unreadable_files_are_one_line_errors_naming_them(tmp_path, capsys):
    out = str(tmp_path / "x.png")
    missing = tmp_path / "none.json"
    assert f"{missing}: no such file" in _one_line_error(capsys, [str(missing), "--out", out])
    text = tmp_path / "notes.json"
    text.write_text("not json {\n")
    assert f"{text}: not JSON (" in _one_line_error(capsys, [str(REPORTS["kernels"]), str(text), "--out", out])
    ptx = BENCHMARKS / "ptx.json"
    assert f"{ptx}: suite 'ptx' has no timings to plot" in _one_line_error(capsys, [str(ptx), "--out", out])
    demos = BENCHMARKS / "train-demos-cpu.json"
    assert f"{demos}: a JSON list, not a benchmark report" in _one_line_error(capsys, [str(demos), "--out", out])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**json.loads(REPORTS["blocks"].read_text()), "results": []}))
    assert f"{empty}: no results to plot" in _one_line_error(capsys, [str(empty), "--out", out])
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"suite": "kernels", "results": [{"case": "na2d"}]}))
    assert f"{broken}: result 0 has no text 'implementation'" in _one_line_error(capsys, [str(broken), "--out", out])
    assert not Path(out).exists()


@pytest.mark.parametrize("size", ["12x", "axb", "800", "10x800", "800x600x2"])
def test_bad_size_and_out_are_one_line_errors(size, tmp_path, capsys):
    err = _one_line_error(capsys, [str(REPORTS["models"]), "--out", str(tmp_path / "x.png"), "--size", size])
    assert "--size" in err and repr(size) in err


def test_out_must_be_a_png_file(tmp_path, capsys):
    assert "is a folder" in _one_line_error(capsys, [str(REPORTS["models"]), "--out", str(tmp_path)])
    assert "is not a .png path" in _one_line_error(capsys, [str(REPORTS["models"]), "--out", str(tmp_path / "x.jpg")])


def test_without_matplotlib_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    err = _one_line_error(capsys, [str(REPORTS["models"]), "--out", str(tmp_path / "x.png")])
    assert f"needs matplotlib (the [viz] extra): {install_hint('viz')}" in err


def test_series_follow_the_map_size_and_skip_unmeasured_memory(tmp_path):
    """Kernels: x = tokens with the size's heads under it; gather rows at their Nq; null memory drawn nowhere."""
    report = plot.read_report(REPORTS["kernels"])
    series, ticks, left_out = plot._map_series(report)
    assert left_out == 0 and ticks == {
        3136: "56x56\nheads=2",
        784: "28x28\nheads=4",
        196: "14x14\nheads=8",
        49: "7x7\nheads=16",
    }
    by_key = {(s.label, s.mode): sorted(s.points) for s in series}
    assert [p[0] for p in by_key[("na2d [torch]", "forward+backward")]] == [49, 196, 784, 3136]
    assert [p[0] for p in by_key[("na2d [torch], largest dilation", "forward (no grad)")]] == [196, 784, 3136]
    assert [p[0] for p in by_key[("gather_attention [torch] (sparsifiner, Nq=197)", "forward+backward")]] == [197]

    data = json.loads(REPORTS["blocks"].read_text())
    for row in data["results"]:
        row["peak_extra_mib"] = None  # a machine where peak memory cannot be read
    data["results"].append({**data["results"][0], "shape": "unsized"})
    nulls = tmp_path / "blocks-nomem.json"
    nulls.write_text(json.dumps(data))
    assert plot._map_series(plot.read_report(nulls))[2] == 1
    _png(plot.plot_reports([nulls], tmp_path / "nomem.png", size=(500, 250)), (500, 250))


def test_models_at_several_batches_are_lines_against_the_batch(tmp_path):
    data = json.loads(REPORTS["models"].read_text())
    first = data["results"][0]
    data["results"] = [
        {**first, "input": f"{b}x3x224x224", "median_ms": first["median_ms"] * b / 8} for b in (1, 8, 32)
    ]
    report = plot.Report(tmp_path / "m.json", "models", data)
    series, one_batch = plot._model_series(report)
    assert not one_batch and [p[0] for p in series[0].points] == [1, 8, 32]
    assert plot._model_series(plot.read_report(REPORTS["models"]))[1]  # the committed one: bars
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    _png(plot.plot_reports([path], tmp_path / "batches.png", size=(400, 200)), (400, 200))


def test_parsing_bench_plot_imports_neither_torch_nor_timm():
    code = (
        "import sys, attnzoo_cli\n"
        "try:\n"
        "    attnzoo_cli.main(['bench', 'plot', 'a.json', '--out', 'a.png', '--size', 'big'])\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code)\n"
        "print('heavy', sorted(m for m in ('torch', 'timm', 'attnzoo') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["exit 2", "heavy []"], done.stdout + done.stderr
    assert done.stderr.startswith("attnzoo bench plot: error: argument --size:")
