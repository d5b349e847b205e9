"""``attnzoo bench models``: inference throughput, peak memory and parameters of timm models, attnzoo's included."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import timm
import torch
from torch import nn

import attnzoo  # noqa: F401  (registers attnzoo's models in timm)

from .record import PeakMemory, time_ms

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


def build_model(name: str, size: int) -> nn.Module:
    """``timm.create_model(name)`` in eval mode; a model whose input size is fixed when built is built for ``size``.

    ViT and Swin take ``img_size`` (their position tables and window grids depend on it); CNNs take
    any size and reject the argument with a ``TypeError``, so they are built without it.
    """
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
    # fp32 runs outside autocast, which some device types (meta, where the tests run every model) do not know
    autocast = nullcontext if precision == "fp32" else partial(torch.autocast, device.type, dtype=PRECISIONS[precision])

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
