"""``attnzoo bench plot``: the committed benchmark reports as pictures, time and peak memory side by side.

The JSON reports (``benchmarks/*.json``) are the record and the README's tables their summary, but a table of
four map sizes times a dozen implementations hides what a reader asks first: which implementation scales, where
the memory goes, how far apart the backends are. A plot answers at a glance, and being drawn from the report it
cannot drift from the numbers. Each report is one row of two panels, median time and peak extra memory:

* ``kernels`` and ``blocks``: against the map size (tokens, ``56x56`` read from each result's ``shape``; a
  gather_attention row sits at its ``Nq``), one colour per case and implementation, solid for the forward
  without grad and dashed for forward+backward;
* ``models``: against the batch when the report has several, else one bar per model (images/s and memory).

The row's title names the suite, the device, the library versions and the file, so a picture says what it
measured. Only JSON is read (neither torch nor timm is imported here), and figures are drawn on a plain
:class:`matplotlib.figure.Figure`, which renders through Agg without pyplot: no display is needed, and a
notebook's backend is left alone. The PNG is written through a temporary file and never over an existing one
without ``force``, as reports are.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import png

__all__ = ["SUITES", "PlotError", "Report", "check_out", "draw", "plot_reports", "read_report", "write_png"]

SUITES = ("kernels", "blocks", "models")
"""The report suites with timings; ``ptx`` (compiler output) and anything else are refused."""
DPI = 100
ROW_INCHES = (13.0, 4.2)  # default width, and height per report
MAX_SIDE_PX = 20000
VERSION_ORDER = ("torch", "triton", "natten", "timm", "attnzoo")
FORWARD = "forward (no grad)"
FORWARD_BACKWARD = "forward+backward"
_MODE_STYLE = {FORWARD: ("-", "o"), FORWARD_BACKWARD: ("--", "s")}  # other modes: dotted, triangles
_MAP = re.compile(r"\b(\d+)x(\d+)\b")
_NQ = re.compile(r"\bNq=(\d+)\b")
_DILATION = re.compile(r"\bdilation=(\d+)\b")


class PlotError(ValueError):
    """Why the picture cannot be drawn, in one line (the CLI prints it as a parser error, exit status 2)."""


@dataclass
class Report:
    """One benchmark report as read from ``path``: its suite and the JSON object ``attnzoo bench --json`` wrote."""

    path: Path
    suite: str
    data: dict

    @property
    def results(self) -> list[dict]:
        return self.data["results"]


@dataclass
class _Series:
    """One line (or bar) of a panel: a label, its colour group and mode, and (x, time ms, memory MiB) points."""

    label: str
    mode: str
    points: list[tuple[float, float, float | None]] = field(default_factory=list)


# --- reading ----------------------------------------------------------------------------------------------------


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_REQUIRED = {
    "kernels": ("case", "implementation", "mode", "shape"),
    "blocks": ("case", "implementation", "mode", "shape"),
    "models": ("model", "input"),
}


def read_report(path: str | Path) -> Report:
    """The timing report at ``path``; a :class:`PlotError` naming the file and what it holds otherwise."""
    path = Path(path)
    if path.is_dir():
        raise PlotError(f"{path}: is a folder, not a JSON report")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlotError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise PlotError(f"{path}: not JSON (not UTF-8 text)") from None
    except OSError as error:
        raise PlotError(f"{path}: cannot read it ({error.strerror or type(error).__name__})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlotError(f"{path}: not JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    expected = "an object with 'suite' and 'results' as `attnzoo bench kernels|blocks|models --json` writes"
    if not isinstance(data, dict):
        raise PlotError(f"{path}: a JSON {type(data).__name__}, not a benchmark report ({expected})")
    suite = data.get("suite")
    if suite is None:
        raise PlotError(f"{path}: no 'suite' key, not a benchmark report ({expected})")
    if suite not in SUITES:
        raise PlotError(f"{path}: suite {suite!r} has no timings to plot (plotted suites: {', '.join(SUITES)})")
    results = data.get("results")
    if not isinstance(results, list):
        raise PlotError(f"{path}: no 'results' list in this {suite} report")
    if not results:
        raise PlotError(f"{path}: no results to plot (empty 'results' in this {suite} report)")
    for i, row in enumerate(results):
        if not isinstance(row, dict):
            raise PlotError(f"{path}: result {i} is a JSON {type(row).__name__}, not an object")
        for key in _REQUIRED[suite]:
            if not isinstance(row.get(key), str):
                raise PlotError(f"{path}: result {i} has no text {key!r} (not a {suite} report as bench writes it)")
        if not _number(row.get("median_ms")) or row["median_ms"] <= 0:
            raise PlotError(f"{path}: result {i} has no positive number 'median_ms' (found {row.get('median_ms')!r})")
        memory = row.get("peak_extra_mib")
        if memory is not None and not _number(memory):
            raise PlotError(f"{path}: result {i}: 'peak_extra_mib' is {memory!r}, not a number or null")
    return Report(path, suite, data)


# --- what each suite plots --------------------------------------------------------------------------------------


def _map_tokens(shape: str) -> tuple[int, str] | None:
    """``'B=1 56x56 heads=2 ...'`` -> (3136, '56x56'); a gather shape ``'... Nq=197 ...'`` -> (197, '')."""
    found = _MAP.search(shape)
    if found:
        height, width = int(found.group(1)), int(found.group(2))
        return height * width, f"{height}x{width}"
    found = _NQ.search(shape)
    return (int(found.group(1)), "") if found else None


_KEY_VALUE = re.compile(r"\b([A-Za-z]\w*)=(\S+)")
_NOT_IN_TICKS = ("B", "dilation", "Nq", "Nk")  # the batch is in the title; dilation and gather sizes in the legend


def _tick_labels(shapes: dict[int, str]) -> dict[int, str]:
    """Per map size: ``'56x56'``, and under it the shape's settings that change with the size (``heads=2``)."""
    settings = {tokens: dict(_KEY_VALUE.findall(shape)) for tokens, shape in shapes.items()}
    keys = dict.fromkeys(k for found in settings.values() for k in found if k not in _NOT_IN_TICKS)
    varying = [k for k in keys if len({found.get(k) for found in settings.values()}) > 1]
    labels = {}
    for tokens, shape in shapes.items():
        extra = " ".join(f"{k}={settings[tokens][k]}" for k in varying if k in settings[tokens])
        labels[tokens] = _MAP.search(shape).group(0) + (f"\n{extra}" if extra else "")
    return labels


def _map_series(report: Report) -> tuple[list[_Series], dict[int, str], int]:
    """Series over map size (tokens) of a kernels or blocks report, tick labels, and how many rows had no size."""
    implementations = {r["implementation"] for r in report.results}
    series: dict[tuple[str, str], _Series] = {}
    shapes: dict[int, str] = {}
    left_out = 0
    for row in report.results:
        size = _map_tokens(row["shape"])
        if size is None:
            left_out += 1
            continue
        tokens, side = size
        if side:
            shapes.setdefault(tokens, row["shape"])
        label = row["case"]
        if len(implementations) > 1:
            label += f" [{row['implementation']}]"
        if not side and ":" in row["shape"]:  # gather_attention: 'quadtree: B=1 ... Nq=3136 ...'
            label += f" ({row['shape'].split(':', 1)[0].strip()}, Nq={tokens})"
        dilation = _DILATION.search(row["shape"])
        if dilation and int(dilation.group(1)) > 1:
            label += ", largest dilation"
        key = (label, row["mode"])
        series.setdefault(key, _Series(label, row["mode"])).points.append(
            (tokens, row["median_ms"], row.get("peak_extra_mib"))
        )
    return list(series.values()), _tick_labels(shapes), left_out


def _batch(row: dict) -> int | None:
    head = row["input"].split("x", 1)[0]
    return int(head) if head.isdigit() else None


def _model_series(report: Report) -> tuple[list[_Series], bool]:
    """Per model, ``(batch, median ms, memory)`` points; with one batch in the whole report, ``(0, images/s,
    memory)`` and ``True`` (bars, not lines: throughput is what compares models at one batch)."""
    rows = report.results
    batches = [_batch(r) for r in rows]
    one_batch = len(set(batches)) == 1 or None in batches
    inputs = {r["input"].split("x", 1)[-1] for r in rows}
    varying = [k for k in ("precision", "compiled", "channels_last") if len({str(r.get(k)) for r in rows}) > 1]
    series: dict[str, _Series] = {}
    for row, batch in zip(rows, batches, strict=True):
        label = row["model"]
        if len(inputs) > 1:
            label += f" {row['input'].split('x', 1)[-1]}"
        for key in varying:
            label += f" {key}={row.get(key)}"
        if one_batch:
            speed = row.get("images_per_s")
            if not _number(speed):
                speed = batch / row["median_ms"] * 1e3 if batch else None
            point = (0, speed, row.get("peak_extra_mib"))
        else:
            point = (batch, row["median_ms"], row.get("peak_extra_mib"))
        series.setdefault(label, _Series(label, FORWARD)).points.append(point)
    return list(series.values()), one_batch


def _title(report: Report) -> tuple[str, str]:
    """(headline: suite, device, settings; detail: versions, file, date) of a report's row."""
    data = report.data
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    parts = [report.suite, str(data.get("device") or data.get("device_type") or "unknown device")]
    if report.suite == "kernels":
        what = [str(settings[k]) for k in ("dtype",) if settings.get(k)]
        what += [f"B={settings['batch']}"] if settings.get("batch") else []
        what += [f"d={settings['head_dim']}"] if settings.get("head_dim") else []
        what += [f"k={settings['kernel_size']}"] if settings.get("kernel_size") else []
    elif report.suite == "blocks":
        what = [f"B={settings['batch']}"] if settings.get("batch") else []
    else:
        sizes = ", ".join(dict.fromkeys(r["input"].split("x", 1)[-1] for r in report.results))
        batches = sorted({b for b in map(_batch, report.results) if b is not None})
        what = [f"{sizes}, batch {', '.join(map(str, batches))}"] if batches else [sizes]
        what += [str(settings["precision"])] if settings.get("precision") else []
    if what:
        parts.append(" ".join(what))
    versions = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    names = [n for n in VERSION_ORDER if versions.get(n)] + sorted(set(versions) - set(VERSION_ORDER))
    detail = [", ".join(f"{n} {versions[n]}" for n in names if versions.get(n)) or "versions not recorded"]
    detail.append(str(report.path))
    if data.get("date"):
        detail.append(str(data["date"])[:10])
    return " — ".join(parts), " · ".join(detail)


# --- drawing ----------------------------------------------------------------------------------------------------


def _figure_class():
    """matplotlib's Figure (no pyplot: no backend to choose, no display); a one-line error without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from attnzoo_cli import install_hint

        raise PlotError(f"needs matplotlib (the [viz] extra): {install_hint('viz')}") from None
    return Figure


def _colours(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _spans(values: list[float], ratio: float = 10.0) -> bool:
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) > ratio


def _style(mode: str) -> tuple[str, str]:
    return _MODE_STYLE.get(mode, (":", "^"))


def _empty(ax, text: str, fontsize: float) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=fontsize, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_lines(
    axes, series: list[_Series], ticks: dict[int, str], x_label: str, fontsize: float, modes: bool = True
) -> list:
    """Time and memory against x; returns the legend handles (colour per label, and line style per mode)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    ax_time, ax_memory = axes
    labels = list(dict.fromkeys(s.label for s in series))
    colour = dict(zip(labels, _colours(len(labels)), strict=True))
    times, memories, xs = [], [], []
    size = fontsize / 2  # markers
    for s in series:
        points = sorted(s.points)
        line, marker = _style(s.mode)
        style = dict(color=colour[s.label], linestyle=line, marker=marker, markersize=size, linewidth=fontsize / 6)
        ax_time.plot([p[0] for p in points], [p[1] for p in points], **style)
        measured = [p for p in points if p[2] is not None]
        if measured:
            ax_memory.plot([p[0] for p in measured], [p[2] for p in measured], **style)
        times += [p[1] for p in points]
        memories += [p[2] for p in measured]
        xs += [p[0] for p in points]
    if _spans(times):
        ax_time.set_yscale("log")
    if not memories:
        _empty(ax_memory, "no memory measured (peak_extra_mib is null)", fontsize)
    elif _spans(memories):  # symlog where some call measured 0 MiB, which a log axis cannot show
        if min(memories) > 0:
            ax_memory.set_yscale("log")
        else:
            ax_memory.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    measured_axes = (ax_time, ax_memory) if memories else (ax_time,)
    log_x = _spans(xs, 1.0)  # any spread: map sizes and batches double, so equal steps on a log axis
    for ax in measured_axes:
        if log_x:
            ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks) or sorted(set(xs))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([ticks.get(x, f"{x:g}") for x in (sorted(ticks) or sorted(set(xs)))])
        ax.set_xlabel(x_label + (", log scale" if log_x else ""), fontsize=fontsize)
        ax.grid(True, which="major", alpha=0.3)
    ax_time.set_ylabel("median time (ms)" + (", log" if _spans(times) else ""), fontsize=fontsize)
    memory_scale = "" if not _spans(memories) else ", log" if min(memories) > 0 else ", symlog"
    ax_memory.set_ylabel("peak extra memory (MiB)" + memory_scale, fontsize=fontsize)
    handles = [Line2D([], [], color=colour[label], linewidth=fontsize / 4, label=label) for label in labels]
    for mode in dict.fromkeys(s.mode for s in series) if modes else ():
        line, marker = _style(mode)
        handles.append(Line2D([], [], color="0.3", linestyle=line, marker=marker, markersize=fontsize / 2, label=mode))
    return handles


def _draw_bars(axes, series: list[_Series], fontsize: float) -> None:
    """One horizontal bar per model: images/s and peak memory, the value written at each bar's end."""
    ax_speed, ax_memory = axes
    labels = [s.label for s in series]
    colours = _colours(len(labels))
    rows = range(len(labels))
    speeds = [s.points[0][1] for s in series]
    memories = [s.points[0][2] for s in series]
    ax_speed.barh(rows, [v or 0.0 for v in speeds], color=colours)
    for i, value in enumerate(speeds):
        text = f" {value:.3g}" if value is not None else " n/a"
        ax_speed.text(value or 0.0, i, text, va="center", fontsize=fontsize - 1)
    ax_memory.barh(rows, [v or 0.0 for v in memories], color=colours)
    for i, value in enumerate(memories):
        text = f" {value:.0f}" if value is not None else " n/a"
        ax_memory.text(value or 0.0, i, text, va="center", fontsize=fontsize - 1)
    for ax, name in ((ax_speed, "images/s (higher is faster)"), (ax_memory, "peak extra memory (MiB)")):
        ax.set_yticks(list(rows))
        ax.set_yticklabels(labels if ax is ax_speed else [""] * len(labels))
        ax.invert_yaxis()  # first model on top, as in the report
        ax.set_xlabel(name, fontsize=fontsize)
        ax.margins(x=0.18)
        ax.grid(True, axis="x", alpha=0.3)


def draw(reports: Sequence[Report], size_px: tuple[int, int] | None = None, dpi: int = DPI):
    """A figure with one row per report (time | memory, legend at the right); exactly ``size_px`` if given."""
    figure_cls = _figure_class()
    if size_px is None:
        figsize = (ROW_INCHES[0], ROW_INCHES[1] * len(reports))
    else:
        figsize = (size_px[0] / dpi, size_px[1] / dpi)
    row_height = figsize[1] / len(reports)
    fontsize = max(4.0, min(8.0, figsize[0] * 0.62, row_height * 2.0))
    figure = figure_cls(figsize=figsize, dpi=dpi, layout="constrained")
    rows = figure.subfigures(len(reports), 1, squeeze=False)[:, 0]
    chars = max(20, int(figsize[0] * 72 / (fontsize * 0.6)))
    for row, report in zip(rows, reports, strict=True):
        headline, detail = _title(report)
        axes = row.subplots(1, 2)
        for ax in axes:
            ax.tick_params(which="both", labelsize=fontsize - 0.5)
        note = ""
        if report.suite == "models":
            series, one_batch = _model_series(report)
            if one_batch:
                _draw_bars(axes, series, fontsize)
                axes[0].set_title("throughput", fontsize=fontsize + 0.5)
                axes[1].set_title("peak extra memory", fontsize=fontsize + 0.5)
                handles = []
            else:
                handles = _draw_lines(axes, series, {}, "batch", fontsize, modes=False)  # inference only
        else:
            series, ticks, left_out = _map_series(report)
            if not series:
                raise PlotError(f"{report.path}: no result has a map size (HxW or Nq=) in its 'shape'")
            handles = _draw_lines(axes, series, ticks, "map size (tokens)", fontsize)
            if left_out:
                note = f" ({left_out} results without a map size in 'shape' left out)"
        if handles:
            axes[1].legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(1.02, 1.0),
                fontsize=fontsize - 1,
                frameon=False,
                borderaxespad=0.0,
                handlelength=2.6,
            )
        title = textwrap.fill(headline + note, chars) + "\n" + textwrap.fill(detail, int(chars * 1.15))
        row.suptitle(title, fontsize=fontsize + 1)
    return figure


# --- writing ----------------------------------------------------------------------------------------------------


def check_out(out: str | Path, force: bool) -> Path:
    """``out`` as a path the PNG may be written to: a .png file, not over an existing one unless ``force``."""
    return png.check_out(out, force, PlotError, "benchmarks.png", png_suffix=True)


def write_png(figure, out: str | Path, force: bool = False, dpi: int = DPI) -> Path:
    """The figure into ``out``, whole or not at all, never over an existing file without ``force``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a --size too small for the layout: drawn as it fits
        return png.write_png(figure, out, force, dpi, PlotError, "benchmarks.png", png_suffix=True)


def plot_reports(
    paths: Sequence[str | Path],
    out: str | Path,
    size: tuple[int, int] | None = None,
    dpi: int = DPI,
    force: bool = False,
) -> Path:
    """Draw the reports at ``paths`` (one row each) into the PNG ``out``; ``size`` is (width, height) in pixels.

    Every problem (an unreadable or foreign file, an existing ``out`` without ``force``, no matplotlib) is a
    :class:`PlotError` with a one-line message naming the file.
    """
    if not paths:
        raise PlotError("give at least one report")
    if size is not None and (min(size) < 1 or max(size) > MAX_SIDE_PX):
        raise PlotError(f"--size: {size[0]}x{size[1]} pixels; each side must be 1 to {MAX_SIDE_PX}")
    out = check_out(out, force)
    reports = [read_report(path) for path in paths]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        figure = draw(reports, size, dpi)
    return write_png(figure, out, force, dpi)
