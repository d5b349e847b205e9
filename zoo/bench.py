"""Benchmarks that carry the project's performance claims (``attnzoo bench ...``).

Each suite times forward and forward+backward with ``torch.utils.benchmark`` and measures the
peak extra memory of one call, then writes JSON with the device, library versions and the
command line to ``benchmarks/``. Timed tests would be flaky; these numbers are recorded instead.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark as torch_benchmark

from attnzoo import kernels

FORWARD = "forward (no grad)"
FORWARD_BACKWARD = "forward+backward"


@dataclass
class Result:
    case: str
    implementation: str
    mode: str  # "forward", "forward (no grad)" or "forward+backward"
    median_ms: float
    peak_extra_mib: float | None
    shape: str


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


class PeakMemory:
    """Peak memory of one call above what was live before it.

    CUDA: the caching allocator's peak counter. CPU: the kernel's resident-set high-water mark,
    reset through ``/proc/self/clear_refs``; glibc is told to map every block above 64 KiB
    separately so that freed tensors leave the resident set and earlier calls do not hide later ones.
    Returns ``None`` where neither is possible (non-Linux CPU).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_ok = device.type == "cpu" and Path("/proc/self/clear_refs").exists()
        if self.cpu_ok:
            try:
                ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD; fixed, so not adaptive
            except OSError:
                self.cpu_ok = False

    @staticmethod
    def _status_bytes(field: str) -> int:
        text = Path("/proc/self/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024

    def measure(self, fn: Callable[[], object]) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20
        if not self.cpu_ok:
            return None
        Path("/proc/self/clear_refs").write_text("5")
        before = self._status_bytes("VmRSS")
        fn()
        return (self._status_bytes("VmHWM") - before) / 2**20


def time_ms(fn: Callable[[], object], min_run_time: float) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA-synchronised by torch.utils.benchmark)."""
    fn()  # warm-up: lazy initialisation, autotuning, caches
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def no_grad_call(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``forward`` without autograd: the inference cost."""

    def call():
        with torch.no_grad():
            return forward()

    return call


def forward_backward_call(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    """``forward`` then backward of a ones gradient; ``inputs``' grads are dropped so none accumulate."""

    def call():
        out = forward()
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    return call


def measure(
    case: str,
    implementation: str,
    mode: str,
    shape: str,
    fn: Callable[[], object],
    memory: PeakMemory,
    min_run_time: float,
) -> Result:
    """Median time, then peak memory (after the warm-up, so lazy initialisation is not counted)."""
    return Result(case, implementation, mode, time_ms(fn, min_run_time), memory.measure(fn), shape)


def run_case(
    case: str,
    implementation: str,
    shape: str,
    forward: Callable[[], torch.Tensor],
    inputs: list[torch.Tensor],
    memory: PeakMemory,
    min_run_time: float,
    with_backward: bool,
) -> list[Result]:
    """Time ``forward`` without grad, and (if ``with_backward``) forward+backward through ``inputs``."""
    results = [measure(case, implementation, FORWARD, shape, no_grad_call(forward), memory, min_run_time)]
    if with_backward:
        fn = forward_backward_call(forward, inputs)
        results.append(measure(case, implementation, FORWARD_BACKWARD, shape, fn, memory, min_run_time))
    return results


NAT_TINY_STAGES: dict[int, int] = {56: 2, 28: 4, 14: 8, 7: 16}
"""Feature-map side -> heads of NAT-Tiny's four stages at 224x224 input (head_dim 32 throughout)."""


@dataclass(frozen=True)
class GatherShape:
    """One ``gather_attention`` workload: per batch element, ``heads`` x ``queries`` queries listing ``listed`` keys."""

    name: str
    heads: int
    queries: int
    keys: int
    listed: int
    head_dim: int


GATHER_SHAPES: dict[str, GatherShape] = {
    # QuadTree-B stage 1 (224x224 input): each of the 56x56 queries attends to the 4 children of its top-8 parents.
    "quadtree": GatherShape("quadtree", heads=1, queries=56 * 56, keys=56 * 56, listed=8 * 4, head_dim=32),
    # Sparsifiner on DeiT-S: 197 tokens, 6 heads of 64, about a quarter of the keys kept per query.
    "sparsifiner": GatherShape("sparsifiner", heads=6, queries=197, keys=197, listed=50, head_dim=64),
}


@dataclass
class Skipped:
    """A measurement the backend declined (``BackendError``); recorded so a missing number is explained."""

    case: str
    implementation: str
    mode: str
    shape: str
    reason: str


@dataclass
class KernelConfig:
    """Everything that decides what ``kernel_suite`` measures; written to the report's ``settings`` as is."""

    sizes: list[int]
    heads: dict[int, int]
    batch: int
    gather_batch: int
    head_dim: int = 32
    kernel_size: int = 7
    dtype: str = "float32"
    min_run_time: float = 1.0
    quick: bool = False
    backends: list[str] | None = None
    gather: list[str] = field(default_factory=lambda: list(GATHER_SHAPES))


@dataclass
class KernelReport:
    results: list[Result]
    skipped: list[Skipped]
    summary: list[dict]


class _Runner:
    """Shared state of one kernel-suite run: device, dtype, seeded generator, memory probe, what was skipped."""

    def __init__(self, device: torch.device, config: KernelConfig):
        self.device = device
        self.config = config
        self.dtype = getattr(torch, config.dtype)
        self.memory = PeakMemory(device)
        self.gen = torch.Generator(device="cpu").manual_seed(0)
        self.skipped: list[Skipped] = []

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A leaf that requires grad, drawn on the CPU so every device sees the same numbers."""
        return torch.randn(*shape, generator=self.gen).to(self.device, dtype or self.dtype).requires_grad_()

    def measure(
        self, case: str, implementation: str, shape: str, forward: Callable[[], torch.Tensor], inputs: list
    ) -> list[Result]:
        """Both modes of ``forward``, each skipped (and recorded) if the backend raises ``BackendError`` for it.

        The dispatcher raises before computing anything, in the warm-up call, so a declined mode
        (NATTEN's backward on the CPU, Triton without a GPU) costs nothing and leaves no number.
        """
        modes = {FORWARD: no_grad_call(forward), FORWARD_BACKWARD: forward_backward_call(forward, inputs)}
        results = []
        for mode, fn in modes.items():
            try:
                results.append(measure(case, implementation, mode, shape, fn, self.memory, self.config.min_run_time))
            except kernels.BackendError as error:
                self.skipped.append(Skipped(case, implementation, mode, shape, str(error)))
        return results

    def skip(self, case: str, implementation: str, shape: str, reason: str) -> None:
        self.skipped += [Skipped(case, implementation, mode, shape, reason) for mode in (FORWARD, FORWARD_BACKWARD)]


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Swin's attention without shift or bias: SDPA inside non-overlapping ``window x window`` tiles.

    ``(B, H, W, heads, d)`` in and out, like ``na2d``. The map is zero-padded to a multiple of the
    window (Swin pads too), partitioned, attended per window and un-partitioned: the copies Swin
    makes around its attention are timed along with it.
    """
    batch, height, width, heads, head_dim = q.shape
    pad_h, pad_w = -height % window, -width % window
    rows, cols = (height + pad_h) // window, (width + pad_w) // window

    def partition(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        t = t.view(batch, rows, window, cols, window, heads, head_dim).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(batch * rows * cols, heads, window * window, head_dim)

    out = F.scaled_dot_product_attention(partition(q), partition(k), partition(v))
    out = out.view(batch, rows, cols, heads, window, window, head_dim).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(batch, rows * window, cols * window, heads, head_dim)
    return out[:, :height, :width]


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Global attention over all ``H * W`` tokens through SDPA, ``(B, H, W, heads, d)`` in and out."""
    batch, height, width, heads, head_dim = q.shape
    q, k, v = (t.reshape(batch, height * width, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, height, width, heads, head_dim)


def na2d_dilations(size: int, kernel_size: int, quick: bool) -> list[int]:
    """1 and the largest dilation whose dilated window still fits the map (DiNAT's choice), without duplicates."""
    largest = size // kernel_size
    return [1] if quick or largest <= 1 else [1, largest]


def kernel_backends(op: str, device: torch.device, requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """Backends to time for ``op`` and, for the rest, why not.

    Default: every available backend except Triton on the CPU, which can only run under Triton's
    interpreter (a correctness tool, orders of magnitude slow); naming it in ``requested`` times it anyway.
    """
    available = kernels.available_backends(op)
    left_out = {}
    if requested is None:
        chosen = [b for b in available if not (b == "triton" and device.type == "cpu")]
        if "triton" in available and device.type == "cpu":
            left_out["triton"] = "on the CPU Triton only runs interpreted (pass --backends triton to time it anyway)"
    else:
        chosen = [b for b in requested if b in available]
        left_out = {b: f"backend {b!r} is not available for {op}" for b in requested if b not in available}
    return chosen, left_out


def _na_shape(batch: int, size: int, heads: int, head_dim: int, kernel_size: int, dilation: int | None) -> str:
    text = f"B={batch} {size}x{size} heads={heads} d={head_dim} k={kernel_size}"
    return text if dilation is None else f"{text} dilation={dilation}"


def stage_cases(run: _Runner, size: int, heads: int) -> tuple[list[Result], dict]:
    """One NAT-Tiny stage shape: window and full attention (SDPA), then na2d per backend, dilation and bias."""
    cfg = run.config
    q, k, v = (run.randn(cfg.batch, size, size, heads, cfg.head_dim) for _ in range(3))
    rpb = run.randn(heads, 2 * cfg.kernel_size - 1, 2 * cfg.kernel_size - 1, dtype=torch.float32)  # fp32 parameter
    base_shape = _na_shape(cfg.batch, size, heads, cfg.head_dim, cfg.kernel_size, None)
    window = run.measure(
        "window attention", "sdpa", base_shape, partial(window_attention, q, k, v, cfg.kernel_size), [q, k, v]
    )
    full = run.measure("full attention", "sdpa", base_shape, partial(full_attention, q, k, v), [q, k, v])

    backends, left_out = kernel_backends("na2d", run.device, cfg.backends)
    na = []
    for dilation in na2d_dilations(size, cfg.kernel_size, cfg.quick):
        shape = _na_shape(cfg.batch, size, heads, cfg.head_dim, cfg.kernel_size, dilation)
        for backend, reason in left_out.items():
            run.skip("na2d", backend, shape, reason)
        for backend in backends:
            call = partial(kernels.na2d, q, k, v, cfg.kernel_size, dilation, backend=backend)
            na += run.measure("na2d", backend, shape, call, [q, k, v])
            if not cfg.quick:
                na += run.measure("na2d+rpb", backend, shape, partial(call, rpb=rpb), [q, k, v, rpb])
    plain = [r for r in na if r.case == "na2d" and r.shape.endswith(" dilation=1")]
    return window + full + na, stage_summary(size, heads, plain, window, full)


def gather_cases(run: _Runner, spec: GatherShape) -> tuple[list[Result], dict]:
    """``gather_attention`` per backend at one workload, with a random (repeating) index."""
    batch = run.config.gather_batch
    q = run.randn(batch, spec.heads, spec.queries, spec.head_dim)
    k, v = (run.randn(batch, spec.heads, spec.keys, spec.head_dim) for _ in range(2))
    index = torch.randint(0, spec.keys, (batch, spec.heads, spec.queries, spec.listed), generator=run.gen)
    index = index.to(run.device)
    shape = (
        f"{spec.name}: B={batch} heads={spec.heads} Nq={spec.queries} Nk={spec.keys} K={spec.listed} d={spec.head_dim}"
    )
    backends, left_out = kernel_backends("gather_attention", run.device, run.config.backends)
    for backend, reason in left_out.items():
        run.skip("gather_attention", backend, shape, reason)
    results = []
    for backend in backends:
        call = partial(kernels.gather_attention, q, k, v, index, backend=backend)
        results += run.measure("gather_attention", backend, shape, call, [q, k, v])
    return results, gather_summary(spec.name, results)


def _pick(results: list[Result], mode: str, implementation: str | None = None) -> Result | None:
    """The fastest result in ``mode`` (of ``implementation`` if given), or ``None``."""
    found = [r for r in results if r.mode == mode and implementation in (None, r.implementation)]
    return min(found, key=lambda r: r.median_ms, default=None)


def _median(result: Result | None) -> float | None:
    return None if result is None else result.median_ms


def _peak(result: Result | None) -> float | None:
    return None if result is None else result.peak_extra_mib


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def stage_summary(size: int, heads: int, na2d: list[Result], window: list[Result], full: list[Result]) -> dict:
    """The ratios the project tracks at one stage: na2d (fastest backend, dilation 1, no bias) / window attention.

    Window attention is the baseline NAT argues against (same k x k tokens per query, but windows
    fixed instead of centred); full attention is listed for scale. Ratios > 1 mean na2d is slower / larger.
    """
    na_fb, win_fb, full_fb = (_pick(rs, FORWARD_BACKWARD) for rs in (na2d, window, full))
    na_fwd, win_fwd = _pick(na2d, FORWARD), _pick(window, FORWARD)
    return {
        "kind": "na2d",
        "size": size,
        "heads": heads,
        "na2d_backend": na_fb.implementation if na_fb else None,
        "na2d_over_window_fwd_bwd_time": _ratio(_median(na_fb), _median(win_fb)),
        "na2d_over_window_fwd_bwd_peak": _ratio(_peak(na_fb), _peak(win_fb)),
        "na2d_fwd_backend": na_fwd.implementation if na_fwd else None,
        "na2d_over_window_fwd_time": _ratio(_median(na_fwd), _median(win_fwd)),
        "na2d_over_full_fwd_bwd_time": _ratio(_median(na_fb), _median(full_fb)),
    }


def gather_summary(name: str, results: list[Result]) -> dict:
    """Speed-up of the fastest backend over the torch reference, per mode (1.0 when torch is the fastest or alone)."""
    summary: dict = {"kind": "gather_attention", "shape": name}
    for mode, key in ((FORWARD, "fwd"), (FORWARD_BACKWARD, "fwd_bwd")):
        best, reference = _pick(results, mode), _pick(results, mode, "torch")
        summary[f"best_{key}_backend"] = best.implementation if best else None
        summary[f"torch_over_best_{key}_time"] = _ratio(_median(reference), _median(best))
    return summary


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_summary(summary: list[dict]) -> str:
    """One line per stage shape and per gather workload."""
    lines = []
    for s in summary:
        if s["kind"] == "na2d":
            lines.append(
                f"{s['size']}x{s['size']} heads={s['heads']}: na2d ({s['na2d_backend']}) / window attention "
                f"fwd+bwd time {_x(s['na2d_over_window_fwd_bwd_time'])}, "
                f"peak memory {_x(s['na2d_over_window_fwd_bwd_peak'])}; "
                f"forward time {_x(s['na2d_over_window_fwd_time'])} ({s['na2d_fwd_backend']}); "
                f"na2d / full attention fwd+bwd time {_x(s['na2d_over_full_fwd_bwd_time'])}"
            )
        else:
            lines.append(
                f"gather_attention {s['shape']}: torch / best fwd+bwd {_x(s['torch_over_best_fwd_bwd_time'])} "
                f"({s['best_fwd_bwd_backend']}), forward {_x(s['torch_over_best_fwd_time'])} ({s['best_fwd_backend']})"
            )
    return "\n".join(lines)


def format_skipped(skipped: list[Skipped]) -> str:
    """One line per (implementation, mode, reason): the same refusal repeats at every shape."""
    groups: dict[tuple[str, str, str], list[Skipped]] = {}
    for s in skipped:
        groups.setdefault((s.implementation, s.mode, s.reason), []).append(s)
    lines = []
    for (implementation, mode, reason), items in groups.items():
        cases = ", ".join(dict.fromkeys(s.case for s in items))
        lines.append(f"not measured: {implementation} {mode} ({cases}; {len(items)} shapes): {reason}")
    return "\n".join(lines)


def kernel_suite(
    device: torch.device, config: KernelConfig, progress: Callable[[str], None] | None = None
) -> KernelReport:
    """na2d (every backend), window and full attention at NAT-Tiny's stage shapes; gather_attention at its workloads."""
    run = _Runner(device, config)
    results, summary = [], []
    for size in config.sizes:
        if progress:
            progress(f"{size}x{size} ...")
        stage_results, stage = stage_cases(run, size, config.heads[size])
        results += stage_results
        summary.append(stage)
    for name in config.gather:
        if progress:
            progress(f"gather_attention {name} ...")
        gather_results, stage = gather_cases(run, GATHER_SHAPES[name])
        results += gather_results
        summary.append(stage)
    return KernelReport(results, run.skipped, summary)


class DenseAttention(nn.Module):
    """The baseline every mixer is compared with: global multi-head attention through SDPA."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, height, width, dim)
        return self.proj(out)


def block_settings(size: int) -> dict[str, tuple[str, dict]]:
    """Benchmark label -> (create_mixer name, keyword arguments) for a ``size x size`` map.

    The settings are the papers' (stage-3 style where a choice is needed); mixers whose parameters
    depend on the map (agent biases, Sparsifiner's predictor) are built for it.
    """
    levels = 1
    while levels < 4 and size % (2**levels) == 0 and size // 2**levels >= 7:
        levels += 1
    return {
        "neighborhood": ("neighborhood", dict(kernel_size=7)),
        "hilo": ("hilo", dict(window_size=2, alpha=0.9)),
        "quadtree": ("quadtree", dict(sr_ratio=levels, attn_type="B", topk=8)),
        "dual_spatial": ("dual", dict(attention="spatial", window_size=7)),
        "dual_channel": ("dual", dict(attention="channel")),
        "agent": ("agent", dict(agent_num=49, window_size=(size, size))),
        "focal": ("focal", dict(focal_level=3, focal_window=3)),
        "sparsifiner": ("sparsifiner", dict(num_tokens=size * size, keep_ratio=0.25)),
    }


def blocks_suite(
    device: torch.device,
    min_run_time: float,
    batch: int,
    cases: list[tuple[int, int, int]],
    mixers: list[str] | None = None,
) -> list[Result]:
    """Each mixer next to dense SDPA attention, for every ``(size, dim, num_heads)`` in ``cases``."""
    from attnzoo.blocks import create_mixer

    memory = PeakMemory(device)
    results = []
    for size, dim, num_heads in cases:
        shape = f"B={batch} {size}x{size} C={dim} heads={num_heads}"
        settings = block_settings(size)
        modules = {"dense (SDPA)": DenseAttention(dim, num_heads)}
        for label, (name, kwargs) in settings.items():
            if mixers is None or label in mixers or name in mixers:
                modules[label] = create_mixer(name, dim=dim, num_heads=num_heads, **kwargs)
        x = torch.randn(batch, size, size, dim, device=device, requires_grad=True)
        for label, module in modules.items():
            module.to(device).train()
            params = [p for p in module.parameters() if p.requires_grad]
            results += run_case(label, "torch", shape, partial(module, x), [x, *params], memory, min_run_time, True)
    return results


def write_report(
    suite: str,
    device: torch.device,
    results: list,
    out_dir: Path,
    settings: dict,
    extra: dict | None = None,
    argv: list[str] | None = None,
) -> Path:
    """Write results (dataclasses) with device, versions, command line and ``extra`` keys; return the file's path.

    ``argv``: the arguments after ``attnzoo`` (default ``sys.argv[1:]``; pass them when ``cli.main`` got its own).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "suite": suite,
        "device": device_description(device),
        "device_type": device.type,
        "command": shlex.join(["attnzoo", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in ("attnzoo", "torch", "triton", "natten", "timm")},
        "python": platform.python_version(),
        "settings": settings,
        "results": [asdict(r) for r in results],
        **(extra or {}),
    }
    path = out_dir / f"{suite}-{device.type}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def format_table(results: list[Result]) -> str:
    header = f"{'case':<18} {'implementation':<30} {'mode':<18} {'median ms':>10} {'peak MiB':>9}  shape"
    lines = [header, "-" * len(header)]
    for r in results:
        peak = "n/a" if r.peak_extra_mib is None else f"{r.peak_extra_mib:.1f}"
        lines.append(f"{r.case:<18} {r.implementation:<30} {r.mode:<18} {r.median_ms:>10.2f} {peak:>9}  {r.shape}")
    return "\n".join(lines)


PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelResult:
    model: str
    params_m: float
    input: str  # "B x 3 x S x S"
    precision: str  # "fp32", or the autocast dtype
    compiled: bool
    channels_last: bool
    median_ms: float  # one batch, forward only, torch.inference_mode
    images_per_s: float
    peak_extra_mib: float | None


def unknown_model_message(name: str, limit: int = 12) -> str | None:
    """Why ``name`` is not a timm model (attnzoo's included), with close names; ``None`` if it is one.

    Close names: timm's wildcard match ``*name*`` first (``nat`` -> ``nat_tiny``...), then spelling
    neighbours (``resnt18`` -> ``resnet18``).
    """
    import difflib

    import timm

    import attnzoo  # noqa: F401  (registers attnzoo's models in timm)

    if timm.is_model(name):
        return None
    close = timm.list_models(f"*{name}*")
    close += [m for m in difflib.get_close_matches(name, timm.list_models(), n=limit, cutoff=0.6) if m not in close]
    hint = f"; close matches: {', '.join(close[:limit])}" if close else "; see timm.list_models() for the names"
    return f"unknown model {name!r}{hint}"


def build_model(name: str, size: int) -> nn.Module:
    """``timm.create_model(name)`` in eval mode; a model whose input size is fixed when built is built for ``size``.

    ViT and Swin take ``img_size`` (their position tables and window grids depend on it); CNNs take
    any size and reject the argument with a ``TypeError``, so they are built without it.
    """
    import timm

    import attnzoo  # noqa: F401  (registers attnzoo's models in timm)

    cfg = timm.models.get_pretrained_cfg(name)
    model = None
    if cfg is None or cfg.input_size[-1] != size:
        try:
            model = timm.create_model(name, pretrained=False, img_size=size)
        except TypeError:
            model = None
    if model is None:
        model = timm.create_model(name, pretrained=False)
    return model.eval()


def model_case(
    name: str,
    device: torch.device,
    size: int,
    batch: int,
    precision: str,
    compile: bool,
    channels_last: bool,
    memory: PeakMemory,
    min_run_time: float,
) -> ModelResult:
    """Inference throughput of one model: median time of a ``batch``-image forward, under autocast unless fp32."""
    model = build_model(name, size).to(device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.to(device).contiguous(memory_format=memory_format)
    runner = torch.compile(model) if compile else model
    autocast = partial(torch.autocast, device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")

    def forward():
        with torch.inference_mode(), autocast():
            return runner(x)

    median_ms = time_ms(forward, min_run_time)
    return ModelResult(
        model=name,
        params_m=params,
        input=f"{batch}x3x{size}x{size}",
        precision=precision,
        compiled=compile,
        channels_last=channels_last,
        median_ms=median_ms,
        images_per_s=batch / (median_ms / 1e3),
        peak_extra_mib=memory.measure(forward),
    )


def models_suite(
    device: torch.device,
    names: list[str],
    size: int,
    batch: int,
    precision: str,
    compile: bool,
    channels_last: bool,
    min_run_time: float,
) -> list[ModelResult]:
    """Every named model in turn (freed before the next, so peaks do not add up)."""
    memory = PeakMemory(device)
    results = []
    for name in names:
        results.append(model_case(name, device, size, batch, precision, compile, channels_last, memory, min_run_time))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def format_model_table(results: list[ModelResult]) -> str:
    header = (
        f"{'model':<34} {'params M':>9} {'input':<14} {'precision':<14} {'median ms':>10} {'img/s':>9} {'peak MiB':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        peak = "n/a" if r.peak_extra_mib is None else f"{r.peak_extra_mib:.1f}"
        precision = r.precision + (" +compile" if r.compiled else "")
        lines.append(
            f"{r.model:<34} {r.params_m:>9.2f} {r.input:<14} {precision:<14} {r.median_ms:>10.2f} "
            f"{r.images_per_s:>9.1f} {peak:>9}"
        )
    return "\n".join(lines)
