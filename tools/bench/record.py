"""What every benchmark suite shares: timing, peak memory, the result rows and the JSON report."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch

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


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def available_threads() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


class PeakMemory:
    """Peak memory of one call above what was live before it.

    CUDA: the caching allocator's peak counter. CPU: the resident-set high-water mark, reset through
    ``/proc/self/clear_refs``; glibc maps every block above 64 KiB separately so that freed tensors leave
    the resident set and earlier calls do not hide later ones. ``None`` where neither works (non-Linux CPU).
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
    """Median wall time of ``fn`` in milliseconds (CUDA-synchronised by torch.utils.benchmark).

    Timed with ``torch.get_num_threads()`` threads, the number the report records (the ``attnzoo bench``
    commands set it from ``--threads``): torch.utils.benchmark's ``Timer`` would otherwise run on one.
    torch.utils.benchmark is imported here, not with this module: it imports torch.utils.cpp_extension, whose
    import logs a CUDA_HOME warning on machines without CUDA, and only timing needs it.
    """
    from torch.utils import benchmark as torch_benchmark

    fn()  # warm-up: lazy initialisation, autotuning, caches
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def no_grad_call(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
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


def build_report(
    suite: str,
    device: torch.device,
    results: list,
    settings: dict,
    extra: dict | None = None,
    argv: list[str] | None = None,
) -> dict:
    """Results (dataclasses) with device, versions, command line and ``extra`` keys: the benchmarks/*.json layout.

    ``argv``: the arguments after ``attnzoo`` (default ``sys.argv[1:]``).
    """
    return {
        "suite": suite,
        "device": device_description(device),
        "device_type": device.type,
        "command": shlex.join(["attnzoo", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: package_version(name) for name in ("attnzoo", "torch", "triton", "natten", "timm")},
        "python": platform.python_version(),
        "settings": settings,
        "results": [asdict(r) for r in results],
        **(extra or {}),
    }


def write_json(path: Path, data: dict, force: bool = False) -> Path:
    """Write ``data`` to ``path`` (folders created); an existing file is a ``FileExistsError`` unless ``force``.

    A report is a measurement that took minutes and may be committed, so replacing one must be asked for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w" if force else "x") as handle:  # "x": the check and the creation are one step
        handle.write(json.dumps(data, indent=2) + "\n")
    return path


def format_table(results: list[Result]) -> str:
    header = f"{'case':<18} {'implementation':<30} {'mode':<18} {'median ms':>10} {'peak MiB':>9}  shape"
    lines = [header, "-" * len(header)]
    for r in results:
        peak = "n/a" if r.peak_extra_mib is None else f"{r.peak_extra_mib:.1f}"
        lines.append(f"{r.case:<18} {r.implementation:<30} {r.mode:<18} {r.median_ms:>10.2f} {peak:>9}  {r.shape}")
    return "\n".join(lines)
