"""The ``attnzoo`` console script: everything that is not training (``attnzoo-train``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import timm
import torch

from attnzoo._names import unknown_model_message
from attnzoo.kernels import BACKENDS

from .bench import blocks as bench_blocks
from .bench import kernels as bench_kernels
from .bench import models as bench_models
from .bench import record


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(text: str) -> torch.device:
    """A torch device that exists here, so a typo or a missing GPU is an argparse error, not a traceback."""
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("CUDA is not available on this machine")
    return device


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _kernel_config(args: argparse.Namespace, error) -> bench_kernels.KernelConfig:
    """Fill the device-dependent defaults and check the sizes; ``error`` is the subparser's ``error``."""
    cuda = args.device.type == "cuda"
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


def _bench_kernels(args: argparse.Namespace) -> None:
    config = _kernel_config(args, args.parser.error)
    report = bench_kernels.kernel_suite(args.device, config, progress=lambda text: print(text, flush=True))
    print(record.format_table(report.results))
    if report.skipped:
        print(bench_kernels.format_skipped(report.skipped))
    print(bench_kernels.format_summary(report.summary))
    if args.out is not None:
        settings = {**asdict(config), "threads": torch.get_num_threads()}
        extra = {"summary": report.summary, "skipped": [asdict(s) for s in report.skipped]}
        path = record.write_report("kernels", args.device, report.results, args.out, settings, extra, args.argv)
        print(f"wrote {path}")


def _bench_ptx(args: argparse.Namespace) -> None:
    from .bench import ptx

    print(ptx.HEADER)
    try:
        reports = ptx.ptx_suite(progress=lambda line: print(line, flush=True))
    except ptx.PtxUnavailable as error:
        raise SystemExit(f"attnzoo bench ptx: {error}") from None
    if args.out is not None:
        print(f"wrote {ptx.write_report(reports, args.out, args.argv)}")
    found = ptx.problems(reports)
    for problem in found:
        print(f"PROBLEM: {problem}")
    if found:
        raise SystemExit(1)


def _timm_model(name: str) -> str:
    """A timm model name (attnzoo's registered too); otherwise an argparse error listing close names."""
    message = unknown_model_message(name)
    if message is not None:
        raise argparse.ArgumentTypeError(message)
    return name


def _bench_models(args: argparse.Namespace) -> None:
    precision = args.precision or ("bf16" if args.device.type == "cuda" else "fp32")
    if args.device.type == "cpu" and precision == "fp16":
        args.parser.error("--precision fp16 is for CUDA; on the CPU use fp32 or bf16")
    results = bench_models.models_suite(
        args.device,
        args.models,
        args.size,
        args.batch,
        precision,
        args.compile,
        args.channels_last,
        args.min_run_time,
    )
    print(bench_models.format_model_table(results))
    if args.out is not None:
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
        print(f"wrote {record.write_report('models', args.device, results, args.out, settings, argv=args.argv)}")


def _block_case(text: str) -> tuple[int, int, int]:
    """``"56x96x3"`` -> (map size, channels, heads)."""
    try:
        size, dim, heads = (int(n) for n in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZExDIMxHEADS such as 56x96x3, got {text!r}") from None
    if min(size, dim, heads) < 1 or dim % heads:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1 and DIM divisible by HEADS")
    return size, dim, heads


def _bench_blocks(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    settings = dict(
        batch=args.batch,
        cases=[list(c) for c in args.cases],
        min_run_time=args.min_run_time,
        threads=torch.get_num_threads(),
        mixers=args.mixers,
        settings={size: bench_blocks.block_settings(size) for size, _, _ in args.cases},
    )
    results = bench_blocks.blocks_suite(device, args.min_run_time, args.batch, args.cases, args.mixers)
    print(record.format_table(results))
    if args.out is not None:
        print(f"wrote {record.write_report('blocks', device, results, args.out, settings, argv=args.argv)}")


def _add_output(suite: argparse.ArgumentParser, text: str) -> None:
    suite.add_argument("--out", type=Path, default=Path("benchmarks"), help=text)
    suite.add_argument("--no-write", dest="out", action="store_const", const=None, help="print only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description="attnzoo: efficient-attention vision transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    bench_parser = commands.add_parser("bench", help="time kernels, blocks and models; write JSON to benchmarks/")
    suites = bench_parser.add_subparsers(dest="suite", required=True)
    default_device = _default_device()
    kernels = suites.add_parser(
        "kernels",
        help="na2d per backend next to window and full attention (SDPA) at NAT-Tiny's stage shapes; gather_attention",
        description=(
            "Forward (no grad) and forward+backward median time and peak memory of na2d (every available backend, "
            "with and without rpb, dilation 1 and the largest that fits), Swin-style window attention and full "
            "attention through SDPA, at NAT-Tiny's stage shapes (56:2 28:4 14:8 7:16 heads, d=32, k=7); and "
            "gather_attention at QuadTree stage-1 and Sparsifiner shapes. Defaults: batch 1 and float32 on the CPU, "
            "batch 32 and bfloat16 on CUDA; 1 s of timing per measurement (0.1 s with --quick)."
        ),
    )
    kernels.add_argument("--device", type=_device, default=default_device, help=f"default: {default_device}")
    kernels.add_argument(
        "--sizes",
        "--size",
        nargs="+",
        type=_positive_int,
        default=list(bench_kernels.NAT_TINY_STAGES),
        metavar="SIZE",
        help="feature-map sides (default: 56 28 14 7; heads from NAT-Tiny unless --heads)",
    )
    kernels.add_argument(
        "--heads", type=_positive_int, default=None, help="heads at every size (default: NAT-Tiny's per size)"
    )
    kernels.add_argument("--batch", type=_positive_int, default=None, help="default: 1 on CPU, 32 on CUDA")
    kernels.add_argument(
        "--gather-batch", type=_positive_int, default=None, help="gather_attention batch (default: --batch)"
    )
    kernels.add_argument("--head-dim", type=_positive_int, default=32)
    kernels.add_argument("--kernel-size", type=_positive_int, default=7, help="na2d kernel and window-attention window")
    kernels.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )
    kernels.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=None,
        help="only these backends (default: every available one, except interpreted Triton on the CPU)",
    )
    kernels.add_argument(
        "--gather",
        nargs="*",
        choices=list(bench_kernels.GATHER_SHAPES),
        default=list(bench_kernels.GATHER_SHAPES),
        metavar="SHAPE",
        help="gather_attention workloads: quadtree, sparsifiner (default: both; none with an empty list)",
    )
    kernels.add_argument(
        "--quick", action="store_true", help="dilation 1 only, no rpb variants, 0.1 s per measurement by default"
    )
    kernels.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds of timing per measurement (default: 1.0, or 0.1 with --quick)",
    )
    _add_output(kernels, "folder for the JSON report (default: benchmarks/)")
    kernels.set_defaults(run=_bench_kernels, parser=kernels)

    models = suites.add_parser(
        "models",
        help="inference throughput (images/s) and peak memory of timm models, attnzoo's included",
        description=(
            "Median forward time of one batch under torch.inference_mode (autocast for bf16/fp16), as images/s, "
            "peak memory and parameter count, per timm model (attnzoo's registered models included)."
        ),
    )
    models.add_argument("models", nargs="+", type=_timm_model, metavar="MODEL", help="timm model names")
    models.add_argument("--size", type=_positive_int, default=224, help="image height = width (default: 224)")
    models.add_argument("--batch", type=_positive_int, default=8, help="images per batch (default: 8)")
    models.add_argument(
        "--precision",
        choices=list(bench_models.PRECISIONS),
        default=None,
        help="fp32, or autocast to bf16/fp16 (default: fp32 on CPU, bf16 on CUDA; fp16 needs CUDA)",
    )
    models.add_argument("--compile", action="store_true", help="torch.compile the model (compile time not timed)")
    models.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last model and input (default: on)",
    )
    models.add_argument("--device", type=_device, default=default_device, help=f"default: {default_device}")
    models.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model (default: 1)")
    _add_output(models, "folder for the JSON report")
    models.set_defaults(run=_bench_models, parser=models)

    blocks = suites.add_parser("blocks", help="every token mixer next to dense SDPA attention, forward and backward")
    blocks.add_argument("--device", default=default_device, help=f"torch device (default: {default_device})")
    blocks.add_argument("--batch", type=_positive_int, default=1)
    blocks.add_argument(
        "--cases",
        nargs="+",
        type=_block_case,
        default=[(56, 96, 3), (14, 384, 12)],
        metavar="SIZExDIMxHEADS",
        help="map size, channels and heads per case (default: 56x96x3 14x384x12)",
    )
    blocks.add_argument("--mixers", nargs="+", default=None, help="only these mixers (labels or create_mixer names)")
    blocks.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    _add_output(blocks, "folder for the JSON report")
    blocks.set_defaults(run=_bench_blocks)

    ptx = suites.add_parser(
        "ptx",
        help="compile every Triton kernel for sm_80/sm_90 (no GPU needed): tensor-core instructions, registers, spills",
        description=(
            "Compile each Triton kernel of attnzoo.kernels with the launch parameters backend='auto' uses at "
            "NAT-Tiny's stage-1 shape (B=64, 56x56, 2 heads, d=32, k=7, rpb; forward and backward) and at "
            "gather_attention's QuadTree and Sparsifiner shapes, in bf16 and fp16, for sm_80 and sm_90, through "
            "Triton's GPUTarget and its bundled ptxas. Prints and writes per kernel and arch: mma/wgmma "
            "instructions in the PTX, atomics, registers per thread, spilled bytes and shared memory. Exits with "
            "status 1 when an na2d kernel has no tensor-core instruction or any kernel spills. "
            "Run it without TRITON_INTERPRET=1."
        ),
    )
    _add_output(ptx, "folder for ptx.json (default: benchmarks/)")
    ptx.set_defaults(run=_bench_ptx)

    listing = commands.add_parser("list", help="the models attnzoo registers in timm, with their weights")
    listing.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    listing.set_defaults(run=_list_models)

    info = commands.add_parser("info", help="a model's pretrained configs (weights URL, license, paper, input size)")
    info.add_argument("model", help="registered model name, e.g. nat_tiny or nat_tiny.in1k")
    info.set_defaults(run=_model_info, parser=info)

    export = commands.add_parser(
        "export",
        help="a Lightning checkpoint of attnzoo-train -> model.safetensors + config.json that timm loads",
        description=(
            "Write OUT_DIR/model.safetensors and OUT_DIR/config.json (timm's pretrained-config layout) from a "
            "ClassificationTask checkpoint, so that timm.create_model('local-dir:OUT_DIR', pretrained=True) (after "
            "`import attnzoo`) or timm.create_model(NAME, pretrained=True, num_classes=K, "
            "pretrained_cfg_overlay=dict(file=OUT_DIR/model.safetensors, num_classes=K)) load it. config.json records "
            "the model's arguments and the preprocessing it was trained with."
        ),
    )
    export.add_argument("checkpoint", type=Path, metavar="CKPT", help="a .ckpt written by attnzoo-train")
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created if missing)")
    export.add_argument("--ema", action="store_true", help="export the EMA weights (runs with ema_decay set)")
    export.set_defaults(run=_export, parser=export)
    return parser


def _export(args: argparse.Namespace) -> None:
    from .export import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out_dir, ema=args.ema)
    except (FileNotFoundError, ValueError) as error:
        args.parser.error(str(error))
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
    size = config["pretrained_cfg"]["input_size"]
    print(f"  architecture {config['architecture']}, {config['num_classes']} classes, input {size}")
    print(f"  load: import attnzoo, timm; timm.create_model('local-dir:{out}', pretrained=True)")


def _list_models(args: argparse.Namespace) -> None:
    import attnzoo

    names = attnzoo.list_models(args.pattern)
    if not names:
        raise SystemExit(f"no attnzoo model matches {args.pattern!r}")
    width = max(len(n) for n in names)
    for name in names:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        print(f"{name:<{width}}  {', '.join(tags) or '(no released weights)'}")


def _model_info(args: argparse.Namespace) -> None:
    import attnzoo

    name = args.model.split(".", 1)[0]
    if name not in attnzoo.list_models():
        close = attnzoo.list_models(f"*{name.split('_')[0]}*")
        args.parser.error(f"{args.model!r} is not an attnzoo model" + (f"; close: {', '.join(close)}" if close else ""))
    tags = [args.model] if "." in args.model else timm.list_pretrained(f"{name}.*") or [name]
    for tag in tags:
        cfg = timm.models.get_pretrained_cfg(tag)
        if cfg is None:
            args.parser.error(f"{tag!r} has no pretrained config; tags: {', '.join(timm.list_pretrained(name + '.*'))}")
        print(json.dumps({"name": tag, **cfg.to_dict()}, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the reports record the exact command line
    args.run(args)
