"""Recording what each mixer computed: attention weights, chosen keys, modulators and gates.

The seven mechanisms differ in *where* a query looks, and the papers explain themselves with pictures of it;
timm's ``AttentionExtract`` cannot see any of it (our attention lives inside fused kernels, gathers and SDPA
calls, not in a ``softmax`` node). :func:`record_attention` attaches a recorder to every mixer of a model::

    with record_attention(model) as records:
        model(images)
    records["stages.0.blocks.0.attn"][-1].query_maps(row, col)

Off (the default), a mixer pays one ``None`` check per call. On, a mixer recomputes what it needs on the exact
PyTorch path *beside* its forward (the fused kernels are never asked for weights), so the recorded numbers exist
whatever backend ran, and the forward's result is the same tensor it would have been. Every record holds enough
to recompute its mixer's output; the tests do so. Records hold detached tensors on the mixer's device; the
weights are those of the softmax before attention dropout (use eval mode for pictures).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class QueryMap:
    """One picture's worth of a record for one query: ``values`` ``(h, w)`` over the grid named by ``over``.

    ``over`` is ``"image"`` when the grid covers the mixer's input map (any resolution: a pooled or coarse grid
    is stretched over the same area), or ``"matrix"`` when the values are not spatial (DaViT's channel
    attention). ``marker`` is the query's cell on that grid, or ``None``.
    """

    title: str
    values: torch.Tensor
    over: str = "image"
    marker: tuple[int, int] | None = None


class AttentionRecord:
    """What one call of one mixer computed (subclasses per mechanism; see each mixer's file).

    ``map_size`` is the ``(H, W)`` query grid of the mixer's input, before any padding the mixer adds itself.
    """

    kind: str = ""
    map_size: tuple[int, int]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """What the query at ``(row, col)`` of ``map_size`` used, averaged over heads, as named 2-D maps."""
        raise NotImplementedError

    def _check_query(self, row: int, col: int, batch: int) -> None:
        height, width = self.map_size
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"query ({row}, {col}) lies outside this mixer's {height}x{width} map")
        if not 0 <= batch < self.batch_size:
            raise ValueError(f"batch index {batch} out of range for a batch of {self.batch_size}")

    @property
    def batch_size(self) -> int:
        raise NotImplementedError


class RecordsAttention:
    """Mixin of every mixer: ``_recorder`` is ``None`` unless :func:`record_attention` is active."""

    _recorder = None

    @property
    def recording(self) -> bool:
        return self._recorder is not None

    def _record(self, record: AttentionRecord) -> None:
        self._recorder(record)


class AttentionRecords(dict):
    """Module name -> the records of each call, in call order (one per forward of the model, usually)."""

    def _add(self, name: str, record: AttentionRecord) -> None:
        self.setdefault(name, []).append(record)

    def last(self) -> dict[str, AttentionRecord]:
        """Each module's latest record."""
        return {name: calls[-1] for name, calls in self.items()}


def recordable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, mixer)`` for every attnzoo mixer inside ``model``, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, RecordsAttention)]


@contextmanager
def record_attention(model: nn.Module) -> Iterator[AttentionRecords]:
    """Record every attnzoo mixer of ``model`` while the block runs; detach the recorders after, even on error.

    Raises ``ValueError`` if ``model`` holds no attnzoo mixer (timm's own DaViT and FocalNet: graft ours first,
    ``attnzoo.graft(model, "dual")`` / ``graft(model, "focal")``, which carries their weights over exactly).
    """
    mixers = recordable_modules(model)
    if not mixers:
        raise ValueError(
            f"{type(model).__name__} holds no attnzoo mixer to record; for timm's DaViT or FocalNet, graft ours "
            "first (attnzoo.graft(model, 'dual') or graft(model, 'focal'))"
        )
    busy = [name for name, module in mixers if module._recorder is not None]
    if busy:
        raise RuntimeError(f"{busy[0]!r} is already being recorded (record_attention blocks do not nest)")
    records = AttentionRecords()
    modules = dict(model.named_modules())
    undo = []
    for name, module in mixers:
        callback = partial(records._add, name)
        # An adapter between a host's calling convention and the mixer (attnzoo.graft's window adapter) may
        # restate the mixer's records in the host's geometry: ``adapt_recorder(callback, ancestors)`` returns
        # the callback to use and a function that undoes whatever it attached.
        ancestors = [modules[prefix] for prefix in _prefixes(name)]
        for index, ancestor in enumerate(ancestors):
            if hasattr(ancestor, "adapt_recorder"):
                callback, release = ancestor.adapt_recorder(callback, ancestors[index + 1 :])
                undo.append(release)
        module._recorder = callback
    try:
        yield records
    finally:
        for _, module in mixers:
            del module._recorder  # back to the class's None
        for release in undo:
            release()


def _prefixes(name: str) -> list[str]:
    """Names of the modules that contain ``name``, nearest first (``"a.b.c"`` -> ``["a.b", "a", ""]``)."""
    parts = name.split(".") if name else []
    return [".".join(parts[:end]) for end in range(len(parts) - 1, -1, -1)]


@dataclass
class WindowedRecord(AttentionRecord):
    """A mixer's record from inside window attention, restated over the host's whole map.

    The host (timm's Swin or DaViT block) cyclically shifts its ``(H, W)`` map by ``-shift`` (Swin's shifted
    blocks), pads it to whole windows and runs the mixer on each window as a batch entry, in raster order per
    image. ``window`` holds those ``B * windows`` calls; a query's maps are the maps of its window, placed back
    where that window's tokens came from (shifted windows wrap around the map's edges, as their tokens do).
    """

    window: AttentionRecord
    map_size: tuple[int, int]
    window_size: tuple[int, int]
    shift: tuple[int, int] = (0, 0)
    kind: str = "windowed"

    @property
    def _grid(self) -> tuple[int, int]:
        return tuple(-(-size // win) for size, win in zip(self.map_size, self.window_size, strict=True))

    @property
    def batch_size(self) -> int:
        rows, cols = self._grid
        return self.window.batch_size // (rows * cols)

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        self._check_query(row, col, batch)
        (height, width), (win_h, win_w), (rows, cols) = self.map_size, self.window_size, self._grid
        shifted_row, shifted_col = (row - self.shift[0]) % height, (col - self.shift[1]) % width
        index = batch * rows * cols + (shifted_row // win_h) * cols + shifted_col // win_w
        top, left = shifted_row // win_h * win_h, shifted_col // win_w * win_w
        maps = []
        for inner in self.window.query_maps(shifted_row - top, shifted_col - left, batch=index):
            if inner.over != "image":
                maps.append(inner)
                continue
            values = inner.values
            if tuple(values.shape) != (win_h, win_w):  # a coarser grid over the window: spread each cell's weight
                spread = F.interpolate(values[None, None], size=(win_h, win_w), mode="nearest")[0, 0]
                values = spread * (values.sum() / spread.sum().clamp_min(torch.finfo(spread.dtype).tiny))
            canvas = values.new_zeros(rows * win_h, cols * win_w)
            canvas[top : top + win_h, left : left + win_w] = values
            canvas = torch.roll(canvas[:height, :width], shifts=self.shift, dims=(0, 1))
            maps.append(QueryMap(inner.title, canvas, marker=(row, col)))
        return maps


def scatter_to_grid(weights: torch.Tensor, keys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Weights ``(..., K)`` of keys at raster positions ``keys`` ``(..., K)`` as a dense ``(..., h, w)`` grid.

    Repeated keys add up, so the grid's sum equals the weights' sum.
    """
    height, width = size
    grid = weights.new_zeros(*weights.shape[:-1], height * width)
    grid = grid.scatter_add(-1, keys.expand(weights.shape), weights)
    return grid.unflatten(-1, (height, width))


def query_grid(
    attn: torch.Tensor,
    keys: torch.Tensor,
    query: tuple[int, int, int],
    padded_size: tuple[int, int],
    map_size: tuple[int, int],
) -> torch.Tensor:
    """The head-averaged weights of one query over the keys listed for it, as a ``map_size`` grid.

    ``attn`` ``(B, heads, H', W', K)`` over raster positions ``keys`` ``(H', W', K)`` of the ``padded_size``
    ``(H', W')`` map the mixer attends over (the layout of NA's, HiLo's Hi-Fi and DaViT's window records);
    ``query`` is ``(batch, row, col)``. Keys in the mixer's zero padding stay off the picture.
    """
    batch, row, col = query
    grid = scatter_to_grid(attn[batch, :, row, col].mean(0), keys[row, col], padded_size)
    return grid[: map_size[0], : map_size[1]]


def window_keys(height: int, width: int, window: int, device=None) -> torch.Tensor:
    """``(H, W, window**2)``: raster positions of the keys of each query's non-overlapping window (row-major).

    ``H`` and ``W`` are multiples of ``window`` (the padded map window attention runs on).
    """
    rows = torch.arange(height, device=device) // window * window
    cols = torch.arange(width, device=device) // window * window
    offsets = torch.arange(window, device=device)
    key_rows = rows[:, None, None, None] + offsets[None, None, :, None]  # (H, 1, s, 1)
    key_cols = cols[None, :, None, None] + offsets[None, None, None, :]  # (1, W, 1, s)
    return (key_rows * width + key_cols).flatten(-2)


def attend_listed(attn: torch.Tensor, keys: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Recompute an output from a record: ``attn`` ``(B, heads, H, W, K)`` over raster ``keys`` ``(H, W, K)`` of
    ``v`` ``(B, H', W', heads, d)`` -> ``(B, H, W, heads, d)``. For tests and notebooks, not for speed."""
    batch, height, width, heads, dim = v.shape
    gathered = v.reshape(batch, height * width, heads, dim)[:, keys]  # (B, H, W, K, heads, d)
    return torch.einsum("bhijk,bijkhd->bijhd", attn.to(v.dtype), gathered)


__all__ = [
    "AttentionRecord",
    "AttentionRecords",
    "attend_listed",
    "query_grid",
    "QueryMap",
    "RecordsAttention",
    "WindowedRecord",
    "record_attention",
    "recordable_modules",
    "scatter_to_grid",
    "window_keys",
]
