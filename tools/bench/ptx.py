"""``attnzoo bench ptx``: what the GPU compiler makes of attnzoo's Triton kernels, without a GPU.

Triton compiles for any ``GPUTarget`` without a GPU, and its bundled ``ptxas`` assembles the PTX. Every
launch ``backend="auto"`` would make at NAT-Tiny's stage-1 shape (gather_attention: QuadTree's and
Sparsifiner's) is bound the way Triton's JIT binds it (same specialisation), compiled for sm_80 and sm_90,
and read off: tensor-core instructions (``mma.sync``, ``wgmma``), registers, spills, shared memory.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import asdict, dataclass, replace

import torch

from attnzoo.kernels import triton_gather, triton_na2d

from .record import package_version

ARCHS = (80, 90)
DTYPES = ("bfloat16", "float16")

NAT_TINY_STAGE1 = (64, 56, 56, 2, 32)
"""(B, H, W, heads, d) of NAT-Tiny's first stage at 224x224, batch 64: the shape the issue's targets name."""


@dataclass
class KernelReport:
    kernel: str
    arch: str
    dtype: str
    shape: str
    mma: int  # tensor-core instructions in the PTX (mma.sync + wgmma.mma_async)
    wgmma: int
    atomics: int  # atom.* / red.* instructions in the PTX (each may be unrolled over a thread's elements)
    registers: int
    spill_bytes: int  # spill stores + spill loads reported by ptxas
    shared_bytes: int
    num_warps: int
    num_stages: int


class PtxUnavailable(RuntimeError):
    """Triton (or its bundled ptxas) is missing, so nothing can be compiled here."""


def _launches() -> list[tuple[str, str, list]]:
    """(dtype, shape description, launches) for every case the report covers."""
    cases = []
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        batch, height, width, heads, head_dim = NAT_TINY_STAGE1
        shape = f"na2d B={batch} {height}x{width} heads={heads} d={head_dim} k=7 rpb"
        cases.append((dtype_name, shape, triton_na2d.ptx_launches(NAT_TINY_STAGE1, dtype, 7, 1)))
        for name, spec in triton_gather.PTX_SHAPES.items():
            shape = f"gather_attention {name}: B={spec[0]} heads={spec[1]} Nq={spec[2]} Nk={spec[3]} K={spec[4]}"
            launches = [
                replace(launch, name=f"{launch.name} {name}")
                for launch in triton_gather.ptx_launches(*spec, dtype=dtype)
            ]
            cases.append((dtype_name, shape, launches))
    return cases


def _jit_function(kernel):
    """A compilable ``JITFunction`` even when the module was imported under ``TRITON_INTERPRET=1``."""
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(kernel, InterpretedFunction):
        raise PtxUnavailable(
            "attnzoo.kernels was imported with TRITON_INTERPRET=1, so its kernels are interpreted and cannot be "
            "compiled; run `attnzoo bench ptx` in a process without TRITON_INTERPRET=1"
        )
    return kernel


def compile_launch(launch, arch: int):
    """Compile ``launch`` for ``sm_<arch>`` exactly as Triton's JIT would bind it; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = _jit_function(launch.kernel)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.meta, bound, specialization, options)
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options.__dict__)


def _ptxas(arch: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spilled bytes) that ``ptxas -v`` reports for the PTX, with the flags Triton passes it."""
    target = re.search(r"^\.target (\S+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        command = [_ptxas(arch), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={target}", source]
        result = subprocess.run(command + ["-o", os.path.join(folder, "kernel.cubin")], capture_output=True, text=True)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"ptxas failed for {target}:\n{log}")
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return registers, int(spills.group(1)) + int(spills.group(2))


def count_mma(ptx: str) -> tuple[int, int]:
    """(all tensor-core instructions, of which wgmma) in PTX text: ``mma.sync`` and ``wgmma.mma_async`` lines."""
    wgmma = len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.MULTILINE))
    mma = len(re.findall(r"^\s*mma\.sync", ptx, re.MULTILINE))
    return mma + wgmma, wgmma


def count_atomics(ptx: str) -> int:
    """Global atomic instructions (``atom.*``, ``red.*``) in PTX text."""
    return len(re.findall(r"^\s*(?:@%p\d+\s+)?(?:atom|red)\.", ptx, re.MULTILINE))


def ptx_suite(progress=None) -> list[KernelReport]:
    """Compile every case for every arch in :data:`ARCHS`; ``progress`` (a callable) hears one line per kernel."""
    if triton_na2d.triton is None:
        raise PtxUnavailable(triton_na2d._TRITON_MISSING)
    reports = []
    for dtype, shape, launches in _launches():
        for launch in launches:
            for arch in ARCHS:
                compiled = compile_launch(launch, arch)
                ptx = compiled.asm["ptx"]
                registers, spills = ptxas_usage(ptx, arch)
                mma, wgmma = count_mma(ptx)
                report = KernelReport(
                    kernel=launch.name,
                    arch=f"sm_{arch}",
                    dtype=dtype,
                    shape=shape,
                    mma=mma,
                    wgmma=wgmma,
                    atomics=count_atomics(ptx),
                    registers=registers,
                    spill_bytes=spills,
                    shared_bytes=int(compiled.metadata.shared),
                    num_warps=launch.meta.get("num_warps", 4),
                    num_stages=launch.meta.get("num_stages", 3),
                )
                reports.append(report)
                if progress is not None:
                    progress(format_row(report))
    return reports


HEADER = (
    f"{'kernel':<28} {'arch':<6} {'dtype':<9} {'mma':>5} {'wgmma':>5} {'atomics':>7} {'regs':>5} {'spill B':>7} "
    f"{'smem B':>7}"
)


def format_row(r: KernelReport) -> str:
    return (
        f"{r.kernel:<28} {r.arch:<6} {r.dtype:<9} {r.mma:>5} {r.wgmma:>5} {r.atomics:>7} {r.registers:>5} "
        f"{r.spill_bytes:>7} {r.shared_bytes:>7}"
    )


def problems(reports: list[KernelReport]) -> list[str]:
    """What the test and the command flag: an na2d kernel without tensor-core instructions, or any kernel spilling."""
    found = []
    for r in reports:
        where = f"{r.kernel} ({r.arch}, {r.dtype})"
        if r.kernel.startswith("na2d") and r.mma == 0:
            found.append(f"{where} has no mma/wgmma instruction: its GEMMs run on CUDA cores")
        if r.spill_bytes > 0:
            found.append(f"{where} spills {r.spill_bytes} bytes per thread")
    return found


def build_report(reports: list[KernelReport], argv: list[str]) -> dict:
    """The rows, the problems, the command and the compiler's versions, as one JSON-ready document."""
    return {
        "suite": "ptx",
        "command": shlex.join(["attnzoo", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: package_version(name) for name in ("attnzoo", "torch", "triton")},
        "ptxas": {f"sm_{arch}": _ptxas_version(arch) for arch in ARCHS},
        "settings": {"archs": [f"sm_{a}" for a in ARCHS], "dtypes": list(DTYPES), "na2d_shape": NAT_TINY_STAGE1},
        "problems": problems(reports),
        "results": [asdict(r) for r in reports],
    }


def _ptxas_version(arch: int) -> str:
    text = subprocess.run([_ptxas(arch), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"release (\S+), (V\S+)", text)
    return found.group(2) if found else text.strip().splitlines()[-1]
