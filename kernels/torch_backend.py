"""The exact pure-PyTorch backend: the reference every other backend is tested against.

``na2d`` attends query tiles to their key halos (batched GEMMs, autograd through plain ops);
``gather_attention`` runs in query chunks of bounded memory, choosing per call between gathering the listed
keys and taking them from a chunk's dense scores, with a FlashAttention-style backward that keeps no
gathered copy. Both run on any device and trace with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ._dispatch import register


def neighborhood_indices(
    length: int, kernel_size: int, dilation: int, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions and bias indices of every query along one axis, NATTEN's rule.

    Positions with the same residue modulo ``dilation`` form a sub-sequence; inside it a query's
    window of ``kernel_size`` is centred on it and shifted inward at the borders, so every query has
    exactly ``kernel_size`` keys. Returns ``keys`` and ``bias_index``, both ``(length, kernel_size)``:
    ``keys[i, t]`` is the t-th key of query i and ``bias_index[i, t] = (keys[i, t] - i) / dilation
    + kernel_size - 1``, the column of NAT's relative-position-bias table.
    """
    position = torch.arange(length, device=device)
    residue = position % dilation
    sub_index = position // dilation
    sub_length = (length - residue + dilation - 1) // dilation
    start = torch.minimum((sub_index - kernel_size // 2).clamp(min=0), sub_length - kernel_size)
    window = start[:, None] + torch.arange(kernel_size, device=device)
    keys = residue[:, None] + window * dilation
    bias_index = window - sub_index[:, None] + kernel_size - 1
    return keys, bias_index


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision logits are normalised in float32; float32/float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class _AxisTiles:
    """One axis of :func:`na2d_torch`'s tiling: query tiles, their key halos, and which halo keys each query sees.

    Positions of equal residue modulo the dilation form sub-sequences; each is cut into tiles of
    ``tile`` consecutive queries. A tile's neighbourhoods all lie inside one run of ``halo``
    consecutive sub-sequence keys (windows only shift inward, one step per query), so attention of
    a tile is one small dense matmul against its halo with the keys outside each query's window
    masked. Padded query slots (ragged last tiles) and padded halo slots (short sub-sequences)
    point at valid positions and are masked or dropped.
    """

    queries: torch.Tensor  # (tiles * tile,) position of each query slot
    keys: torch.Tensor  # (tiles * halo,) position of each halo slot
    in_window: torch.Tensor  # (tiles, tile, halo) bool: the halo key is in the query's window
    bias_index: torch.Tensor  # (tiles, tile, halo) rpb column (key - query) / dilation + k - 1
    slot_of_position: torch.Tensor  # (length,) query slot holding each position
    tile: int
    halo: int


def _axis_tiles(length: int, kernel_size: int, dilation: int, tile: int, device) -> _AxisTiles:
    halo = min(tile + kernel_size - 1, -(-length // dilation))  # the longest sub-sequence is ceil(L / d)
    queries, keys, in_window, bias_index, valid = [], [], [], [], []
    for residue in range(min(dilation, length)):  # a loop over dilation groups, not tokens
        sub_length = -(-(length - residue) // dilation)
        tiles = -(-sub_length // tile)
        sub_index = torch.arange(tiles * tile, device=device).view(tiles, tile)
        valid.append(sub_index < sub_length)
        sub_index = sub_index.clamp(max=sub_length - 1)
        start = (sub_index - kernel_size // 2).clamp(min=0).clamp(max=sub_length - kernel_size)
        halo_start = start[:, :1].clamp(max=max(sub_length - halo, 0))
        halo_index = halo_start + torch.arange(halo, device=device)  # (tiles, halo)
        offset = halo_index[:, None, :] - start[:, :, None]
        in_window.append((offset >= 0) & (offset < kernel_size) & (halo_index < sub_length)[:, None, :])
        bias_index.append(
            (halo_index[:, None, :] - sub_index[:, :, None] + kernel_size - 1).clamp(0, 2 * kernel_size - 2)
        )
        queries.append(residue + dilation * sub_index.flatten())
        keys.append(residue + dilation * halo_index.clamp(max=sub_length - 1).flatten())
    queries, valid = torch.cat(queries), torch.cat(valid).flatten()
    # every position sits in exactly one valid slot; padded slots all write to a spare last entry
    target = torch.where(valid, queries, length)
    slot_of_position = torch.zeros(length + 1, dtype=torch.long, device=device)
    slot_of_position = slot_of_position.scatter(0, target, torch.arange(queries.numel(), device=device))[:length]
    return _AxisTiles(
        queries, torch.cat(keys), torch.cat(in_window), torch.cat(bias_index), slot_of_position, tile, halo
    )


def na2d_torch(q, k, v, kernel_size: int, dilation: int, rpb, scale: float, attn_drop: float = 0.0) -> torch.Tensor:
    """Neighborhood attention on ``(B, H, W, heads, d)`` tensors, as masked dense attention of query tiles.

    Queries are taken ``kernel_size x kernel_size`` at a time (per dilation group) and attend to the
    ``(2k-1) x (2k-1)`` halo that holds all their windows, with the keys outside each window masked:
    batched GEMMs instead of per-query gathers, about (2k-1)^2 logits per query, never tokens^2.
    """
    batch, height, width, heads, head_dim = q.shape
    rows = _axis_tiles(height, kernel_size, dilation, kernel_size, q.device)
    cols = _axis_tiles(width, kernel_size, dilation, kernel_size, q.device)
    tiles_r, tiles_c = rows.in_window.shape[0], cols.in_window.shape[0]

    def tiled(x, row_index, col_index, size_r, size_c):
        """(B, H, W, h, d) -> (B, h, tiles_r, tiles_c, size_r * size_c, d) gathered at the given positions."""
        x = x[:, row_index][:, :, col_index].view(batch, tiles_r, size_r, tiles_c, size_c, heads, x.shape[-1])
        return x.permute(0, 5, 1, 3, 2, 4, 6).reshape(batch, heads, tiles_r, tiles_c, size_r * size_c, x.shape[-1])

    q_tiles = tiled(q, rows.queries, cols.queries, rows.tile, cols.tile)
    k_halo = tiled(k, rows.keys, cols.keys, rows.halo, cols.halo)
    v_halo = tiled(v, rows.keys, cols.keys, rows.halo, cols.halo)

    logits = (q_tiles * scale) @ k_halo.transpose(-1, -2)  # (B, h, tiles_r, tiles_c, T*T, S*S)
    logits = logits.to(_softmax_dtype(q.dtype))
    shape = (tiles_r, tiles_c, rows.tile * cols.tile, rows.halo * cols.halo)
    in_window = rows.in_window[:, None, :, None, :, None] & cols.in_window[None, :, None, :, None, :]
    if rpb is not None:
        bias = rpb[:, rows.bias_index[:, None, :, None, :, None], cols.bias_index[None, :, None, :, None, :]]
        logits = logits + bias.reshape(heads, *shape).to(logits.dtype)
    logits = logits.masked_fill(~in_window.reshape(shape), float("-inf"))
    attn = logits.softmax(dim=-1).to(v.dtype)
    if attn_drop > 0.0:
        attn = torch.nn.functional.dropout(attn, attn_drop)
    out = attn @ v_halo  # (B, h, tiles_r, tiles_c, T*T, d)
    head_dim_v = v.shape[-1]
    out = out.view(batch, heads, tiles_r, tiles_c, rows.tile, cols.tile, head_dim_v).permute(0, 2, 4, 3, 5, 1, 6)
    out = out.reshape(batch, tiles_r * rows.tile, tiles_c * cols.tile, heads, head_dim_v)
    return out[:, rows.slot_of_position][:, :, cols.slot_of_position]


DENSE_KEYS_PER_LISTED = 32
"""Cost rule of :func:`gather_attention_torch`: dense scores when ``Nk * group <= DENSE_KEYS_PER_LISTED * K``.

The gather path copies ``K * (d + dv)`` elements per index row (shared by its ``group`` queries) into
memory-bound small matrix products; the dense path spends ``Nk * (d + dv)`` multiply-adds per query in GEMMs,
which on the CPU (fp32, 1-2 threads, forward and backward at head dim 64) cost about 1/32 to 1/47 of a gathered
row element: for one query per row dense is 4x faster at Nk = 6 K, 1.3x at 24.5 K and 2x slower at 98 K; with
rows shared by 4 queries gather is already 1.4-1.7x faster at Nk = 24.5 K.
"""

CHUNK_ELEMENTS = 1 << 21
"""Largest per-chunk temporary (elements) of :func:`gather_attention_torch`: 8 MB in float32."""


def _static(size) -> int | None:
    """A size as a Python int, or ``None`` while it is symbolic (dynamic compile/export): never guard on it."""
    return size if isinstance(size, int) else None


def _plan(q, k, v, index, path: str | None, group: int = 1) -> tuple[str, int]:
    """``(path, index rows per chunk)`` for one call: the cost rule unless ``path`` forces one."""
    batch, heads, rows, listed = index.shape
    n_keys, head_dim, head_dim_v = k.shape[2], q.shape[-1], v.shape[-1]
    if path is None:
        path = "dense" if n_keys * group <= DENSE_KEYS_PER_LISTED * listed else "gather"
    per_row = group * n_keys if path == "dense" else listed * max(head_dim, head_dim_v, group)
    sizes = [_static(s) for s in (batch, heads, rows, per_row)]
    if None in sizes:  # symbolic shapes: one chunk, so that the traced graph holds no shape-dependent loop
        return path, rows
    batch, heads, rows, per_row = sizes
    return path, max(1, min(rows, CHUNK_ELEMENTS // max(1, batch * heads * per_row)))


def _flat_rows(index_c, n_keys: int):
    """Positions of the listed rows in ``t.reshape(B * h * Nk, dim)``: ``(B * h * c * K,)``."""
    batch, heads = index_c.shape[:2]
    offset = torch.arange(batch * heads, device=index_c.device).view(batch, heads, 1, 1) * n_keys
    return (index_c + offset).flatten()


def _rows(t, flat, index_c):
    """``t``'s listed rows as ``(B, h, c, K, dim)``: the gather path's per-chunk copy, never saved.

    ``index_select`` on the flattened rows, not ``gather`` with an expanded index: a row copy, several times faster.
    """
    return t.reshape(-1, t.shape[-1]).index_select(0, flat).view(*index_c.shape, t.shape[-1])


def _per_query(index_c, group: int):
    """``(B, h, c, K)`` rows -> ``(B, h, c * group, K)``, one row per query (the dense path indexes per query)."""
    if group == 1:
        return index_c
    batch, heads, rows, listed = index_c.shape
    return index_c.unsqueeze(3).expand(-1, -1, -1, group, -1).reshape(batch, heads, rows * group, listed)


def _spread(weights, index_q, n_keys: int):
    """``(B, h, c, K)`` slot weights -> ``(B, h, c, Nk)`` per key; repeated slots of one key add up."""
    dense = weights.new_zeros(*weights.shape[:-1], n_keys)
    return dense.scatter_add_(-1, index_q, weights)


def _grouped(t, group: int):
    """``(B, h, c * group, X)`` -> ``(B, h, c, group, X)``."""
    return t.view(*t.shape[:2], t.shape[2] // group, group, t.shape[-1])


def _logits(q_c, k, index_c, scale: float, path: str, group: int, k_rows=None):
    """Scaled logits in the softmax dtype: dense path ``(B, h, c * G, K)``, gather path ``(B, h, c, G, K)``."""
    if path == "dense":
        logits = (q_c @ k.transpose(-1, -2)).gather(-1, _per_query(index_c, group))  # scores -> the listed ones
    else:
        logits = _grouped(q_c, group) @ k_rows.transpose(-1, -2)  # the group's queries share the gathered rows
    return logits.to(_softmax_dtype(q_c.dtype)) * scale


def _forward_chunks(q, k, v, index, scale: float, path: str, chunk: int, group: int = 1):
    """Output ``(B, h, Nq, dv)`` and row logsumexp ``(B, h, Nq)`` (softmax dtype), chunk by chunk."""
    n_keys, rows = k.shape[2], index.shape[2]
    outs, lses = [], []
    for start in range(0, rows, chunk):
        index_c, q_c = index[:, :, start : start + chunk], q[:, :, start * group : (start + chunk) * group]
        k_rows = v_rows = None
        if path == "gather":
            flat = _flat_rows(index_c, n_keys)
            k_rows, v_rows = _rows(k, flat, index_c), _rows(v, flat, index_c)
        logits = _logits(q_c, k, index_c, scale, path, group, k_rows)
        lse = logits.logsumexp(dim=-1)
        p = (logits - lse.unsqueeze(-1)).exp().to(v.dtype)
        if path == "dense":
            outs.append(_spread(p, _per_query(index_c, group), n_keys) @ v)
        else:
            outs.append((p @ v_rows).flatten(2, 3))
        lses.append(lse.flatten(2))
    if not outs:  # no queries
        shape = (*q.shape[:3],)
        return q.new_empty(*shape, v.shape[-1], dtype=v.dtype), q.new_empty(shape, dtype=_softmax_dtype(q.dtype))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _backward_chunks(q, k, v, index, out, lse, grad_out, scale: float, path: str, chunk: int, needs, group: int = 1):
    """``(dq, dk, dv)`` recomputed per chunk from the saved tensors (FlashAttention's backward).

    ``dS = P * (dP - delta)`` with ``delta = rowsum(dO * O)``; dk and dv accumulate in the softmax dtype.
    """
    n_keys, rows = k.shape[2], index.shape[2]
    acc = _softmax_dtype(q.dtype)
    grad_q = torch.zeros_like(q, memory_format=torch.contiguous_format) if needs[0] else None
    grad_k = torch.zeros(k.shape, dtype=acc, device=k.device) if needs[1] else None
    grad_v = torch.zeros(v.shape, dtype=acc, device=v.device) if needs[2] else None
    for start in range(0, rows, chunk):
        queries = slice(start * group, (start + chunk) * group)
        index_c, q_c, do_c = index[:, :, start : start + chunk], q[:, :, queries], grad_out[:, :, queries]
        delta = (do_c.to(acc) * out[:, :, queries].to(acc)).sum(-1, keepdim=True)  # (B, h, c * G, 1)
        if path == "dense":
            index_q = _per_query(index_c, group)
            p = (_logits(q_c, k, index_c, scale, path, group) - lse[:, :, queries].unsqueeze(-1)).exp()
            grad_p = (do_c @ v.transpose(-1, -2)).gather(-1, index_q).to(acc)
            grad_s = (p * (grad_p - delta) * scale).to(q.dtype)  # d loss / d (q . k), scale folded in
            weights, grad_logits = _spread(p.to(v.dtype), index_q, n_keys), _spread(grad_s, index_q, n_keys)
            if grad_q is not None:
                grad_q[:, :, queries] = grad_logits @ k
            if grad_k is not None:
                grad_k += grad_logits.transpose(-1, -2) @ q_c
            if grad_v is not None:
                grad_v += weights.transpose(-1, -2) @ do_c
            continue
        flat = _flat_rows(index_c, n_keys)
        k_rows, v_rows = _rows(k, flat, index_c), _rows(v, flat, index_c)  # (B, h, c, K, d)
        lse_c = _grouped(lse[:, :, queries].unsqueeze(-1), group)  # (B, h, c, G, 1)
        p = (_logits(q_c, k, index_c, scale, path, group, k_rows) - lse_c).exp()  # (B, h, c, G, K)
        do_g = _grouped(do_c, group)
        grad_p = (do_g @ v_rows.transpose(-1, -2)).to(acc)
        grad_s = (p * (grad_p - _grouped(delta, group)) * scale).to(q.dtype)
        if grad_q is not None:
            grad_q[:, :, queries] = (grad_s @ k_rows).flatten(2, 3)
        # a key listed by many rows (or twice by one) collects every contribution
        if grad_k is not None:
            contrib = grad_s.transpose(-1, -2) @ _grouped(q_c, group)  # (B, h, c, K, d)
            grad_k.view(-1, k.shape[-1]).index_add_(0, flat, contrib.reshape(flat.shape[0], -1).to(acc))
        if grad_v is not None:
            contrib = p.to(v.dtype).transpose(-1, -2) @ do_g
            grad_v.view(-1, v.shape[-1]).index_add_(0, flat, contrib.reshape(flat.shape[0], -1).to(acc))
    return (
        grad_q,
        None if grad_k is None else grad_k.to(k.dtype),
        None if grad_v is None else grad_v.to(v.dtype),
    )


def _narrow_index(index, n_keys) -> torch.Tensor:
    """The index in the narrowest integer type that holds ``[0, Nk)``, for backward: int64 is 4x the bytes of
    int16, and at Sparsifiner's K = N/4 the int64 index alone would outweigh every other tensor kept."""
    n_keys = _static(n_keys)
    if n_keys is None:
        return index
    if n_keys <= torch.iinfo(torch.int16).max + 1:
        return index.to(torch.int16)
    return index.to(torch.int32) if n_keys <= torch.iinfo(torch.int32).max + 1 else index


class _GatherAttentionTorch(torch.autograd.Function):
    """Saves q, k, v, index (narrowed), output and logsumexp; no gathered rows, probabilities or scores."""

    @staticmethod
    def forward(ctx, q, k, v, index, scale, path, chunk, group):
        out, lse = _forward_chunks(q, k, v, index, scale, path, chunk, group)
        ctx.save_for_backward(q, k, v, _narrow_index(index, k.shape[2]), out, lse)
        ctx.scale, ctx.path, ctx.chunk, ctx.group = scale, path, chunk, group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, index, out, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        grads = _backward_chunks(
            q, k, v, index.long(), out, lse, grad_out, ctx.scale, ctx.path, ctx.chunk, needs, ctx.group
        )
        return (*grads, None, None, None, None, None)


def gather_attention_torch(q, k, v, index, scale: float, path: str | None = None, group: int = 1) -> torch.Tensor:
    """Attention of each query over the keys ``index`` lists, in chunks of bounded memory.

    Per call the cost rule (:data:`DENSE_KEYS_PER_LISTED`) picks ``"dense"`` (a chunk's scores ``q k^T`` as a
    GEMM, the listed entries taken with ``gather``, the weights scattered back over the keys and multiplied
    with ``v``) or ``"gather"`` (each index row's k/v rows copied once for its ``group`` queries); ``path`` forces
    one. Repeated indices are separate slots, each with its own softmax weight. Backward recomputes from q, k, v,
    index, output and logsumexp, so nothing of size ``Nq * K * d`` or ``Nq * Nk`` outlives a chunk.
    """
    path, chunk = _plan(q, k, v, index, path, group)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
        return _forward_chunks(q, k, v, index, scale, path, chunk, group)[0]
    return _GatherAttentionTorch.apply(q, k, v, index, scale, path, chunk, group)


gather_attention_torch.groups_queries = True  # ops.gather_attention hands it ``group``; other backends get rows


def na2d_attention_weights(
    q, k, kernel_size: int, dilation: int, rpb, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The softmax weights of :func:`na2d_torch` and the keys they belong to, for pictures and inspection.

    ``q``, ``k``: ``(B, H, W, heads, d)``. Returns ``attn`` ``(B, heads, H, W, k*k)`` in float32 (float64 for
    float64 input) and ``keys`` ``(H, W, k*k)``, the raster position of each weight's key (row-major over the
    window). Gathers every query's keys, so memory is O(H * W * k^2 * C): meant for inspection, not training.
    """
    height, width = q.shape[1:3]
    key_rows, bias_rows = neighborhood_indices(height, kernel_size, dilation, q.device)
    key_cols, bias_cols = neighborhood_indices(width, kernel_size, dilation, q.device)
    rows, cols = key_rows[:, None, :, None], key_cols[None, :, None, :]  # (H, 1, k, 1), (1, W, 1, k)
    k_window = k[:, rows, cols]  # (B, H, W, k, k, heads, d)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = torch.einsum("bijhd,bijsthd->bhijst", q.to(dtype), k_window.to(dtype)) * scale
    if rpb is not None:
        logits = logits + rpb[:, bias_rows[:, None, :, None], bias_cols[None, :, None, :]].to(logits.dtype)
    attn = logits.flatten(-2).softmax(dim=-1)
    keys = (rows * width + cols).flatten(-2)  # (H, W, k*k)
    return attn, keys


register("na2d", "torch", na2d_torch)
register("gather_attention", "torch", gather_attention_torch)
