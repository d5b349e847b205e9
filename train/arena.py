"""``attnzoo arena``: every entry of :mod:`attnzoo.arena` trained with one recipe at one compute budget, then
compared on accuracy, resolution transfer, throughput and memory.

For each entry, in order: the budget rule sizes it (:func:`attnzoo.arena.solve_budget`, at the first of
``--sizes``, the training size); ``attnzoo-train fit`` trains it in its own run folder ``OUT/entries/NAME`` (the
CLI's folder lock, atomic checkpoints, ``--ckpt_path last`` after a kill) with the same recipe, seed and data
order as every other entry (the seed is reset at each epoch start, after the models' different initialisations);
its top-1 is measured at every size (each mixer's own rule for a size it was not built for:
:meth:`attnzoo.arena.ArenaNet.set_input_size`); inference and one training step (forward, backward, AdamW) are
timed and their peak memory taken at every size on the device. ``OUT/entries/NAME/result.json`` is written
atomically when the entry is done, so a killed arena resumes with its finished entries kept. What an entry cannot
do at a size (out of memory, a size it refuses, a batch predicted to take longer than ``--step-limit``) is
recorded with the reason. ``OUT/arena.json`` (device, versions, command), ``arena.md`` and ``arena.png`` are
rewritten after every entry.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import fcntl
import json
import logging
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

__all__ = ["ArenaError", "SeedEachEpoch", "TournamentProgress", "main", "make_plan", "run"]

SETTINGS_KEYS = ("budget", "data", "epochs", "train_size", "seed", "batch_size", "lr")
DATA_CHANCE = {"digits": 0.1, "long-range": 0.5}


class ArenaError(ValueError):
    """A bad argument: the command prints it as one line naming the argument."""


class SeedEachEpoch(Callback):
    """Reset every RNG to ``seed + epoch`` when an epoch starts: the same data order (and augmentation, and drop
    path draws) for every entry, whatever its initialisation consumed; a resumed run continues identically."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        value = self.seed + trainer.current_epoch
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)


class TournamentProgress(Callback):
    """Advances the arena's one progress bar (module-level, set by :func:`run`) once per training epoch."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if _PROGRESS is not None:
            _PROGRESS.update(1)


_PROGRESS = None


# --- arguments (parsed by the ``attnzoo`` launcher, attnzoo_cli._add_arena; checked here) -----------------------
def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ArenaError(f"--sizes: expected comma-separated integers such as 224,384, got {text!r}") from None
    if not sizes:
        raise ArenaError("--sizes: give at least one size")
    return sizes


def _mixers(text: str) -> list[str]:
    from attnzoo.arena import ENTRIES

    if text == "all":
        return list(ENTRIES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENTRIES]
    if unknown or not names:
        raise ArenaError(
            f"--mixers: unknown entry {', '.join(unknown) or repr(text)}; choose all or from {', '.join(ENTRIES)}"
        )
    if len(set(names)) != len(names):
        raise ArenaError(f"--mixers: an entry is named twice in {text!r}")
    return names


def _device(text: str | None) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ArenaError(f"--device: not a device: {text!r} (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArenaError(f"--device: {text} asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ArenaError(f"--device: {text!r}: the arena runs on cpu or cuda")
    return device


@dataclass
class Plan:
    mixers: list[str]
    budget: float
    data: str
    epochs: int
    sizes: list[int]
    out: Path
    device: torch.device
    batch_size: int
    bench_batch: int
    seed: int
    lr: float
    step_limit: float
    train_images: int
    val_images: int
    command: list[str]

    @property
    def train_size(self) -> int:
        return self.sizes[0]

    def settings(self) -> dict[str, Any]:
        return dict(
            budget=self.budget,
            data=self.data,
            epochs=self.epochs,
            train_size=self.train_size,
            seed=self.seed,
            batch_size=self.batch_size,
            lr=self.lr,
        )


def make_plan(args: argparse.Namespace) -> Plan:
    """Every argument checked (one-line :class:`ArenaError` naming it) and each entry's size solved, before any
    training starts."""
    from attnzoo.arena import MIN_SIZE, solve_budget

    mixers = _mixers(args.mixers)
    sizes = _sizes(args.sizes)
    small = [s for s in sizes if s < MIN_SIZE]
    if small:
        raise ArenaError(f"--sizes: {small[0]} is below the arena's minimum of {MIN_SIZE} px (four stages, stride 32)")
    if len(set(sizes)) != len(sizes):
        raise ArenaError(f"--sizes: a size is named twice in {args.sizes!r}")
    if not (isinstance(args.budget, float) and math.isfinite(args.budget) and args.budget > 0):
        raise ArenaError(f"--budget: expected a positive number of GMACs, got {args.budget!r}")
    if args.epochs < 1:
        raise ArenaError(f"--epochs: must be >= 1, got {args.epochs}")
    if args.data not in DATA_CHANCE and not Path(args.data).expanduser().is_dir():
        raise ArenaError(f"--data: {args.data!r} is neither digits, long-range nor a folder")
    for mixer in mixers:
        try:
            solve_budget(mixer, args.budget, sizes[0])
        except ValueError as error:
            if str(error).startswith("img_size"):
                continue  # the entry refuses the training size: recorded, not fatal
            raise ArenaError(f"--{error}") from None
    return Plan(
        mixers=mixers,
        budget=float(args.budget),
        data=args.data,
        epochs=int(args.epochs),
        sizes=sizes,
        out=Path(args.out).expanduser(),
        device=_device(args.device),
        batch_size=int(args.batch_size),
        bench_batch=int(args.bench_batch),
        seed=int(args.seed),
        lr=float(args.lr),
        step_limit=float(args.step_limit),
        train_images=int(args.train_images),
        val_images=int(args.val_images),
        command=["attnzoo", *getattr(args, "argv", [])],
    )


# --- data ----------------------------------------------------------------------------------------------------
def _data_config(plan: Plan, size: int, for_eval: bool = False) -> dict[str, Any]:
    """The data module (``class_path``/``init_args``) of ``--data`` at ``size`` px."""
    common = dict(batch_size=plan.batch_size, num_workers=0, input_size=size)
    if plan.data == "digits":
        return dict(class_path="attnzoo.train.DigitsData", init_args=common)
    if plan.data == "long-range":
        native = plan.train_size  # drawn at the training size, resized for the others
        init = dict(common, image_size=native, num_train=plan.train_images, num_val=plan.val_images)
        return dict(class_path="attnzoo.train.LongRangeData", init_args=init)
    init = dict(common, root=str(Path(plan.data).expanduser()), crop_pct=1.0, scale=[0.5, 1.0])
    return dict(class_path="attnzoo.train.ImageFolderData", init_args=init)


def _data_module(plan: Plan, size: int):
    import importlib

    config = _data_config(plan, size, for_eval=True)
    module, name = config["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config["init_args"])


def _chance(plan: Plan, num_classes: int) -> float:
    return DATA_CHANCE.get(plan.data, 1.0 / max(num_classes, 1))


# --- one entry -------------------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fit_config(plan: Plan, mixer: str, solved: dict, folder: Path) -> dict[str, Any]:
    """The same recipe for every entry; only ``model_kwargs`` (mixer, width, MLP ratio) differ."""
    return {
        "seed_everything": plan.seed,
        "trainer": {
            "accelerator": "gpu" if plan.device.type == "cuda" else "cpu",
            "devices": [plan.device.index or 0] if plan.device.type == "cuda" else 1,
            "max_epochs": plan.epochs,
            "default_root_dir": str(folder),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "callbacks": [
                {"class_path": "attnzoo.train.arena.SeedEachEpoch", "init_args": {"seed": plan.seed}},
                {"class_path": "attnzoo.train.arena.TournamentProgress"},
            ],
        },
        "model": {
            "class_path": "attnzoo.train.ClassificationTask",
            "init_args": {
                "model": "arena_tiny",
                "model_kwargs": {
                    "mixer": mixer,
                    "embed_dim": solved["embed_dim"],
                    "mlp_ratio": solved["mlp_ratio"],
                    "img_size": plan.train_size,
                },
                "drop_path_rate": 0.1,
                "opt": "adamw",
                "lr": plan.lr,
                "weight_decay": 0.05,
                "sched": "cosine",
                "warmup_epochs": 1 if plan.epochs >= 5 else 0,
                "warmup_lr": 1.0e-5,
                "min_lr": 1.0e-5,
                "label_smoothing": 0.1,
            },
        },
        "data": _data_config(plan, plan.train_size),
    }


def _train(plan: Plan, mixer: str, solved: dict, folder: Path) -> torch.nn.Module:
    """``attnzoo-train fit`` in the entry's run folder (continued from ``last.ckpt`` if a killed arena left one)."""
    import yaml

    from .cli import build_cli

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "arena-fit.yaml"
    _write_atomic(config, yaml.safe_dump(_fit_config(plan, mixer, solved, folder), sort_keys=False))
    args = ["fit", "--config", str(config)]
    if (folder / "checkpoints" / "last.ckpt").is_file():
        args += ["--ckpt_path", "last"]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when it sees the arena's own command line
    try:
        cli = build_cli(args)
    finally:
        sys.argv = argv
    return cli.model.model


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class _PeakMemory:
    """Peak memory of a call above what was live before it: CUDA's allocator peak, on Linux CPUs the resident-set
    high-water mark reset through ``/proc/self/clear_refs`` (as ``attnzoo bench``); ``None`` elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_ok = device.type == "cpu" and Path("/proc/self/clear_refs").exists()
        if self.cpu_ok:
            try:
                ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: freed tensors leave the RSS
            except OSError:
                self.cpu_ok = False

    @staticmethod
    def _kb(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def measure(self, fn) -> tuple[float | None, object]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            value = fn()
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20, value
        if not self.cpu_ok:
            return None, fn()
        Path("/proc/self/clear_refs").write_text("5")
        before = self._kb("VmRSS")
        value = fn()
        return (self._kb("VmHWM") - before) / 2**20, value


def _timed(fn, device: torch.device, repeats: int = 5) -> float:
    """Fastest of ``repeats`` runs after two warm-ups, in seconds (fewer runs once 5 s are spent, or when one run
    is already slow): on a shared machine the minimum is the run least disturbed by other work."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if i > 1 or elapsed > 2.0:
            times.append(elapsed)
        if sum(times) > 5.0:
            break
    return min(times)


@torch.no_grad()
def _top1(model: torch.nn.Module, plan: Plan, size: int) -> tuple[float, int]:
    data = _data_module(plan, size)
    data.prepare_data()
    data.setup("validate")
    correct = total = 0
    model.eval()
    for images, targets in data.val_dataloader():
        logits = model(images.to(plan.device))
        correct += int((logits.argmax(-1).cpu() == targets).sum())
        total += int(targets.numel())
    return correct / max(total, 1), data.num_classes


def _bench(model: torch.nn.Module, plan: Plan, size: int, memory: _PeakMemory) -> dict[str, float | None]:
    """Inference and one training step (forward, backward, AdamW) on ``--bench-batch`` random images."""
    batch = plan.bench_batch
    x = torch.randn(batch, 3, size, size, device=plan.device)
    model.eval()

    def infer():
        with torch.no_grad():
            return model(x)

    infer_s = _timed(infer, plan.device)  # first: its warm-ups also settle one-time allocations before the peak
    infer_mib, _ = memory.measure(infer)
    trainee = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW([p for p in trainee.parameters() if p.requires_grad], lr=1e-6)
    targets = torch.zeros(batch, dtype=torch.long, device=plan.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(trainee(x), targets)
        loss.backward()
        optimizer.step()

    step()  # AdamW's state exists from the first step on: the peak of a step in a run, not of the first one
    train_s = _timed(step, plan.device)
    train_mib, _ = memory.measure(step)
    return dict(
        infer_images_per_s=batch / infer_s,
        infer_peak_mib=infer_mib,
        train_images_per_s=batch / train_s,
        train_peak_mib=train_mib,
    )


def _run_entry(plan: Plan, mixer: str, folder: Path, memory: _PeakMemory) -> dict[str, Any]:
    from attnzoo.arena import ENTRIES, check_input_size, count_arena_macs, solve_budget

    entry = ENTRIES[mixer]
    result: dict[str, Any] = dict(
        mixer=mixer,
        paper=entry.paper,
        settings=entry.settings,
        arena=plan.settings(),
        status="done",
        reason=None,
        sizes={},
    )
    try:
        solved = solve_budget(mixer, plan.budget, plan.train_size)
    except ValueError as error:  # the training size itself is refused
        result.update(status="refused", reason=str(error))
        return result
    result.update(
        embed_dim=solved["embed_dim"],
        mlp_ratio=solved["mlp_ratio"],
        gmacs=solved["macs"] / 1e9,
        params=solved["params"],
    )
    start = time.perf_counter()
    try:
        model = _train(plan, mixer, solved, folder)
    except Exception as error:  # noqa: BLE001  (recorded: one entry failing must not end the tournament)
        if isinstance(error, KeyboardInterrupt):
            raise
        result.update(status="failed", reason=("out of memory" if _is_oom(error) else _first_line(error)))
        return result
    result["train_seconds"] = time.perf_counter() - start
    model = model.to(plan.device)
    per_macs = None  # seconds per MAC of an inference batch, measured at the training size
    for size in plan.sizes:
        row: dict[str, Any] = dict(reason=None)
        result["sizes"][str(size)] = row
        try:
            check_input_size(mixer, size)
            model.set_input_size(size)
            macs = count_arena_macs(mixer, solved["embed_dim"], solved["mlp_ratio"], (size, size))
            row["gmacs"] = macs / 1e9
            predicted = None if per_macs is None else per_macs * macs * max(plan.batch_size, plan.bench_batch)
            if predicted is not None and predicted > plan.step_limit:
                row["reason"] = (
                    f"skipped: a batch would take about {predicted:.0f} s on {plan.device.type} "
                    f"(over --step-limit {plan.step_limit:g})"
                )
            else:
                top1, num_classes = _top1(model, plan, size)
                row["top1"] = top1
                result["chance"] = _chance(plan, num_classes)
                row.update(_bench(model, plan, size, memory))
                if per_macs is None:
                    per_macs = 1.0 / (row["infer_images_per_s"] * macs)
        except Exception as error:  # noqa: BLE001
            if isinstance(error, KeyboardInterrupt):
                raise
            row["reason"] = "out of memory" if _is_oom(error) else _first_line(error)
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            if _PROGRESS is not None:
                _PROGRESS.update(1)
    with contextlib.suppress(Exception):
        model.set_input_size(plan.train_size)
    train_row = result["sizes"].get(str(plan.train_size), {})
    result["top1"] = train_row.get("top1")
    return result


# --- reports ---------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("torch", "timm", "lightning", "attnzoo"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    model = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        model = found.group(1).strip() if found else model
    return f"{model}, {torch.get_num_threads()} threads (cpu)"


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value * scale:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    sizes = report["sizes"]
    train = str(report["train_size"])
    lines = [
        f"# Arena: {report['budget']:g} GMACs at {train}², {report['data']}, {report['epochs']} epoch(s)",
        "",
        f"Device: {report['device']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + f". Command: `{' '.join(report['command'])}`. Chance level: {_fmt(report.get('chance'), 1, 100)}%.",
        "",
        "Every entry: the same backbone, recipe, seed and data order; width C and MLP ratio from the budget rule. "
        f"Throughput and peak memory: batch {report['bench_batch']}, fp32.",
        "",
        "| entry | params (M) | GMACs | C / MLP ratio | top-1 (%) | "
        + " | ".join(f"top-1 @{s} (%)" for s in sizes[1:])
        + ("" if len(sizes) == 1 else " | ")
        + f"img/s infer @{train} | img/s train @{train} | peak MiB infer / train @{train} | paper |",
        "| --- " * (8 + len(sizes) - 1 + 1) + "|",
    ]
    for name, entry in report["entries"].items():
        rows = entry.get("sizes", {})
        at_train = rows.get(train, {})
        if entry.get("status") != "done":
            lines.append(
                f"| {name} | — | — | — | {entry.get('status')}: {entry.get('reason')} |"
                + " — |" * (len(sizes) - 1 + 3)
                + f" {entry.get('paper', '')} |"
            )
            continue
        transfer = [
            _fmt(rows.get(str(s), {}).get("top1"), 1, 100) if rows.get(str(s), {}).get("reason") is None else "n/a"
            for s in sizes[1:]
        ]
        lines.append(
            f"| {name} | {_fmt(entry['params'], 2, 1e-6)} | {_fmt(entry['gmacs'], 3)} | "
            f"{entry['embed_dim']} / {entry['mlp_ratio']:.3g} | {_fmt(entry.get('top1'), 1, 100)} | "
            + "".join(f"{t} | " for t in transfer)
            + f"{_fmt(at_train.get('infer_images_per_s'), 1)} | {_fmt(at_train.get('train_images_per_s'), 1)} | "
            f"{_fmt(at_train.get('infer_peak_mib'), 0)} / {_fmt(at_train.get('train_peak_mib'), 0)} | "
            f"{entry['paper']} |"
        )
    lines += ["", "Inference images/s and peak MiB per size (training step in brackets):", ""]
    lines.append("| entry | " + " | ".join(f"{s}²" for s in sizes) + " |")
    lines.append("| --- " * (len(sizes) + 1) + "|")
    notes = []
    for name, entry in report["entries"].items():
        cells = []
        for s in sizes:
            row = entry.get("sizes", {}).get(str(s))
            if not row:
                cells.append("—")
            elif row.get("reason"):
                notes.append(f"- {name} at {s}²: {row['reason']}")
                cells.append(f"n/a [{len(notes)}]")
            else:
                cells.append(
                    f"{_fmt(row.get('infer_images_per_s'))} img/s, {_fmt(row.get('infer_peak_mib'), 0)} MiB "
                    f"({_fmt(row.get('train_images_per_s'))} img/s, {_fmt(row.get('train_peak_mib'), 0)} MiB)"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not measured:", "", *[f"{n}" for n in notes]]
    return "\n".join(lines) + "\n"


def render_png(report: dict[str, Any], path: Path) -> str | None:
    """top-1 against images/s; time per image and peak memory against resolution (log scales), one line per
    entry. Returns why nothing was drawn (matplotlib missing), else ``None``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing (the [viz] extra): no arena.png"
    train = str(report["train_size"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), dpi=100)
    colours = plt.get_cmap("tab10")
    for i, (name, entry) in enumerate(report["entries"].items()):
        colour = colours(i % 10)
        rows = entry.get("sizes", {})
        point = rows.get(train, {})
        if point.get("top1") is not None and point.get("infer_images_per_s"):
            axes[0].scatter(point["infer_images_per_s"], 100 * point["top1"], color=colour)
            axes[0].annotate(name, (point["infer_images_per_s"], 100 * point["top1"]), fontsize=8)
        sizes = [int(s) for s, r in rows.items() if r.get("infer_images_per_s")]
        if sizes:
            ms = [1000.0 / rows[str(s)]["infer_images_per_s"] for s in sizes]
            axes[1].plot(sizes, ms, "o-", color=colour, label=name)
            train_ms = [1000.0 / rows[str(s)]["train_images_per_s"] for s in sizes]
            axes[1].plot(sizes, train_ms, "x--", color=colour, alpha=0.6)
        mem = [
            (int(s), r["infer_peak_mib"], r.get("train_peak_mib")) for s, r in rows.items() if r.get("infer_peak_mib")
        ]
        if mem:
            axes[2].plot([m[0] for m in mem], [max(m[1], 1e-3) for m in mem], "o-", color=colour, label=name)
            if all(m[2] for m in mem):
                axes[2].plot([m[0] for m in mem], [m[2] for m in mem], "x--", color=colour, alpha=0.6)
    chance = report.get("chance")
    if chance is not None:
        axes[0].axhline(100 * chance, color="grey", linestyle=":", label="chance")
    axes[0].set(xscale="log", xlabel=f"inference images/s at {train}²", ylabel="top-1 (%)", title="accuracy vs speed")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="input side (px)",
        ylabel="ms per image",
        title="time (solid: inference, dashed: training step)",
    )
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="input side (px)",
        ylabel="peak MiB",
        title="peak memory (solid: inference, dashed: training)",
    )
    for ax in axes[1:]:  # the sizes themselves as ticks, not powers of ten
        ax.set_xticks(report["sizes"], [str(s) for s in report["sizes"]])
        ax.minorticks_off()
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"arena: {report['budget']:g} GMACs at {train}², {report['data']}, {report['epochs']} epoch(s); "
        f"{report['device']}",
        fontsize=10,
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def _write_reports(plan: Plan, results: dict[str, dict]) -> None:
    chances = [r.get("chance") for r in results.values() if r.get("chance") is not None]
    report = dict(
        budget=plan.budget,
        data=plan.data,
        epochs=plan.epochs,
        sizes=plan.sizes,
        train_size=plan.train_size,
        seed=plan.seed,
        batch_size=plan.batch_size,
        bench_batch=plan.bench_batch,
        lr=plan.lr,
        chance=chances[0] if chances else None,
        device=_device_name(plan.device),
        versions=_versions(),
        command=plan.command,
        entries={name: results[name] for name in plan.mixers if name in results},
    )
    _write_atomic(plan.out / "arena.json", json.dumps(report, indent=2) + "\n")
    note = render_png(report, plan.out / "arena.png")
    markdown = render_markdown(report)
    if note:
        markdown += f"\n{note}\n"
    _write_atomic(plan.out / "arena.md", markdown)


# --- the tournament --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _arena_lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / ".arena.lock", "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ArenaError(f"--out: {out} is in use by another attnzoo arena") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's per-fit info lines at WARNING while the arena runs (its progress bar says what happens); the
    levels are restored afterwards, so a caller's later runs log as before."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run(plan: Plan) -> dict[str, dict]:
    """The tournament; returns the per-entry results (also in ``OUT``)."""
    global _PROGRESS
    from tqdm import tqdm

    results: dict[str, dict] = {}
    with _quiet_lightning(), _arena_lock(plan.out):
        entries_dir = plan.out / "entries"
        per_entry = plan.epochs + len(plan.sizes)
        memory = _PeakMemory(plan.device)  # before any training: its allocator setting holds for every entry alike
        _PROGRESS = tqdm(total=per_entry * len(plan.mixers), desc="arena", unit="step", dynamic_ncols=True)
        try:
            for i, mixer in enumerate(plan.mixers):
                folder = entries_dir / mixer
                done = folder / "result.json"
                _PROGRESS.set_postfix_str(mixer)
                if done.is_file():
                    result = json.loads(done.read_text())
                    if result.get("arena") != plan.settings():
                        raise ArenaError(
                            f"--out: {folder} holds a result of other arena settings ({result.get('arena')}); "
                            "choose another --out"
                        )
                else:
                    result = _run_entry(plan, mixer, folder, memory)
                    folder.mkdir(parents=True, exist_ok=True)
                    _write_atomic(done, json.dumps(result, indent=2) + "\n")
                results[mixer] = result
                _PROGRESS.n = per_entry * (i + 1)
                _PROGRESS.refresh()
                _write_reports(plan, results)
        finally:
            _PROGRESS.close()
            _PROGRESS = None
    return results


def main(args: argparse.Namespace) -> None:
    """``attnzoo arena`` (called by the launcher with its parsed arguments)."""
    try:
        plan = make_plan(args)
        run(plan)
    except ArenaError as error:
        raise SystemExit(f"attnzoo arena: error: {error}") from None
    print(f"wrote {plan.out / 'arena.json'}, {plan.out / 'arena.md'} and {plan.out / 'arena.png'}", file=sys.stderr)
