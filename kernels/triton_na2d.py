"""Tiled-GEMM Triton forward and backward of 2-D (dilated) neighborhood attention with NAT's bias.

Neighborhood attention (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
arXiv 2204.07143) lets every pixel attend to the ``k x k`` pixels around it, the window shifted
inward at the borders so that every query sees exactly ``k * k`` keys; dilated neighborhood
attention (Hassani & Shi, "Dilated Neighborhood Attention Transformer", arXiv 2209.15001) takes
those keys every ``dilation`` pixels, among the positions of the query's residue. The semantics are
exactly :func:`attnzoo.kernels.torch_backend.na2d_torch` (NATTEN's), which the tests compare with.

Design: the fused, GEMM-based neighborhood attention of Hassani et al., "Faster Neighborhood
Attention" (NeurIPS 2024, arXiv 2403.04690), in the FlashAttention-2 manner (Dao, arXiv 2307.08691):

* A dilation splits the map into ``dilation**2`` sub-maps of one residue each, inside which the
  attention is undilated; every program works inside one sub-map ("group").
* Forward: a program owns a ``TILE_H x TILE_W`` tile of queries. Their windows all lie inside one
  halo of ``(TILE_H + k - 1) x (TILE_W + k - 1)`` keys (windows only shift inward, one step per
  query), which the program walks in key blocks of ``ROWS x COLS`` positions. Logits and the value
  product are ``tl.dot`` on tensor cores (fp16/bf16 operands, fp32 accumulation); the NA rule is a
  mask inside the tile; rpb is read per (query, key) from its ``(heads, 2k-1, 2k-1)`` table; an
  online softmax (base 2) folds the blocks, and the base-2 logsumexp is saved for the backward.
* Backward, two kernels and no per-query atomics. ``dq`` first: the query-tile program re-walks
  its halo, recomputes the probabilities from the logsumexp, writes ``delta = rowsum(dO * O)`` for
  its queries and accumulates ``dq``; with a trainable bias it also sums ``dS`` by bias cell in
  registers and adds its ``(2k-1)^2`` partial sums with one atomic per cell and program. Then
  ``dk``/``dv``: a program owns a tile of keys and walks the queries whose windows reach it (an
  interval per axis, the inverse of the window rule), accumulating ``dk = dS^T q`` and
  ``dv = P^T dO`` in registers and storing them once, in the inputs' dtype.
* float32 inputs: both GEMMs run in IEEE fp32 (``input_precision="ieee"``, CUDA cores, exact as the
  reference) unless ``torch.backends.cuda.matmul.allow_tf32`` is on, which selects tf32 tensor cores.

The forward and backward are :func:`torch.library.custom_op` operators with registered fake
(shape) functions and autograd, so ``torch.compile(fullgraph=True)`` captures them as opaque calls.
On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), slowly, for tests.
What the GPU compiler makes of them (tensor-core instructions, registers, spills) is reported by
``attnzoo bench ptx`` through :func:`ptx_launches`, without a GPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch

from ._dispatch import register
from ._launch import Launch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # triton is Linux-only; the module must still import elsewhere
    triton = None
    _TRITON_MISSING = f"triton cannot be imported ({error})"
else:
    from triton.runtime.interpreter import InterpretedFunction

    _TRITON_MISSING = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 128
_MAX_KERNEL_SIZE = 13
_LOG2E = math.log2(math.e)


@dataclass(frozen=True)
class TileConfig:
    """Launch parameters of the three kernels for one call shape.

    ``TILE_H x TILE_W`` tokens are owned by a program (queries forward and for ``dq``, keys for
    ``dk``/``dv``); the other side is walked in blocks of ``ROWS x COLS`` positions, ``COLS`` a
    power of two at least ``TILE_W + k - 1`` so that one block spans the halo's width.
    """

    TILE_H: int
    TILE_W: int
    ROWS: int
    COLS: int
    BLOCK_D: int
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        """The kernels' keyword arguments: constexprs and Triton's launch options, named as the fields."""
        return asdict(self)


def tile_config(head_dim: int, kernel_size: int) -> TileConfig:
    """Tiles chosen by reasoning and by the compiler's register report (``attnzoo bench ptx``), not yet by timing.

    64 owned tokens (8 x 8) fill one m64 tensor-core tile per warpgroup and keep the wasted part of
    the halo small (useful keys per query k^2 of ``rows x COLS`` computed); wide heads get 8 warps
    so the fp32 accumulators stay in registers.
    """
    block_d = max(16, 1 << (head_dim - 1).bit_length())
    tile_w = 8
    cols = max(16, 1 << (tile_w + kernel_size - 2).bit_length())
    rows = 2 if cols <= 16 else 1
    return TileConfig(
        TILE_H=8,
        TILE_W=tile_w,
        ROWS=rows,
        COLS=cols,
        BLOCK_D=block_d,
        num_warps=8 if block_d >= 128 else 4,
        num_stages=2,
    )


if triton is not None:

    @triton.jit
    def _window_start(pos, length, KS: tl.constexpr):
        """First key of the window of the query at ``pos`` (sub-map units): NATTEN's clamp, window never shrunk."""
        return tl.minimum(tl.maximum(pos - KS // 2, 0), length - KS)

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
        """``tl.dot`` with fp32 accumulation. ``WIDEN`` (interpreter only) widens bf16 operands to fp32 first:
        Triton 3.8's interpreter multiplies bfloat16 bit patterns in ``tl.dot``; widening is the same arithmetic
        (bf16 products are exact in fp32)."""
        if WIDEN:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _owned(pid, height, width, heads, dilation, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
        """What a program owns: its (batch * head), batch (int64), head, residue (row, col), the group's sub-map
        size, its tile's first row and column, and its tokens: sub-map row and column, in-map mask, map row and
        column.

        Programs of one (batch, head) are adjacent (their keys overlap in cache); every group is
        given as many tiles as the largest sub-map needs, and the extra ones own nothing.
        """
        tiles_w = tl.cdiv(tl.cdiv(width, dilation), TILE_W)
        per_group = tl.cdiv(tl.cdiv(height, dilation), TILE_H) * tiles_w
        per_bh = per_group * dilation * dilation
        bh = pid // per_bh
        group = pid % per_bh // per_group
        tile = pid % per_group
        res_r = group // dilation
        res_c = group % dilation
        sub_h = (height - res_r + dilation - 1) // dilation
        sub_w = (width - res_c + dilation - 1) // dilation
        r0 = tile // tiles_w * TILE_H
        c0 = tile % tiles_w * TILE_W
        t = tl.arange(0, TILE_H * TILE_W)
        r = r0 + t // TILE_W
        c = c0 + t % TILE_W
        ok = (r < sub_h) & (c < sub_w)
        b = (bh // heads).to(tl.int64)  # batch offsets can pass 2**31 elements
        return (
            bh,
            b,
            bh % heads,
            res_r,
            res_c,
            sub_h,
            sub_w,
            r0,
            c0,
            r,
            c,
            ok,
            res_r + r * dilation,
            res_c + c * dilation,
        )

    @triton.jit
    def _walked(
        block, blocks_c, lo_r, lo_c, hi_r, hi_c, res_r, res_c, dilation, ROWS: tl.constexpr, COLS: tl.constexpr
    ):
        """Tokens of block ``block`` of the walked side: sub-map row, column, in-range mask, map row, column."""
        t = tl.arange(0, ROWS * COLS)
        r = lo_r + block // blocks_c * ROWS + t // COLS
        c = lo_c + block % blocks_c * COLS + t % COLS
        return r, c, (r < hi_r) & (c < hi_c), res_r + r * dilation, res_c + c * dilation

    @triton.jit
    def _token_ptrs(base, b, n, rows, cols, d, s_b, s_h, s_w, s_n, s_d):
        """Pointers to the (tokens, BLOCK_D) rows of a ``(B, H, W, heads, d)`` tensor."""
        return base + b * s_b + n * s_n + rows[:, None] * s_h + cols[:, None] * s_w + d[None, :] * s_d

    @triton.jit
    def _bias(RPB, n, qr, qc, kr, kc, sr_n, sr_h, sr_w, mask, KS: tl.constexpr):
        """NAT's bias of each (query, key) pair (operands broadcast), in base 2."""
        cell = RPB + n * sr_n + (kr - qr + KS - 1) * sr_h + (kc - qc + KS - 1) * sr_w
        return tl.load(cell, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634

    @triton.jit
    def _halo(first, size, length, KS: tl.constexpr):
        """[lo, hi) of the keys that the windows of queries ``first .. first+size-1`` cover (sub-map units)."""
        last = tl.minimum(first + size - 1, length - 1)
        lo = _window_start(tl.minimum(first, length - 1), length, KS)
        hi = _window_start(last, length, KS) + KS
        return lo, tl.where(first < length, hi, lo)

    @triton.jit
    def _reach(first, size, length, KS: tl.constexpr):
        """[lo, hi) of the queries whose windows reach keys ``first .. first+size-1``: the window rule inverted."""
        last = tl.minimum(first + size - 1, length - 1)
        lo = tl.where(first < KS, 0, first - KS // 2)
        hi = tl.where(last >= length - KS, length, last + KS // 2 + 1)
        return lo, tl.where(first < length, hi, lo)

    @triton.jit
    def _in_window(qr, qc, kr, kc, sub_h, sub_w, KS: tl.constexpr):
        """Key (kr, kc) is in the window of query (qr, qc); query-side vectors broadcast against key-side ones."""
        start_r = _window_start(qr, sub_h, KS)
        start_c = _window_start(qc, sub_w, KS)
        return (kr >= start_r) & (kr < start_r + KS) & (kc >= start_c) & (kc < start_c + KS)

    @triton.jit
    def _na2d_fwd_kernel(
        Q, K, V, RPB, OUT, LSE,
        height, width, heads, head_dim, dilation, qk_scale,
        sq_b, sq_h, sq_w, sq_n, sq_d,
        sk_b, sk_h, sk_w, sk_n, sk_d,
        sv_b, sv_h, sv_w, sv_n, sv_d,
        so_b, so_h, so_w, so_n, so_d,
        sr_n, sr_h, sr_w,
        KS: tl.constexpr, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """``qk_scale`` is ``scale * log2(e)``: logits live in base 2; LSE gets the base-2 logsumexp."""
        bh, b, n, res_r, res_c, sub_h, sub_w, r0, c0, qr, qc, q_ok, rows, cols = _owned(
            tl.program_id(0), height, width, heads, dilation, TILE_H, TILE_W
        )
        d = tl.arange(0, BLOCK_D)
        q_mask = q_ok[:, None] & (d < head_dim)[None, :]
        q = tl.load(_token_ptrs(Q, b, n, rows, cols, d, sq_b, sq_h, sq_w, sq_n, sq_d), mask=q_mask, other=0.0)

        lo_r, hi_r = _halo(r0, TILE_H, sub_h, KS)
        lo_c, hi_c = _halo(c0, TILE_W, sub_w, KS)
        blocks_c = tl.cdiv(hi_c - lo_c, COLS)
        blocks = tl.cdiv(hi_r - lo_r, ROWS) * blocks_c
        m_i = tl.full([TILE_H * TILE_W], -1.0e30, tl.float32)  # finite: a block without keys leaves it unchanged
        l_i = tl.zeros([TILE_H * TILE_W], tl.float32)
        acc = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for block in range(0, blocks):
            kr, kc, k_ok, k_rows, k_cols = _walked(
                block, blocks_c, lo_r, lo_c, hi_r, hi_c, res_r, res_c, dilation, ROWS, COLS
            )
            kv_mask = k_ok[:, None] & (d < head_dim)[None, :]
            key = tl.load(
                _token_ptrs(K, b, n, k_rows, k_cols, d, sk_b, sk_h, sk_w, sk_n, sk_d), mask=kv_mask, other=0.0
            )
            s = _dot(q, tl.trans(key), PRECISION, WIDEN) * qk_scale
            visible = _in_window(qr[:, None], qc[:, None], kr[None, :], kc[None, :], sub_h, sub_w, KS)
            visible = visible & k_ok[None, :] & q_ok[:, None]
            if HAS_RPB:
                s += _bias(RPB, n, qr[:, None], qc[:, None], kr[None, :], kc[None, :], sr_n, sr_h, sr_w, visible, KS)
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            value = tl.load(
                _token_ptrs(V, b, n, k_rows, k_cols, d, sv_b, sv_h, sv_w, sv_n, sv_d), mask=kv_mask, other=0.0
            )
            acc = acc * alpha[:, None] + _dot(p.to(value.dtype), value, PRECISION, WIDEN)
            m_i = m_new

        out = (acc / l_i[:, None]).to(OUT.dtype.element_ty)
        tl.store(_token_ptrs(OUT, b, n, rows, cols, d, so_b, so_h, so_w, so_n, so_d), out, mask=q_mask)
        tl.store(LSE + bh.to(tl.int64) * height * width + rows * width + cols, m_i + tl.log2(l_i), mask=q_ok)

    @triton.jit
    def _na2d_bwd_dq_kernel(
        Q, K, V, RPB, OUT, DOUT, LSE, DELTA, DQ, DRPB,
        height, width, heads, head_dim, dilation, qk_scale, scale,
        sq_b, sq_h, sq_w, sq_n, sq_d,
        sk_b, sk_h, sk_w, sk_n, sk_d,
        sv_b, sv_h, sv_w, sv_n, sv_d,
        so_b, so_h, so_w, so_n, so_d,
        sd_b, sd_h, sd_w, sd_n, sd_d,
        sg_b, sg_h, sg_w, sg_n, sg_d,
        sr_n, sr_h, sr_w,
        KS: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_RPB: tl.constexpr,
    ):  # fmt: skip
        """``dq`` and ``delta`` of a query tile; ``DRPB`` (float32, contiguous) gets one atomic per cell and program."""
        bh, b, n, res_r, res_c, sub_h, sub_w, r0, c0, qr, qc, q_ok, rows, cols = _owned(
            tl.program_id(0), height, width, heads, dilation, TILE_H, TILE_W
        )
        d = tl.arange(0, BLOCK_D)
        q_mask = q_ok[:, None] & (d < head_dim)[None, :]
        q = tl.load(_token_ptrs(Q, b, n, rows, cols, d, sq_b, sq_h, sq_w, sq_n, sq_d), mask=q_mask, other=0.0)
        dout = tl.load(_token_ptrs(DOUT, b, n, rows, cols, d, sd_b, sd_h, sd_w, sd_n, sd_d), mask=q_mask, other=0.0)
        out = tl.load(_token_ptrs(OUT, b, n, rows, cols, d, so_b, so_h, so_w, so_n, so_d), mask=q_mask, other=0.0)
        delta = tl.sum(dout.to(tl.float32) * out.to(tl.float32), axis=1)
        row_ptrs = bh.to(tl.int64) * height * width + rows * width + cols
        tl.store(DELTA + row_ptrs, delta, mask=q_ok)  # read by the dk/dv kernel, which runs after this one
        lse = tl.load(LSE + row_ptrs, mask=q_ok, other=0.0)

        lo_r, hi_r = _halo(r0, TILE_H, sub_h, KS)
        lo_c, hi_c = _halo(c0, TILE_W, sub_w, KS)
        blocks_c = tl.cdiv(hi_c - lo_c, COLS)
        blocks = tl.cdiv(hi_r - lo_r, ROWS) * blocks_c
        cells = tl.arange(0, BLOCK_RPB)
        drpb = tl.zeros([BLOCK_RPB, BLOCK_RPB], tl.float32)
        dq = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for block in range(0, blocks):
            kr, kc, k_ok, k_rows, k_cols = _walked(
                block, blocks_c, lo_r, lo_c, hi_r, hi_c, res_r, res_c, dilation, ROWS, COLS
            )
            kv_mask = k_ok[:, None] & (d < head_dim)[None, :]
            key = tl.load(
                _token_ptrs(K, b, n, k_rows, k_cols, d, sk_b, sk_h, sk_w, sk_n, sk_d), mask=kv_mask, other=0.0
            )
            s = _dot(q, tl.trans(key), PRECISION, WIDEN) * qk_scale
            visible = _in_window(qr[:, None], qc[:, None], kr[None, :], kc[None, :], sub_h, sub_w, KS)
            visible = visible & k_ok[None, :] & q_ok[:, None]
            if HAS_RPB:
                s += _bias(RPB, n, qr[:, None], qc[:, None], kr[None, :], kc[None, :], sr_n, sr_h, sr_w, visible, KS)
            p = tl.where(visible, tl.exp2(s - lse[:, None]), 0.0)
            value = tl.load(
                _token_ptrs(V, b, n, k_rows, k_cols, d, sv_b, sv_h, sv_w, sv_n, sv_d), mask=kv_mask, other=0.0
            )
            dp = _dot(dout, tl.trans(value), PRECISION, WIDEN)
            ds = p * (dp - delta[:, None])  # gradient of the natural-log logits (scale * q.k + bias)
            dq += _dot(ds.to(key.dtype), key, PRECISION, WIDEN)
            if RPB_GRAD:
                # Sum ds by bias cell (kr - qr + k-1, kc - qc + k-1) in registers. Per key row of the block the
                # row offset depends on the query row alone: reduce each column offset over the block's keys, then
                # place the per-query sums on their row offsets with a one-hot reduction over the tile's queries.
                col_cell = kc[None, :] - qc[:, None] + KS - 1
                kr0 = lo_r + block // blocks_c * ROWS
                for j in range(0, ROWS):
                    row_cell = kr0 + j - qr + KS - 1  # (queries,)
                    on_row = (kr == kr0 + j)[None, :]
                    to_cell = (row_cell[None, :] == cells[:, None]) & q_ok[None, :]  # (cells, queries)
                    for c in range(0, 2 * KS - 1):
                        per_query = tl.sum(tl.where(on_row & (col_cell == c), ds, 0.0), axis=1)
                        per_row_cell = tl.sum(tl.where(to_cell, per_query[None, :], 0.0), axis=1)
                        drpb += tl.where(cells[None, :] == c, per_row_cell[:, None], 0.0)

        dq = (dq * scale).to(DQ.dtype.element_ty)
        tl.store(_token_ptrs(DQ, b, n, rows, cols, d, sg_b, sg_h, sg_w, sg_n, sg_d), dq, mask=q_mask)
        if RPB_GRAD:
            side = 2 * KS - 1
            cell_ok = (cells[:, None] < side) & (cells[None, :] < side)
            tl.atomic_add(DRPB + n * side * side + cells[:, None] * side + cells[None, :], drpb, mask=cell_ok)

    @triton.jit
    def _na2d_bwd_dkdv_kernel(
        Q, K, V, RPB, DOUT, LSE, DELTA, DK, DV,
        height, width, heads, head_dim, dilation, qk_scale, scale,
        sq_b, sq_h, sq_w, sq_n, sq_d,
        sk_b, sk_h, sk_w, sk_n, sk_d,
        sv_b, sv_h, sv_w, sv_n, sv_d,
        sd_b, sd_h, sd_w, sd_n, sd_d,
        sg_b, sg_h, sg_w, sg_n, sg_d,
        sr_n, sr_h, sr_w,
        KS: tl.constexpr, HAS_RPB: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """``dk`` and ``dv`` of a key tile, over the query blocks whose windows reach it; stored once, no atomics."""
        bh, b, n, res_r, res_c, sub_h, sub_w, r0, c0, kr, kc, k_ok, k_rows, k_cols = _owned(
            tl.program_id(0), height, width, heads, dilation, TILE_H, TILE_W
        )
        d = tl.arange(0, BLOCK_D)
        k_mask = k_ok[:, None] & (d < head_dim)[None, :]
        key = tl.load(_token_ptrs(K, b, n, k_rows, k_cols, d, sk_b, sk_h, sk_w, sk_n, sk_d), mask=k_mask, other=0.0)
        value = tl.load(_token_ptrs(V, b, n, k_rows, k_cols, d, sv_b, sv_h, sv_w, sv_n, sv_d), mask=k_mask, other=0.0)

        lo_r, hi_r = _reach(r0, TILE_H, sub_h, KS)
        lo_c, hi_c = _reach(c0, TILE_W, sub_w, KS)
        blocks_c = tl.cdiv(hi_c - lo_c, COLS)
        blocks = tl.cdiv(hi_r - lo_r, ROWS) * blocks_c
        row_base = bh.to(tl.int64) * height * width
        dk = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        dv = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for block in range(0, blocks):
            qr, qc, q_ok, rows, cols = _walked(
                block, blocks_c, lo_r, lo_c, hi_r, hi_c, res_r, res_c, dilation, ROWS, COLS
            )
            q_mask = q_ok[:, None] & (d < head_dim)[None, :]
            q = tl.load(_token_ptrs(Q, b, n, rows, cols, d, sq_b, sq_h, sq_w, sq_n, sq_d), mask=q_mask, other=0.0)
            dout = tl.load(_token_ptrs(DOUT, b, n, rows, cols, d, sd_b, sd_h, sd_w, sd_n, sd_d), mask=q_mask, other=0.0)
            lse = tl.load(LSE + row_base + rows * width + cols, mask=q_ok, other=0.0)
            delta = tl.load(DELTA + row_base + rows * width + cols, mask=q_ok, other=0.0)
            st = _dot(key, tl.trans(q), PRECISION, WIDEN) * qk_scale  # (keys, queries)
            visible = _in_window(qr[None, :], qc[None, :], kr[:, None], kc[:, None], sub_h, sub_w, KS)
            visible = visible & q_ok[None, :] & k_ok[:, None]
            if HAS_RPB:
                st += _bias(RPB, n, qr[None, :], qc[None, :], kr[:, None], kc[:, None], sr_n, sr_h, sr_w, visible, KS)
            pt = tl.where(visible, tl.exp2(st - lse[None, :]), 0.0)
            dv += _dot(pt.to(dout.dtype), dout, PRECISION, WIDEN)
            dpt = _dot(value, tl.trans(dout), PRECISION, WIDEN)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(q.dtype), q, PRECISION, WIDEN)

        dk = (dk * scale).to(DK.dtype.element_ty)
        tl.store(_token_ptrs(DK, b, n, k_rows, k_cols, d, sg_b, sg_h, sg_w, sg_n, sg_d), dk, mask=k_mask)
        tl.store(
            _token_ptrs(DV, b, n, k_rows, k_cols, d, sg_b, sg_h, sg_w, sg_n, sg_d),
            dv.to(DV.dtype.element_ty),
            mask=k_mask,
        )


def _precision(dtype: torch.dtype) -> str:
    """Operand precision of ``tl.dot``: IEEE fp32 for float32 unless PyTorch allows tf32 matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for fp16/bf16 operands


def _widen(q: torch.Tensor) -> bool:
    """Widen bf16 dot operands under the interpreter (see ``_dot``); never on a GPU."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16


def _grid(q: torch.Tensor, dilation: int, config: TileConfig) -> tuple[int]:
    """One program per owned tile of every group of every (batch, head); 1-D, so no 65535 cap."""
    batch, height, width, heads, _ = q.shape
    tiles = triton.cdiv(triton.cdiv(height, dilation), config.TILE_H) * triton.cdiv(
        triton.cdiv(width, dilation), config.TILE_W
    )
    return (batch * heads * dilation * dilation * tiles,)


def _rpb_args(rpb: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A pointer and strides for the bias; q stands in (never read) when there is none."""
    return (q, (0, 0, 0)) if rpb is None else (rpb, rpb.stride())


def _common_meta(q, rpb, kernel_size: int, config: TileConfig) -> dict:
    """Meta-parameters every na2d kernel takes."""
    return dict(
        KS=kernel_size, HAS_RPB=rpb is not None, PRECISION=_precision(q.dtype), WIDEN=_widen(q), **config.meta()
    )


def forward_launch(q, k, v, rpb, out, lse, kernel_size: int, dilation: int, scale: float) -> Launch:
    """The forward launch writing ``out`` and the base-2 ``lse`` ``(B, heads, H, W)`` float32."""
    batch, height, width, heads, head_dim = q.shape
    config = tile_config(head_dim, kernel_size)
    rpb_t, rpb_strides = _rpb_args(rpb, q)
    args = (
        q, k, v, rpb_t, out, lse,
        height, width, heads, head_dim, dilation, scale * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *rpb_strides,
    )  # fmt: skip
    meta = _common_meta(q, rpb, kernel_size, config)
    return Launch("na2d forward", _na2d_fwd_kernel, _grid(q, dilation, config), args, meta)


def backward_launches(
    q, k, v, rpb, out, dout, lse, delta, dq, dk, dv, drpb, kernel_size: int, dilation: int, scale: float
) -> list[Launch]:
    """The dq (and drpb, when ``drpb`` is given) launch, then the dk/dv launch that reads its ``delta``."""
    batch, height, width, heads, head_dim = q.shape
    config = tile_config(head_dim, kernel_size)
    rpb_t, rpb_strides = _rpb_args(rpb, q)
    common = _common_meta(q, rpb, kernel_size, config)
    grid = _grid(q, dilation, config)
    dq_args = (
        q, k, v, rpb_t, out, dout, lse, delta, dq, dq if drpb is None else drpb,
        height, width, heads, head_dim, dilation, scale * _LOG2E, scale,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dq.stride(), *rpb_strides,
    )  # fmt: skip
    block_rpb = max(16, 1 << (2 * kernel_size - 2).bit_length())
    dq_meta = dict(RPB_GRAD=drpb is not None, BLOCK_RPB=block_rpb, **common)
    dkdv_args = (
        q, k, v, rpb_t, dout, lse, delta, dk, dv,
        height, width, heads, head_dim, dilation, scale * _LOG2E, scale,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *rpb_strides,
    )  # fmt: skip
    return [
        Launch("na2d backward dq" + (" drpb" if drpb is not None else ""), _na2d_bwd_dq_kernel, grid, dq_args, dq_meta),
        Launch("na2d backward dk dv", _na2d_bwd_dkdv_kernel, grid, dkdv_args, common),
    ]


def ptx_launches(shape: tuple[int, ...], dtype: torch.dtype, kernel_size: int, dilation: int) -> list[Launch]:
    """Every launch of a forward and backward with a trainable bias at ``shape``, on meta tensors (nothing runs)."""
    q, k, v, out, dout, dq, dk, dv = (torch.empty(shape, dtype=dtype, device="meta") for _ in range(8))
    batch, height, width, heads, _ = shape
    side = 2 * kernel_size - 1
    rpb = torch.empty(heads, side, side, device="meta")
    lse, delta = (torch.empty(batch, heads, height, width, device="meta") for _ in range(2))
    drpb = torch.empty(heads, side, side, device="meta")
    scale = shape[-1] ** -0.5
    forward = forward_launch(q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    backward = backward_launches(q, k, v, rpb, out, dout, lse, delta, dq, dk, dv, drpb, kernel_size, dilation, scale)
    return [forward, *backward]


if triton is not None:

    @torch.library.custom_op("attnzoo::na2d_triton_forward", mutates_args=())
    def _forward(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rpb: torch.Tensor | None,
        kernel_size: int,
        dilation: int,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output ``(B, H, W, heads, d)`` in q's dtype and float32 base-2 logsumexp ``(B, heads, H, W)``."""
        batch, height, width, heads, _ = q.shape
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty((batch, heads, height, width), dtype=torch.float32, device=q.device)
        if out.numel() > 0:
            forward_launch(q, k, v, rpb, out, lse, kernel_size, dilation, scale)()
        return out, lse

    @torch.library.custom_op("attnzoo::na2d_triton_backward", mutates_args=())
    def _backward(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rpb: torch.Tensor | None,
        out: torch.Tensor,
        lse: torch.Tensor,
        dout: torch.Tensor,
        kernel_size: int,
        dilation: int,
        scale: float,
        rpb_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dq, dk, dv`` in the inputs' dtypes and ``drpb`` in rpb's (empty when not asked for)."""
        dq, dk, dv = (torch.empty(q.shape, dtype=t.dtype, device=q.device) for t in (q, k, v))
        delta = torch.empty_like(lse)
        rpb_grad = rpb_grad and rpb is not None
        drpb = torch.zeros(rpb.shape if rpb_grad else 0, dtype=torch.float32, device=q.device)
        if dq.numel() > 0:
            launches = backward_launches(
                q,
                k,
                v,
                rpb,
                out,
                dout,
                lse,
                delta,
                dq,
                dk,
                dv,
                drpb if rpb_grad else None,
                kernel_size,
                dilation,
                scale,
            )
            for launch in launches:
                launch()
        return dq, dk, dv, (drpb.to(rpb.dtype) if rpb_grad else drpb)

    @_forward.register_fake
    def _forward_fake(q, k, v, rpb, kernel_size, dilation, scale):
        """Shapes only, for torch.compile: the kernels run on no fake tensor."""
        batch, height, width, heads, _ = q.shape
        lse = q.new_empty((batch, heads, height, width), dtype=torch.float32)
        return q.new_empty(q.shape), lse

    @_backward.register_fake
    def _backward_fake(q, k, v, rpb, out, lse, dout, kernel_size, dilation, scale, rpb_grad):
        drpb = rpb.new_empty(rpb.shape) if rpb_grad and rpb is not None else q.new_empty(0, dtype=torch.float32)
        return q.new_empty(q.shape), k.new_empty(q.shape), v.new_empty(q.shape), drpb

    def _setup_context(ctx, inputs, output) -> None:
        q, k, v, rpb, kernel_size, dilation, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        ctx.kernel_size, ctx.dilation, ctx.scale = kernel_size, dilation, scale
        ctx.mark_non_differentiable(lse)

    def _autograd_backward(ctx, dout, _dlse):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        rpb_grad = rpb is not None and ctx.needs_input_grad[3]
        dq, dk, dv, drpb = _backward(q, k, v, rpb, out, lse, dout, ctx.kernel_size, ctx.dilation, ctx.scale, rpb_grad)
        return dq, dk, dv, (drpb if rpb_grad else None), None, None, None

    _forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def na2d_triton(q, k, v, kernel_size: int, dilation: int, rpb, scale: float, attn_drop: float = 0.0) -> torch.Tensor:
    """Neighborhood attention on ``(B, H, W, heads, d)`` tensors with the tiled-GEMM Triton kernels.

    Same signature and result as :func:`~attnzoo.kernels.torch_backend.na2d_torch`; ``attn_drop`` must
    be 0 (dropout on the weights is not fused; :func:`_unsupported` routes such calls away).
    """
    if attn_drop > 0.0:
        raise ValueError("the triton na2d backend does not fuse attention dropout; use the torch backend")
    return _forward(q, k, v, rpb, kernel_size, dilation, float(scale))[0]


def _unavailable() -> str | None:
    return _TRITON_MISSING


def _unsupported(q, k, v, kernel_size=1, rpb=None, attn_drop=0.0, **_) -> str | None:
    """Why the kernels cannot serve a call (None if they can); checked before dispatching to them.

    CPU tensors need the interpreter both now and when the kernels were defined (``triton.jit`` reads
    ``TRITON_INTERPRET`` at definition, i.e. when this module was imported).
    """
    if q.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1" or not isinstance(_na2d_fwd_kernel, InterpretedFunction):
            return "CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 before attnzoo is imported)"
    elif q.device.type != "cuda":
        return f"Triton kernels run on CUDA devices, got {q.device.type}"
    if attn_drop > 0.0:
        return "attention dropout is not fused; use the torch backend"
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported (float32, float16 or bfloat16)"
    head_dim = q.shape[-1]
    if not _MIN_HEAD_DIM <= head_dim <= _MAX_HEAD_DIM:
        return f"head_dim must lie in [{_MIN_HEAD_DIM}, {_MAX_HEAD_DIM}], got {head_dim}"
    if kernel_size > _MAX_KERNEL_SIZE:
        return f"kernel_size must be at most {_MAX_KERNEL_SIZE}, got {kernel_size}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True)) >= 2**31:
            return f"one batch element of {name} spans 2**31 elements or more (the kernels index within it in int32)"
    needs_grad = torch.is_grad_enabled() and rpb is not None and rpb.requires_grad
    if needs_grad and torch.are_deterministic_algorithms_enabled():
        return (
            "its bias gradient adds per-program partial sums with atomics, which are not deterministic, "
            "and torch.use_deterministic_algorithms(True) is in force"
        )
    return None


register("na2d", "triton", na2d_triton, unavailable=_unavailable, unsupported=_unsupported)
