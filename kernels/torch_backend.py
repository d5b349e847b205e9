"""The exact pure-PyTorch backend: the reference every other backend is tested against.

Both ops gather each query's keys explicitly, so memory is O(queries x keys-per-query x head_dim)
and never O(queries x all keys). They run on any device, support autograd through plain indexing,
and trace with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def gather_attention_torch(q, k, v, index, scale: float) -> torch.Tensor:
    """Attention of each query over the keys ``index`` lists, by gathering them."""
    batch, heads, n_queries, keys_per_query = index.shape
    flat = index.reshape(batch, heads, n_queries * keys_per_query, 1)
    k_sel = k.gather(2, flat.expand(-1, -1, -1, k.shape[-1])).view(batch, heads, n_queries, keys_per_query, k.shape[-1])
    v_sel = v.gather(2, flat.expand(-1, -1, -1, v.shape[-1])).view(batch, heads, n_queries, keys_per_query, v.shape[-1])
    logits = ((q.unsqueeze(-2) * scale) @ k_sel.transpose(-1, -2)).squeeze(-2)  # (B, h, Nq, K)
    attn = logits.to(_softmax_dtype(q.dtype)).softmax(dim=-1).to(v.dtype)
    return (attn.unsqueeze(-2) @ v_sel).squeeze(-2)


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
