"""``attnzoo bench kernels``: na2d per backend next to window and full attention (SDPA) at NAT-Tiny's stage
shapes, and gather_attention at QuadTree's and Sparsifiner's workloads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from attnzoo import kernels

from .record import FORWARD, FORWARD_BACKWARD, PeakMemory, Result, forward_backward_call, measure, no_grad_call

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
