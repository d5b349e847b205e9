"""Checkpoint files written so that a kill at any moment leaves either the old file or the new one, never half of one.

Lightning's writer keeps its temporary file in the system's temp folder, so a kill orphans it and the final
move across file systems is a copy, not atomic. Here the bytes go to a temporary file beside the target,
are fsynced, and ``os.replace`` swaps it in; killed writers' temporaries are removed when the next ``fit``
claims the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMP_PREFIX = ".partial-"


def temp_path(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder``; returns them (call it only while no one writes)."""
    found = sorted(folder.glob(f"{TEMP_PREFIX}*")) if folder.is_dir() else []
    for path in found:
        path.unlink()
    return found


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs keep Lightning's writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = temp_path(path)
        self._write(checkpoint, temp)
        self._commit(temp, path)

    @staticmethod
    def _write(checkpoint: dict[str, Any], temp: Path) -> None:
        with open(temp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _commit(temp: Path, path: Path) -> None:
        os.replace(temp, path)
