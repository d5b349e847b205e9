"""What the ``attnzoo`` command runs: everything that is not training (``attnzoo-train``).

The parser lives in the top-level ``attnzoo_cli`` module, which imports neither torch nor this package, so
``--help`` and bad options answer at once; :func:`run` gets its parsed arguments. Each command imports what it
needs when it runs. Errors found here (a missing GPU, a mistyped model name, an existing report) go through the
subcommand's parser, so they read like the parser's own: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import timm
import torch

from attnzoo._names import unknown_model_message
from attnzoo_cli import missing_extra

__all__ = ["main", "model_info", "run"]


def main(argv: list[str] | None = None) -> None:
    """In-process entry (tests, ``python -c``): the same as the ``attnzoo`` command."""
    from attnzoo_cli import main as launch

    launch(argv)


def run(args: argparse.Namespace) -> None:
    """Run the command ``attnzoo_cli`` parsed (``args.run`` names it)."""
    quiet_cuda_home_warning()
    COMMANDS[args.run](args)


class _CudaHomeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No CUDA runtime is found, using CUDA_HOME=")


def quiet_cuda_home_warning() -> None:
    """Drop torch.utils.cpp_extension's "No CUDA runtime is found, using CUDA_HOME=..." and nothing else.

    Importing cpp_extension (torch.utils.benchmark does) logs it on any machine that has a CUDA toolkit but no
    GPU; nothing here compiles extensions, so on a CPU machine it is noise on every benchmark.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _CudaHomeFilter) for f in logger.filters):
        logger.addFilter(_CudaHomeFilter())


# --- checks that need torch or timm ---------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> torch.device:
    """``--device`` as a device that exists here (default: CUDA when available)."""
    text = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        args.parser.error(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            args.parser.error("--device: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            args.parser.error(f"--device: {text} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def _json_path(args: argparse.Namespace, device_type: str) -> Path | None:
    """``--json`` with ``{device}`` filled in, checked before minutes of timing are spent on a report it can't write."""
    if args.json is None:
        return None
    path = Path(str(args.json).replace("{device}", device_type))
    if path.is_dir():
        args.parser.error(f"--json: {path} is a folder; give a file path such as {path / 'report.json'}")
    if path.exists() and not args.force:
        args.parser.error(f"--json: {path} exists; pass --force to overwrite it")
    return path


def _write_json(args: argparse.Namespace, path: Path, data: dict) -> None:
    from .bench import record

    try:
        record.write_json(path, data, force=args.force)
    except FileExistsError:  # created while the benchmark ran
        args.parser.error(f"--json: {path} exists; pass --force to overwrite it")
    print(f"wrote {path}")


def _check_models(args: argparse.Namespace, names: list[str]) -> None:
    for name in names:
        message = unknown_model_message(name)
        if message is not None:
            args.parser.error(message)


# --- bench ----------------------------------------------------------------------------------------------------


def _with_threads(bench: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """Run ``bench`` with ``--threads`` torch threads (default: every CPU the process may use), then restore them.

    The timers read ``torch.get_num_threads()`` and so do the reports, so what is timed is what is recorded.
    """

    @functools.wraps(bench)
    def run_with_threads(args: argparse.Namespace) -> None:
        from .bench import record

        before = torch.get_num_threads()
        torch.set_num_threads(args.threads or record.available_threads())
        try:
            bench(args)
        finally:
            torch.set_num_threads(before)

    return run_with_threads


def _kernel_config(args: argparse.Namespace, device: torch.device):
    """Fill the device-dependent defaults and check the sizes."""
    from .bench import kernels as bench_kernels

    error = args.parser.error
    cuda = device.type == "cuda"
    if args.kernel_size % 2 == 0:
        error(f"--kernel-size must be odd (a window centred on its query), got {args.kernel_size}")
    heads = {}
    for size in args.sizes:
        if size < args.kernel_size:
            error(f"--sizes: {size} is smaller than --kernel-size {args.kernel_size}; na2d needs the whole window")
        if args.heads is None and size not in bench_kernels.NAT_TINY_STAGES:
            error(
                f"--sizes: {size} is not a NAT-Tiny stage size ({sorted(bench_kernels.NAT_TINY_STAGES)}); give --heads"
            )
        heads[size] = args.heads or bench_kernels.NAT_TINY_STAGES[size]
    batch = args.batch or (32 if cuda else 1)
    if args.min_run_time is not None:
        min_run_time = args.min_run_time
    else:
        min_run_time = 0.1 if args.quick else 1.0
    return bench_kernels.KernelConfig(
        sizes=args.sizes,
        heads=heads,
        batch=batch,
        gather_batch=args.gather_batch or batch,
        head_dim=args.head_dim,
        kernel_size=args.kernel_size,
        dtype=args.dtype or ("bfloat16" if cuda else "float32"),
        min_run_time=min_run_time,
        quick=args.quick,
        backends=args.backends,
        gather=args.gather,
    )


@_with_threads
def bench_kernels(args: argparse.Namespace) -> None:
    from .bench import kernels as bench_kernels
    from .bench import record

    device = _device(args)
    config = _kernel_config(args, device)
    path = _json_path(args, device.type)
    report = bench_kernels.kernel_suite(device, config, progress=lambda text: print(text, flush=True))
    print(record.format_table(report.results))
    if report.skipped:
        print(bench_kernels.format_skipped(report.skipped))
    print(bench_kernels.format_summary(report.summary))
    if path is not None:
        settings = {**asdict(config), "threads": torch.get_num_threads()}
        extra = {"summary": report.summary, "skipped": [asdict(s) for s in report.skipped]}
        _write_json(args, path, record.build_report("kernels", device, report.results, settings, extra, args.argv))


@_with_threads
def bench_models(args: argparse.Namespace) -> None:
    from .bench import models as bench_models
    from .bench import record

    _check_models(args, args.models)
    device = _device(args)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cpu" and precision == "fp16":
        args.parser.error("--precision fp16 is for CUDA; on the CPU use fp32 or bf16")
    path = _json_path(args, device.type)
    results = bench_models.models_suite(
        device,
        args.models,
        args.size,
        args.batch,
        precision,
        args.compile,
        args.channels_last,
        args.min_run_time,
    )
    print(bench_models.format_model_table(results))
    if path is not None:
        settings = dict(
            models=args.models,
            size=args.size,
            batch=args.batch,
            precision=precision,
            compile=args.compile,
            channels_last=args.channels_last,
            min_run_time=args.min_run_time,
            threads=torch.get_num_threads(),
        )
        _write_json(args, path, record.build_report("models", device, results, settings, argv=args.argv))


@_with_threads
def bench_blocks(args: argparse.Namespace) -> None:
    from .bench import blocks as bench_blocks
    from .bench import record

    device = _device(args)
    if args.mixers is not None:
        known = {key for label, (name, _) in bench_blocks.block_settings(56).items() for key in (label, name)}
        unknown = [m for m in args.mixers if m not in known]
        if unknown:
            choices = ", ".join(sorted(known))
            args.parser.error(f"--mixers: unknown {', '.join(map(repr, unknown))}; choose from {choices}")
    path = _json_path(args, device.type)
    results = bench_blocks.blocks_suite(device, args.min_run_time, args.batch, args.cases, args.mixers)
    print(record.format_table(results))
    if path is not None:
        settings = dict(
            batch=args.batch,
            cases=[list(c) for c in args.cases],
            min_run_time=args.min_run_time,
            threads=torch.get_num_threads(),
            mixers=args.mixers,
            settings={size: bench_blocks.block_settings(size) for size, _, _ in args.cases},
        )
        _write_json(args, path, record.build_report("blocks", device, results, settings, argv=args.argv))


def bench_ptx(args: argparse.Namespace) -> None:
    from .bench import ptx

    path = _json_path(args, "cuda")  # the kernels are compiled for CUDA whatever this machine has
    print(ptx.HEADER)
    try:
        reports = ptx.ptx_suite(progress=lambda line: print(line, flush=True))
    except ptx.PtxUnavailable as error:
        args.parser.error(str(error))
    if path is not None:
        _write_json(args, path, ptx.build_report(reports, args.argv))
    found = ptx.problems(reports)
    for problem in found:
        print(f"PROBLEM: {problem}")
    if found:
        raise SystemExit(1)


def bench_plot(args: argparse.Namespace) -> None:
    from .bench import plot

    try:
        path = plot.plot_reports(args.reports, args.out, size=args.size, force=args.force)
    except plot.PlotError as error:
        args.parser.error(str(error))
    print(f"wrote {path}")


# --- list and info --------------------------------------------------------------------------------------------


def list_models(args: argparse.Namespace) -> None:
    import attnzoo

    names = attnzoo.list_models(args.pattern)
    if not names:
        args.parser.error(f"no attnzoo model matches {args.pattern!r}")
    rows = [(name, [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]) for name in names]
    if args.json:
        print(json.dumps([{"name": name, "tags": tags} for name, tags in rows], indent=2))
        return
    width = max(len(n) for n in names)
    for name, tags in rows:
        print(f"{name:<{width}}  {', '.join(tags) or '(no released weights)'}")


_TOP1 = re.compile(r"(\d+(?:\.\d+)?)% (?:ImageNet-1k )?top-1")


def _paper_top1(architecture: str, cfg) -> float | None:
    """The ImageNet-1k top-1 the paper reports for these weights; ``None`` where no number is stated.

    attnzoo states it in each entrypoint's docstring ("83.2% ImageNet-1k top-1"); the pretrained configs have
    no field for it. It belongs to the tags with an ImageNet-1k head only (not DiNAT-L's 22k-class weights).
    """
    if cfg.num_classes != 1000:
        return None
    found = _TOP1.search(timm.models.model_entrypoint(architecture).__doc__ or "")
    return float(found.group(1)) if found else None


def _count(name: str) -> tuple[int, int, list[int]]:
    """(parameters, MACs, input size) of ``timm.create_model(name)`` at its pretrained config's input size.

    Built on the meta device: no memory for the weights and no arithmetic. A model whose forward the meta
    device cannot run is counted on the CPU instead.
    """
    from .macs import count_macs

    with torch.device("meta"):
        model = timm.create_model(name).eval()
    params = sum(p.numel() for p in model.parameters())
    size = list(model.pretrained_cfg["input_size"])
    try:
        macs = count_macs(model, torch.empty(1, *size, device="meta"))
    except (RuntimeError, NotImplementedError):
        macs = count_macs(timm.create_model(name).eval(), torch.zeros(1, *size))
    return params, macs, size


def model_info(model: str) -> dict:
    """What ``attnzoo info`` prints: parameters and GMACs at the default input size, and each weights tag.

    ``model`` is a timm name (attnzoo's registered) or ``NAME.TAG``; a name that is neither raises ``ValueError``
    with close names.
    """
    import attnzoo  # noqa: F401  (registers attnzoo's models)

    architecture, _, tag = model.partition(".")
    message = unknown_model_message(architecture)
    if message is not None:
        raise ValueError(message)
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{architecture}.*")]
    if tag and tag not in tags:
        raise ValueError(f"unknown tag {tag!r} of {architecture}; its tags: {', '.join(tags) or 'none'}")
    params, macs, size = _count(model)
    info = {
        "name": model,
        "architecture": architecture,
        "params": params,
        "gmacs": round(macs / 1e9, 3),
        "input_size": size,
        "tags": {},
    }
    for name in [tag] if tag else tags:
        cfg = timm.models.get_pretrained_cfg(f"{architecture}.{name}")
        info["tags"][name] = {
            "url": cfg.url or None,
            "hf_hub_id": cfg.hf_hub_id,
            "license": cfg.license,
            "paper_top1": _paper_top1(architecture, cfg),
            "paper_ids": cfg.paper_ids,
            "input_size": list(cfg.input_size),
            "num_classes": cfg.num_classes,
        }
    return info


def show_model_info(args: argparse.Namespace) -> None:
    try:
        info = model_info(args.model)
    except ValueError as error:
        args.parser.error(str(error))
    print(json.dumps(info, indent=2))


# --- export, push-to-hub, timm scripts ------------------------------------------------------------------------


def export(args: argparse.Namespace) -> None:
    from . import export as exporting

    if args.onnx:  # before anything is written: without them torch.onnx fails deep inside, blaming the model
        missing = missing_extra("onnx", *exporting.ONNX_PACKAGES)
        if missing is not None:
            args.parser.error(f"--onnx {missing}")
    try:
        out = exporting.export_checkpoint(
            args.checkpoint, args.out_dir, ema=args.ema, datasets=args.datasets, force=args.force
        )
        tolerance = {} if args.onnx_atol is None else {"atol": args.onnx_atol}
        onnx = exporting.export_onnx(out, **tolerance) if args.onnx else None
    # FileExistsError: a folder with files in it, without --force; RuntimeError: torch.export cannot trace it
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as error:
        args.parser.error(str(error))
    config = json.loads((out / "config.json").read_text())
    written = [out / name for name in ("model.safetensors", "config.json", "README.md")] + ([onnx] if onnx else [])
    print(f"wrote {', '.join(map(str, written))}")
    size = config["pretrained_cfg"]["input_size"]
    print(f"  architecture {config['architecture']}, {config['num_classes']} classes, input {size}")
    print(f"  load: import attnzoo, timm; timm.create_model('local-dir:{out}', pretrained=True)")


def push_to_hub(args: argparse.Namespace) -> None:
    from .hub import push_to_hub as push

    try:
        url = push(
            args.checkpoint,
            args.repo_id,
            ema=args.ema,
            private=args.private,
            revision=args.revision,
            token=args.token,
            commit_message=args.message,
            datasets=args.datasets,
        )
    except (FileNotFoundError, ValueError) as error:
        args.parser.error(str(error))
    print(url)


def timm_script(args: argparse.Namespace) -> None:
    from .timm_scripts import ScriptNotFoundError, run_script

    try:
        run_script(args.script, args.args)
    except ScriptNotFoundError as error:  # the script's own errors are its to report
        args.parser.error(str(error))


# --- viz ------------------------------------------------------------------------------------------------------


def viz(args: argparse.Namespace) -> None:
    from . import viz as drawing

    device = _device(args)
    try:
        path = drawing.command(args, device)
    except drawing.VizError as error:
        args.parser.error(str(error))
    print(f"wrote {path}")


COMMANDS = {
    "bench_kernels": bench_kernels,
    "bench_models": bench_models,
    "bench_blocks": bench_blocks,
    "bench_ptx": bench_ptx,
    "bench_plot": bench_plot,
    "list_models": list_models,
    "model_info": show_model_info,
    "export": export,
    "push_to_hub": push_to_hub,
    "timm_script": timm_script,
    "viz": viz,
}
"""``args.run`` (set by the parser) -> the function that runs the command."""

if __name__ == "__main__":  # python -m attnzoo.tools.cli ...
    main(sys.argv[1:])
