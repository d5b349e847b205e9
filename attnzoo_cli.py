"""Launcher of the ``attnzoo`` command: the whole argument parser, and nothing heavy.

It lives outside the ``attnzoo`` package because importing any part of that package registers every model in
timm (torch and timm included), which costs seconds that ``attnzoo --help`` and a mistyped option should not.
The commands run in :mod:`attnzoo.tools.cli`, imported only once the arguments parse; whatever needs torch to
check (devices, model names) is checked there and reported through the same one-line parser error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import warnings
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

# Choices the parser offers without importing torch; tests/tools/test_cli.py checks them against their sources.
BACKENDS = ("torch", "triton", "flex", "natten")  # attnzoo.kernels.BACKENDS
NAT_TINY_STAGES = (56, 28, 14, 7)  # attnzoo.tools.bench.kernels.NAT_TINY_STAGES
GATHER_SHAPES = ("quadtree", "sparsifiner")  # attnzoo.tools.bench.kernels.GATHER_SHAPES
PRECISIONS = ("fp32", "bf16", "fp16")  # attnzoo.tools.bench.models.PRECISIONS

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available, else cpu)"
TIMM_DESCRIPTION = """\
Run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py; they are in a git checkout of
https://github.com/huggingface/pytorch-image-models, not in the pip package) as __main__ after `import attnzoo`,
with sys.argv = [SCRIPT, ARGS...], so attnzoo's model names resolve:

  attnzoo timm pytorch-image-models/validate.py /data/imagenet --model nat_tiny.in1k --pretrained
  attnzoo timm pytorch-image-models/benchmark.py --model dinat_tiny --bench inference --amp

Constructor arguments go through the scripts' own --model-kwargs KEY=VALUE ... (all four have it).
train.py alone also has --device-modules MODULE ..., which it imports first, so for training
  python pytorch-image-models/train.py --device-modules attnzoo --model nat_tiny ...
works without this command.
"""


# Dependency noise on every run, dropped by exact message in the entry points (never in the library):
# Lightning's advertisements (logged at INFO through its rank-zero logger) and deprecation warnings that
# Lightning itself triggers (its _pytree module builds torch's LeafSpec; its CLI calls jsonargparse's
# add_instantiator and instantiate_classes, its SaveConfigCallback passes skip_none; jsonargparse prefixes the
# first with an "only one warning per type" preamble).
ADVERTISEMENTS = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
)
ADVERTISING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
DEPENDENCY_WARNINGS = (  # (message regex, category) as warnings.filterwarnings takes them
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated, use `isinstance\(treespec, TreeSpec\)", FutureWarning),
    (r"\s*skip_none parameter was deprecated in v4\.49\.0", DeprecationWarning),
    (r"\s*``ArgumentParser\.add_instantiator`` was deprecated in v4\.49\.0", DeprecationWarning),
    (r"\s*``instantiate_classes`` was deprecated in v4\.49\.0", DeprecationWarning),
    (r"\s*By default only one JsonargparseDeprecationWarning per type is shown", DeprecationWarning),
)


class _AdvertisementFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENTS)


def quiet_dependencies() -> None:
    """Silence :data:`ADVERTISEMENTS` and :data:`DEPENDENCY_WARNINGS`, and nothing else (idempotent)."""
    for name in ADVERTISING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _AdvertisementFilter) for f in logger.filters):
            logger.addFilter(_AdvertisementFilter())
    for message, category in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def version() -> str:
    """attnzoo's installed version (``0.0.0+unknown`` in a source tree that was never installed)."""
    try:
        return metadata.version("attnzoo")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _install_source() -> tuple[str, bool] | None:
    """Where this attnzoo was installed from when that was not a package index: (pip target, editable).

    A checkout (this file beside pyproject.toml: an editable install or PYTHONPATH) gives its folder; otherwise
    pip's ``direct_url.json`` says: a local folder (``dir_info``), a local wheel or sdist that still exists
    (``archive_info``), or a VCS URL (``vcs_info``). ``None``: from an index (or unknown).
    """
    here = Path(__file__).resolve().parent
    if (here / "pyproject.toml").is_file() and (here / "zoo" / "__init__.py").is_file():
        return str(here), True
    for dist in metadata.distributions(name="attnzoo"):
        try:
            info = json.loads(dist.read_text("direct_url.json") or "null")
        except ValueError:
            info = None
        if not isinstance(info, dict) or not isinstance(info.get("url"), str):
            continue  # e.g. a stale .egg-info found first on sys.path
        url = urlparse(info["url"])
        if url.scheme == "file" and ("dir_info" in info or "archive_info" in info):
            path = Path(unquote(url.path))
            if path.exists():
                return str(path), bool((info.get("dir_info") or {}).get("editable"))
        elif "vcs_info" in info:
            vcs = info["vcs_info"]
            return f"{vcs.get('vcs', 'git')}+{info['url']}@{vcs.get('commit_id', '')}".rstrip("@"), False
        return None
    return None


def install_hint(extra: str) -> str:
    """The pip command that adds the ``[extra]`` of this attnzoo: from its checkout (``pip install -e '.[train]'``
    there, the folder's path elsewhere), the folder, wheel or repository it was installed from, else the index."""
    source = _install_source()
    if source is None:
        return f"pip install {shlex.quote(f'attnzoo[{extra}]')}"
    target, editable = source
    if "+" in target.split("/", 1)[0]:  # git+https://...: a direct reference
        return f"pip install {shlex.quote(f'attnzoo[{extra}] @ {target}')}"
    if Path(target) == Path.cwd().resolve():
        target = "."
    return "pip install " + ("-e " if editable else "") + shlex.quote(f"{target}[{extra}]")


def missing_extra(extra: str, *packages: str) -> str | None:
    """``None`` when every module of ``packages`` imports; else what is missing and the command that installs it."""
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"needs {', '.join(missing)} (the [{extra}] extra): {install_hint(extra)}"


class _Parser(argparse.ArgumentParser):
    """Errors are one line (``attnzoo bench kernels: error: ...``), not a usage block; ``--help`` shows the rest."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _block_case(text: str) -> tuple[int, int, int]:
    """``"56x96x3"`` -> (map size, channels, heads)."""
    try:
        size, dim, heads = (int(n) for n in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZExDIMxHEADS such as 56x96x3, got {text!r}") from None
    if min(size, dim, heads) < 1 or dim % heads:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1 and DIM divisible by HEADS")
    return size, dim, heads


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help=DEVICE_HELP)


def _add_datasets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        default=[],
        metavar="ID",
        help="Hub dataset id the model card names (repeatable), e.g. ILSVRC/imagenet-1k",
    )


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads torch runs and is timed with, recorded in the report (default: every CPU this process "
        "may use)",
    )


def _add_json_output(parser: argparse.ArgumentParser, example: str) -> None:
    """Reports are written only when asked, and never over an existing file without ``--force``."""
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"also write the JSON report to PATH ({{device}} in PATH becomes cpu or cuda), e.g. {example}",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")


def _add_bench(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="time kernels, blocks and models; print a table and, with --json PATH, write the report; plot reports",
        description="Print a table; --json PATH also writes the JSON report (device, versions, command line).",
    )
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")

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
    _add_device(kernels)
    _add_threads(kernels)
    kernels.add_argument(
        "--sizes",
        "--size",
        nargs="+",
        type=_positive_int,
        default=list(NAT_TINY_STAGES),
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
    kernels.add_argument("--head-dim", type=_positive_int, default=32, help="default: 32")
    kernels.add_argument(
        "--kernel-size", type=_positive_int, default=7, help="na2d kernel and window-attention window (default: 7)"
    )
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
        choices=GATHER_SHAPES,
        default=list(GATHER_SHAPES),
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
    _add_json_output(kernels, "benchmarks/kernels-{device}.json")
    kernels.set_defaults(run="bench_kernels", parser=kernels)

    models = suites.add_parser(
        "models",
        help="inference throughput (images/s) and peak memory of timm models, attnzoo's included",
        description=(
            "Median forward time of one batch under torch.inference_mode (autocast for bf16/fp16), as images/s, "
            "peak memory and parameter count, per timm model (attnzoo's registered models included)."
        ),
    )
    models.add_argument("models", nargs="+", metavar="MODEL", help="timm model names")
    models.add_argument("--size", type=_positive_int, default=224, help="image height = width (default: 224)")
    models.add_argument("--batch", type=_positive_int, default=8, help="images per batch (default: 8)")
    models.add_argument(
        "--precision",
        choices=PRECISIONS,
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
    _add_device(models)
    _add_threads(models)
    models.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per model (default: 1)")
    _add_json_output(models, "benchmarks/models-{device}.json")
    models.set_defaults(run="bench_models", parser=models)

    blocks = suites.add_parser(
        "blocks",
        help="every token mixer next to dense SDPA attention, forward and backward",
        description="Each token mixer's forward and forward+backward next to dense SDPA attention, per case.",
    )
    _add_device(blocks)
    _add_threads(blocks)
    blocks.add_argument("--batch", type=_positive_int, default=1, help="default: 1")
    blocks.add_argument(
        "--cases",
        nargs="+",
        type=_block_case,
        default=[(56, 96, 3), (14, 384, 12)],
        metavar="SIZExDIMxHEADS",
        help="map size, channels and heads per case (default: 56x96x3 14x384x12)",
    )
    blocks.add_argument(
        "--mixers", nargs="+", default=None, metavar="MIXER", help="only these mixers (labels or create_mixer names)"
    )
    blocks.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    _add_json_output(blocks, "benchmarks/blocks-{device}.json")
    blocks.set_defaults(run="bench_blocks", parser=blocks)

    ptx = suites.add_parser(
        "ptx",
        help="compile every Triton kernel for sm_80/sm_90 (no GPU needed): tensor-core instructions, registers, spills",
        description=(
            "Compile each Triton kernel of attnzoo.kernels with the launch parameters backend='auto' uses at "
            "NAT-Tiny's stage-1 shape (B=64, 56x56, 2 heads, d=32, k=7, rpb; forward and backward) and at "
            "gather_attention's QuadTree and Sparsifiner shapes, in bf16 and fp16, for sm_80 and sm_90, through "
            "Triton's GPUTarget and its bundled ptxas. Prints per kernel and arch: mma/wgmma instructions in the "
            "PTX, atomics, registers per thread, spilled bytes and shared memory. Exits with status 1 when an na2d "
            "kernel has no tensor-core instruction or any kernel spills. Run it without TRITON_INTERPRET=1."
        ),
    )
    _add_json_output(ptx, "benchmarks/ptx.json")
    ptx.set_defaults(run="bench_ptx", parser=ptx)

    plot = suites.add_parser(
        "plot",
        help="draw kernels/blocks/models reports (--json files) as a PNG: time and peak memory (matplotlib)",
        description=(
            "One row per REPORT (a JSON file of bench kernels, blocks or models): median time and peak extra memory "
            "against the map size, one line per implementation and mode (models: images/s per model, or time "
            "against the batch), titled with the device and library versions. Needs the [viz] extra (matplotlib)."
        ),
    )
    plot.add_argument("reports", nargs="+", type=Path, metavar="REPORT", help="e.g. benchmarks/kernels-cpu.json")
    plot.add_argument("--out", type=Path, required=True, metavar="FIG.png", help="PNG to write")
    plot.add_argument(
        "--size", type=_size_px, default=None, metavar="WxH", help="exact PNG size (default: grows with the reports)"
    )
    plot.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    plot.set_defaults(run="bench_plot", parser=plot)


def _queries(text: str) -> list[tuple[int, int]]:
    """``"112,80"`` or ``"40,40;100,180"`` -> [(Y, X), ...] pixels of the model's input."""
    try:
        queries = [tuple(int(n) for n in point.split(",")) for point in text.split(";") if point.strip()]
    except ValueError:
        queries = []
    if not queries or any(len(q) != 2 for q in queries):
        raise argparse.ArgumentTypeError(f"expected Y,X pixels such as 112,80 (several: 'Y,X;Y,X'), got {text!r}")
    return queries


def _size_px(text: str) -> tuple[int, int]:
    """``"1200x800"`` -> (width, height) in pixels."""
    try:
        width, height = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels such as 1200x800, got {text!r}") from None
    if min(width, height) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: a figure needs at least 32 pixels a side")
    return width, height


def _key_value(text: str) -> tuple[str, object]:
    """``"depths=[1,1,1,1]"`` -> ("depths", [1, 1, 1, 1]): a Python literal, else the text (timm's scripts' rule)."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as embed_dim=32, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _add_viz(commands) -> None:
    viz = commands.add_parser(
        "viz",
        help="draw, for a query pixel, what each stage's mixer attends to, over the image (PNG/SVG/PDF; matplotlib)",
        description=(
            "Run MODEL once on IMAGE (preprocessed with the model's timm data config) with every attnzoo mixer "
            "recording, and draw, for the query pixel, each stage's mixer over the image as the model saw it: "
            "NA/DiNAT neighbourhoods with their weights, HiLo's window and pooled map, QuadTree's regions per "
            "level, Agent's agent maps, FocalNet's modulator, Sparsifiner's kept keys, DaViT's windows and channel "
            "attention. timm's own davit_*/focalnet_* are grafted with attnzoo's mixers (same weights) first. "
            "--grid draws every mixer's main map for several queries. Needs the [viz] extra (matplotlib)."
        ),
    )
    viz.add_argument(
        "model", nargs="?", default=None, metavar="MODEL", help="timm model name (optional with --checkpoint)"
    )
    viz.add_argument("--image", type=Path, required=True, metavar="PATH", help="image file (any format PIL reads)")
    viz.add_argument(
        "--out", type=Path, required=True, metavar="FIG.png", help="figure to write: .png, .svg or .pdf (by the suffix)"
    )
    viz.add_argument(
        "--query",
        type=_queries,
        action="append",
        default=None,
        metavar="Y,X",
        help="query pixel (row, column) of the model's input image (default: its centre); with --grid repeatable "
        "or 'Y,X;Y,X' (default: a 3x3 lattice)",
    )
    viz.add_argument("--grid", action="store_true", help="rows: every mixer; columns: the queries; each main map")
    viz.add_argument(
        "--layers",
        default=None,
        metavar="WHICH",
        help="last (each stage's last block; 4 spaced blocks of a ViT; default without --grid), all (default with "
        "--grid), or comma-separated globs over module names such as 'stages.0.*'",
    )
    weights = viz.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, default=None, metavar="CKPT", help="a .ckpt of attnzoo-train")
    weights.add_argument("--pretrained", action="store_true", help="the model's registered weights (downloads)")
    weights.add_argument(
        "--pretrained-file", type=Path, default=None, metavar="PATH", help="weights file (.safetensors, .pth) to load"
    )
    viz.add_argument("--ema", action="store_true", help="with --checkpoint: its EMA weights")
    viz.add_argument(
        "--model-kwargs",
        nargs="+",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="constructor arguments, Python literals (e.g. depths=[1,1,1,1] kernel_size=3)",
    )
    viz.add_argument(
        "--size", type=_positive_int, default=None, help="input side N (default: the data config's; img_size if given)"
    )
    viz.add_argument(
        "--size-px",
        type=_size_px,
        default=None,
        metavar="WxH",
        help="exact figure size in pixels (100 per inch in SVG/PDF; default: grows with the panels)",
    )
    _add_device(viz)
    viz.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    viz.set_defaults(run="viz", parser=viz)


ARENA_DESCRIPTION = """\
Train every entry of the arena (attnzoo.arena: one backbone, only the token mixer differs) at one compute budget
with one recipe, seed and data order, through attnzoo-train's Lightning task; then each trained model's top-1 at
every --sizes value (resolution transfer) and its inference and training-step throughput and peak memory there.
Writes OUT/arena.json, OUT/arena.md and OUT/arena.png; each entry is a run folder OUT/entries/NAME, so a killed
arena resumes with its finished entries kept. Needs the [train] extra (and [viz] for the PNG).

  attnzoo arena --mixers all --budget 4.5 --data /data/imagenet --epochs 300 --sizes 224,384,512 --out runs/arena
  attnzoo arena --mixers neighborhood,hilo,dense --budget 0.1 --data long-range --epochs 5 --sizes 64,128 --out a
"""


def _add_arena(commands) -> None:
    arena = commands.add_parser(
        "arena",
        help="train every mixer in one backbone at equal compute and compare accuracy, transfer, speed and memory",
        description=ARENA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    arena.add_argument("--mixers", default="all", metavar="all|LIST", help="entries, comma-separated (default: all)")
    arena.add_argument("--budget", type=float, required=True, metavar="GMACS", help="GMACs at the first --sizes value")
    arena.add_argument(
        "--data", required=True, metavar="ROOT|digits|long-range", help="an ImageFolder tree, digits or long-range"
    )
    arena.add_argument("--epochs", type=_positive_int, default=10, metavar="N", help="training epochs (default 10)")
    arena.add_argument(
        "--sizes",
        default="224,384,512,768,1024",
        metavar="LIST",
        help="input sides; the first trains (default 224,...)",
    )
    arena.add_argument("--out", type=Path, required=True, metavar="DIR", help="the arena's folder (resumed if present)")
    arena.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="training batch (default 64)")
    arena.add_argument("--bench-batch", type=_positive_int, default=8, metavar="N", help="timing batch (default 8)")
    arena.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    arena.add_argument("--seed", type=int, default=0, help="seed of every entry (default 0)")
    arena.add_argument(
        "--step-limit",
        type=float,
        default=60.0,
        metavar="S",
        help="skip (and record) a size where one batch is predicted to take longer than S seconds (default 60)",
    )
    arena.add_argument("--train-images", type=_positive_int, default=2000, metavar="N", help="long-range: training set")
    arena.add_argument("--val-images", type=_positive_int, default=500, metavar="N", help="long-range: validation set")
    _add_device(arena)
    arena.set_defaults(arena=True, parser=arena)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``attnzoo`` parser; importing neither torch, timm nor attnzoo."""
    parser = _Parser(prog="attnzoo", description="attnzoo: efficient-attention vision transformers registered in timm.")
    parser.add_argument("--version", action="version", version=f"attnzoo {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list", help="the models attnzoo registers in timm, with their weights' tags", description="Models and tags."
    )
    listing.add_argument("pattern", nargs="?", default="*", help="glob over model names (default: all)")
    listing.add_argument("--json", action="store_true", help='print a JSON array of {"name", "tags"}')
    listing.set_defaults(run="list_models", parser=listing)

    info = commands.add_parser(
        "info",
        help="one JSON document: parameters, GMACs, and per weights tag the URL, license, paper top-1, input size",
        description=(
            "Print one JSON object for a timm model name (attnzoo's included) or NAME.TAG: parameters and GMACs at "
            "its default input size (counted on the meta device, nothing downloaded) and, per pretrained tag, "
            "the weights' url / hf_hub_id, license, paper top-1 (ImageNet-1k; null where none is stated), "
            "input size and classes."
        ),
    )
    info.add_argument("model", metavar="NAME", help="model name or NAME.TAG, e.g. nat_tiny or nat_tiny.in1k")
    info.set_defaults(run="model_info", parser=info)

    _add_bench(commands)

    export = commands.add_parser(
        "export",
        help="a Lightning checkpoint of attnzoo-train -> model.safetensors + config.json that timm loads",
        description=(
            "Write OUT_DIR/model.safetensors and OUT_DIR/config.json (timm's pretrained-config layout) from a "
            "ClassificationTask checkpoint, so that timm.create_model('local-dir:OUT_DIR', pretrained=True) (after "
            "`import attnzoo`) or timm.create_model(NAME, pretrained=True, num_classes=K, "
            "pretrained_cfg_overlay=dict(file=OUT_DIR/model.safetensors, num_classes=K)) load it. config.json records "
            "the model's arguments and the preprocessing it was trained with. --onnx also writes OUT_DIR/model.onnx, "
            "checked against the eager model. A folder that already holds files is written into only with --force."
        ),
    )
    export.add_argument("checkpoint", type=Path, metavar="CKPT", help="a .ckpt written by attnzoo-train")
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created if missing)")
    export.add_argument(
        "--force", action="store_true", help="export into OUT_DIR even if it holds files (replacing the export's own)"
    )
    export.add_argument("--ema", action="store_true", help="export the EMA weights (runs with ema_decay set)")
    export.add_argument("--onnx", action="store_true", help="also write OUT_DIR/model.onnx (checked numerically)")
    export.add_argument(
        "--onnx-atol",
        type=float,
        default=None,
        metavar="ATOL",
        help="absolute tolerance of the ONNX check (default 1e-4; Sparsifiner's top-k flips near-ties: use 1e-2)",
    )
    _add_datasets(export)
    export.set_defaults(run="export", parser=export)

    hub = commands.add_parser(
        "push-to-hub",
        help="export a checkpoint and upload it to a Hugging Face Hub model repository",
        description=(
            "Export CKPT as `attnzoo export` does and upload the folder to the Hub repository REPO_ID (created if "
            "missing); prints its URL. The token defaults to huggingface_hub's (HF_TOKEN or a stored login)."
        ),
    )
    hub.add_argument("checkpoint", type=Path, metavar="CKPT", help="a .ckpt written by attnzoo-train")
    hub.add_argument("repo_id", metavar="REPO_ID", help="e.g. your-name/nat_mini-digits")
    hub.add_argument("--ema", action="store_true", help="upload the EMA weights")
    hub.add_argument("--private", action="store_true", help="create the repository as private")
    hub.add_argument("--revision", default=None, metavar="REV", help="branch to push to (default: main)")
    hub.add_argument("--token", default=None, help="Hub token (default: huggingface_hub's stored one)")
    hub.add_argument("--message", default=None, help="commit message (default: names the checkpoint)")
    _add_datasets(hub)
    hub.set_defaults(run="push_to_hub", parser=hub)

    _add_viz(commands)
    _add_arena(commands)

    timm_script = commands.add_parser(
        "timm",
        help="run timm's train.py / validate.py / benchmark.py / inference.py with attnzoo's models registered",
        description=TIMM_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    timm_script.add_argument("script", type=Path, metavar="SCRIPT", help="path of the timm script file")
    timm_script.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    timm_script.set_defaults(run="timm_script", parser=timm_script)
    return parser


def main(argv: list[str] | None = None) -> None:
    """The ``attnzoo`` command; ``argv`` defaults to ``sys.argv[1:]`` (tests pass a list and stay in-process)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the reports record the exact command line
    quiet_dependencies()
    if getattr(args, "arena", False):  # trains: it lives on the training floor, which tools may not import
        missing = missing_extra("train", "lightning")
        if missing is not None:
            sys.exit(f"attnzoo arena: error: the arena trains; {missing}")
        from attnzoo.train.arena import main as run_arena

        run_arena(args)
        return
    from attnzoo.tools import cli

    try:
        cli.run(args)
    except BrokenPipeError:  # `attnzoo list | head`: the reader left; no traceback (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush then goes nowhere
        sys.exit(1)


def train(argv: list[str] | None = None) -> None:
    """The ``attnzoo-train`` command: Lightning's CLI, which is the ``[train]`` extra, not the core install.

    ``--version`` answers before Lightning is looked for or imported.
    """
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:
        print(f"attnzoo-train {version()}")
        return
    missing = missing_extra("train", "lightning")
    if missing is not None:
        sys.exit(f"attnzoo-train: error: training {missing}")
    quiet_dependencies()
    from attnzoo.train.cli import main as run

    try:
        run(argv)
    except BrokenPipeError:  # `attnzoo-train recipes | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
