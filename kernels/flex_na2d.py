"""The ``flex`` backend of :func:`attnzoo.kernels.na2d`: PyTorch's FlexAttention with neighbourhood block sparsity.

Neighborhood attention (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023, arXiv
2204.07143; dilated: "Dilated Neighborhood Attention Transformer", arXiv 2209.15001) is dense
attention with a mask, which FlexAttention (Dong et al., "Flex Attention: A Programming Model for
Generating Optimized Attention Kernels", arXiv 2412.05496) runs as a fused kernel that skips every
block of keys the mask leaves empty. How much it skips depends on the token order, so tokens are
first ordered group by group (one group per dilation residue) in 2-D tiles of ``8 x 16`` = 128,
FlexAttention's block: a block of keys is then a compact patch, and a block of queries meets only
the few patches around it. The mask is NATTEN's rule (window clamped at the borders, exactly k x k
keys, per group) and NAT's relative position bias is added in ``score_mod``; FlexAttention
differentiates the captured bias, so it trains. The order, the index tables and the block mask
are built once per (map, kernel size, dilation, device) and cached.

On CUDA the call runs through ``torch.compile`` (FlexAttention is only fused when compiled);
forward and backward. On the CPU FlexAttention has no backward, and its uncompiled path is a
dense reference (it scores all tokens against all), so ``backend="flex"`` on the CPU is for
checking the mask and bias against the ``torch`` backend and ``auto`` never picks it there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ._dispatch import register
from .torch_backend import neighborhood_indices

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError as error:  # FlexAttention arrived in torch 2.5
    flex_attention = None
    _FLEX_MISSING = f"torch.nn.attention.flex_attention cannot be imported ({error})"
else:
    _FLEX_MISSING = None

TILE = (8, 16)
"""Rows x columns of the 2-D tiles tokens are ordered in: 128 tokens, FlexAttention's default block."""

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TokenOrder:
    """The 2-D-tiled order of a map's tokens and what the mask and bias need to know of each token in it.

    ``order[t]`` is the flat position ``row * W + col`` of the t-th token; ``inverse`` undoes it.
    ``group``, ``sub_row``, ``sub_col`` place a token in its dilation group's sub-map, and
    ``start_row``, ``start_col`` give the first key of its window there (NATTEN's clamp).
    """

    order: torch.Tensor
    inverse: torch.Tensor
    group: torch.Tensor
    sub_row: torch.Tensor
    sub_col: torch.Tensor
    start_row: torch.Tensor
    start_col: torch.Tensor


def token_order(height: int, width: int, kernel_size: int, dilation: int, device) -> TokenOrder:
    """Tokens sorted by (group, tile row, tile col, row in tile, col in tile) of each group's sub-map."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    res_r, res_c = rows % dilation, cols % dilation
    sub_r, sub_c = rows // dilation, cols // dilation
    tiles_r = math.ceil(math.ceil(height / dilation) / TILE[0])
    tiles_c = math.ceil(math.ceil(width / dilation) / TILE[1])
    group = res_r * dilation + res_c
    tile = (group * tiles_r + sub_r // TILE[0]) * tiles_c + sub_c // TILE[1]
    key = tile * (TILE[0] * TILE[1]) + (sub_r % TILE[0]) * TILE[1] + sub_c % TILE[1]
    order = torch.argsort(key)
    # first key of each position's window along each axis (the reference's rule), in sub-map units
    start_r = neighborhood_indices(height, kernel_size, dilation, device)[0][:, 0][rows] // dilation
    start_c = neighborhood_indices(width, kernel_size, dilation, device)[0][:, 0][cols] // dilation
    return TokenOrder(
        order=order,
        inverse=torch.argsort(order),
        group=group[order],
        sub_row=sub_r[order],
        sub_col=sub_c[order],
        start_row=start_r[order],
        start_col=start_c[order],
    )


def neighborhood_mask_mod(tokens: TokenOrder, kernel_size: int):
    """FlexAttention ``mask_mod``: the key is in the query's group and inside its clamped window."""

    def mask_mod(b, h, q_idx, kv_idx):
        key_row, key_col = tokens.sub_row[kv_idx], tokens.sub_col[kv_idx]
        start_row, start_col = tokens.start_row[q_idx], tokens.start_col[q_idx]
        same_group = tokens.group[q_idx] == tokens.group[kv_idx]
        in_rows = (key_row >= start_row) & (key_row < start_row + kernel_size)
        in_cols = (key_col >= start_col) & (key_col < start_col + kernel_size)
        return same_group & in_rows & in_cols

    return mask_mod


def bias_score_mod(tokens: TokenOrder, kernel_size: int, rpb: torch.Tensor):
    """FlexAttention ``score_mod`` adding ``rpb[h, key_row - query_row + k-1, key_col - query_col + k-1]``.

    Offsets are in sub-map units (the dilated rule). Masked pairs of a partly filled block are
    scored too before the mask drops them, so their cell is clamped into the table.
    """
    last = 2 * kernel_size - 2

    def score_mod(score, b, h, q_idx, kv_idx):
        dr = (tokens.sub_row[kv_idx] - tokens.sub_row[q_idx] + kernel_size - 1).clamp(0, last)
        dc = (tokens.sub_col[kv_idx] - tokens.sub_col[q_idx] + kernel_size - 1).clamp(0, last)
        return score + rpb[h, dr, dc]

    return score_mod


@functools.lru_cache(maxsize=64)
def _plan(height: int, width: int, kernel_size: int, dilation: int, device: torch.device) -> tuple:
    """(token order, block mask) for one map, cached: building the block mask evaluates the mask on every block."""
    tokens = token_order(height, width, kernel_size, dilation, device)
    n = height * width
    mask = create_block_mask(neighborhood_mask_mod(tokens, kernel_size), None, None, n, n, device=device)
    return tokens, mask


FLEX_RECOMPILE_LIMIT = 64
"""Graphs kept per process for the compiled FlexAttention call: one per (map, batch, heads, dtype) met.

The compiled call is specialised per shape (``dynamic=False``, as NATTEN does; a dynamic-shape
FlexAttention graph failed to build on the CPU here), and a model meets one shape per stage and batch
size, so torch's default of 8 graphs would soon send calls back to the uncompiled, dense path.
"""


@functools.cache
def _compiled_flex():
    """FlexAttention compiled once per process: uncompiled, it scores every token against every other."""
    return torch.compile(flex_attention, dynamic=False)


def _attend(q, k, v, score_mod, mask, scale):
    """Compiled on CUDA; inside a caller's ``torch.compile`` the caller's compilation fuses it."""
    if q.device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale)
    with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
        return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale)


def block_mask(height: int, width: int, kernel_size: int, dilation: int, device) -> BlockMask:
    """The cached block mask of a map (exposed so tests and benchmarks can read its sparsity)."""
    return _plan(height, width, kernel_size, dilation, torch.device(device))[1]


def na2d_flex(q, k, v, kernel_size: int, dilation: int, rpb, scale: float, attn_drop: float = 0.0) -> torch.Tensor:
    """Same contract as :func:`attnzoo.kernels.torch_backend.na2d_torch`, for calls :func:`unsupported` accepts."""
    if attn_drop > 0.0:
        raise ValueError("the flex na2d backend has no attention dropout; use the torch backend")
    batch, height, width, heads, head_dim = q.shape
    tokens, mask = _plan(height, width, kernel_size, dilation, q.device)

    def to_sequence(t: torch.Tensor) -> torch.Tensor:  # (B, H, W, h, d) -> (B, h, N, d) in the tiled order
        return t.reshape(batch, height * width, heads, head_dim)[:, tokens.order].transpose(1, 2)

    score_mod = None if rpb is None else bias_score_mod(tokens, kernel_size, rpb.to(torch.float32))
    out = _attend(to_sequence(q), to_sequence(k), to_sequence(v), score_mod, mask, scale)
    out = out.transpose(1, 2)[:, tokens.inverse]
    return out.reshape(batch, height, width, heads, head_dim)


def unavailable() -> str | None:
    return _FLEX_MISSING


def unsupported(q, k, v, rpb=None, attn_drop: float = 0.0, **_) -> str | None:
    """Why FlexAttention cannot serve this (already validated) call, as a sentence (``None`` if it can)."""
    if attn_drop > 0.0:
        return "FlexAttention has no attention dropout; use attn_drop=0 or the torch backend"
    if q.device.type not in ("cuda", "cpu"):
        return f"the flex backend runs on CUDA and (forward only) on the CPU, got {q.device.type}"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported (float32, float16 or bfloat16)"
    head_dim = q.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"FlexAttention's kernels take power-of-two head dims of at least 16, got {head_dim}"
    leaves = (q, k, v) if rpb is None else (q, k, v, rpb)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    if needs_grad and q.device.type == "cpu":
        return "FlexAttention has no backward pass on the CPU; run under torch.no_grad() or use the torch backend"
    return None


register("na2d", "flex", na2d_flex, unavailable=unavailable, unsupported=unsupported)
