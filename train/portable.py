"""What makes a recipe run on any machine: the paper's total batch kept by gradient accumulation for the world size
at hand, and a precision the device supports.

The recipes name ``accelerator``/``devices``/``strategy: auto`` and the paper's total batch as
``total_batch_size``; ``attnzoo-train`` (:class:`~.cli.AttnzooCLI`) derives ``trainer.accumulate_grad_batches`` from
it once the Trainer knows how many processes there are, and replaces a GPU-only precision before a CPU Trainer is
built.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["accumulation", "cpu_precision", "runs_on_cpu"]

# Lightning's names of float16 precision, which needs a GPU (autocast on the CPU supports bfloat16 only)
FLOAT16 = {"16-mixed", "16", "16-true", "half"}


def runs_on_cpu(accelerator: Any) -> bool:
    """Whether Lightning's ``accelerator`` setting ends on the CPU on this machine (``auto`` without CUDA or MPS)."""
    if accelerator is None or accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return not torch.cuda.is_available() and not (mps is not None and mps.is_available())
    return str(accelerator) == "cpu"


def cpu_precision(precision: Any) -> tuple[Any, str | None]:
    """The precision to use on the CPU for ``precision``, and a one-line note when it had to change."""
    if str(precision) in FLOAT16:
        return "32-true", f"trainer.precision {precision} needs a GPU; running in 32-true on the CPU"
    return precision, None


def accumulation(total: int, per_process: int, world_size: int, given: int | None) -> tuple[int, str]:
    """``accumulate_grad_batches`` that keeps ``total`` images per optimizer step with ``per_process`` images per
    batch on ``world_size`` processes, and the arithmetic as one line.

    ``given``: ``trainer.accumulate_grad_batches`` as configured (1 counts as unset); any other value must be the
    derived one. A total that the processes' batches do not divide is rounded up, and the line says so.
    """
    if total < 1:
        raise ValueError(f"total_batch_size must be >= 1, got {total}")
    per_step = per_process * world_size
    steps = max(1, math.ceil(total / per_step))
    if given not in (None, 1) and given != steps:
        raise ValueError(
            f"total_batch_size {total} needs trainer.accumulate_grad_batches {steps} with {per_process} per process x "
            f"{world_size} processes, not {given}; leave accumulate_grad_batches out or set total_batch_size null"
        )
    note = f"total_batch_size {total} = {per_process} per process x {world_size} processes x {steps} accumulated"
    if per_step * steps != total:
        note = (
            f"total_batch_size {total}: {per_process} per process x {world_size} processes x {steps} accumulated = "
            f"{per_step * steps} (the nearest total the batches reach)"
        )
    return steps, note
