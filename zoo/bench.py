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
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark as torch_benchmark

from attnzoo import kernels


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

    def no_grad_forward():
        with torch.no_grad():
            return forward()

    results = [
        Result(
            case,
            implementation,
            "forward (no grad)",
            time_ms(no_grad_forward, min_run_time),
            memory.measure(no_grad_forward),
            shape,
        )
    ]
    if with_backward:

        def forward_backward():
            out = forward()
            out.backward(torch.ones_like(out))
            for t in inputs:
                t.grad = None

        results.append(
            Result(
                case,
                implementation,
                "forward+backward",
                time_ms(forward_backward, min_run_time),
                memory.measure(forward_backward),
                shape,
            )
        )
    return results


def kernel_suite(
    device: torch.device, min_run_time: float, batch: int, size: int, heads: int, head_dim: int, kernel_size: int
) -> list[Result]:
    """na2d (every available backend, with and without rpb) next to natten.na2d, and gather_attention."""
    memory = PeakMemory(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device).requires_grad_()

    q, k, v = (randn(batch, size, size, heads, head_dim) for _ in range(3))
    rpb = randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
    shape = f"B={batch} {size}x{size} heads={heads} d={head_dim} k={kernel_size}"
    results = []
    for backend in kernels.available_backends("na2d"):
        na2d = partial(kernels.na2d, q, k, v, kernel_size, backend=backend)
        results += run_case("na2d", backend, shape, na2d, [q, k, v], memory, min_run_time, with_backward=True)
        if backend != "natten":
            results += run_case(
                "na2d+rpb", backend, shape, partial(na2d, rpb=rpb), [q, k, v, rpb], memory, min_run_time, True
            )
    try:
        import natten
    except ImportError:
        pass
    else:
        library = partial(natten.na2d, q.detach(), k.detach(), v.detach(), kernel_size)
        name = f"natten.na2d {natten.__version__} (library)"
        results += run_case("na2d", name, shape, library, [], memory, min_run_time, with_backward=False)

    tokens = size * size
    qg, kg, vg = (
        t.detach().transpose(1, 3).reshape(batch, heads, tokens, head_dim).requires_grad_() for t in (q, k, v)
    )
    index = torch.randint(0, tokens, (batch, heads, tokens, kernel_size**2), generator=gen).to(device)
    shape = f"B={batch} N={tokens} heads={heads} d={head_dim} K={kernel_size**2}"
    for backend in kernels.available_backends("gather_attention"):
        gather = partial(kernels.gather_attention, qg, kg, vg, index, backend=backend)
        results += run_case("gather_attention", backend, shape, gather, [qg, kg, vg], memory, min_run_time, True)
    return results


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


def write_report(suite: str, device: torch.device, results: list[Result], out_dir: Path, settings: dict) -> Path:
    """Write results with device, versions and command line; return the file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "suite": suite,
        "device": device_description(device),
        "device_type": device.type,
        "command": " ".join(["attnzoo"] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in ("attnzoo", "torch", "triton", "natten", "timm")},
        "python": platform.python_version(),
        "settings": settings,
        "results": [asdict(r) for r in results],
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
