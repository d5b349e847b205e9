"""The ``attnzoo`` console script: everything that is not training (``attnzoo-train``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _bench_kernels(args: argparse.Namespace) -> None:
    from attnzoo import bench

    device = torch.device(args.device)
    settings = dict(
        batch=args.batch,
        size=args.size,
        heads=args.heads,
        head_dim=args.head_dim,
        kernel_size=args.kernel_size,
        min_run_time=args.min_run_time,
        threads=torch.get_num_threads(),
    )
    results = bench.kernel_suite(
        device, args.min_run_time, args.batch, args.size, args.heads, args.head_dim, args.kernel_size
    )
    print(bench.format_table(results))
    if args.out is not None:
        print(f"wrote {bench.write_report('kernels', device, results, args.out, settings)}")


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
    from attnzoo import bench

    device = torch.device(args.device)
    settings = dict(
        batch=args.batch,
        cases=[list(c) for c in args.cases],
        min_run_time=args.min_run_time,
        threads=torch.get_num_threads(),
        mixers=args.mixers,
        settings={size: bench.block_settings(size) for size, _, _ in args.cases},
    )
    results = bench.blocks_suite(device, args.min_run_time, args.batch, args.cases, args.mixers)
    print(bench.format_table(results))
    if args.out is not None:
        print(f"wrote {bench.write_report('blocks', device, results, args.out, settings)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description="attnzoo: efficient-attention vision transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="time the kernels and write JSON to benchmarks/")
    suites = bench.add_subparsers(dest="suite", required=True)
    kernels = suites.add_parser("kernels", help="na2d and gather_attention per backend, next to natten.na2d")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    kernels.add_argument("--device", default=default_device, help=f"torch device (default: {default_device})")
    kernels.add_argument("--batch", type=int, default=1)
    kernels.add_argument("--size", type=int, default=56, help="feature map height = width")
    kernels.add_argument("--heads", type=int, default=4)
    kernels.add_argument("--head-dim", type=int, default=32)
    kernels.add_argument("--kernel-size", type=int, default=7)
    kernels.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    kernels.add_argument(
        "--out", type=Path, default=Path("benchmarks"), help="folder for the JSON report (default: benchmarks/)"
    )
    kernels.add_argument("--no-write", dest="out", action="store_const", const=None, help="print only")
    kernels.set_defaults(run=_bench_kernels)

    blocks = suites.add_parser("blocks", help="every token mixer next to dense SDPA attention, forward and backward")
    blocks.add_argument("--device", default=default_device, help=f"torch device (default: {default_device})")
    blocks.add_argument("--batch", type=int, default=1)
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
    blocks.add_argument("--out", type=Path, default=Path("benchmarks"), help="folder for the JSON report")
    blocks.add_argument("--no-write", dest="out", action="store_const", const=None, help="print only")
    blocks.set_defaults(run=_bench_blocks)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)
