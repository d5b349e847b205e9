"""Fused Triton forward and backward of :func:`attnzoo.kernels.gather_attention` (the ``triton`` backend).

``gather_attention`` is the attention of QuadTree's fine levels (Tang et al., "QuadTree Attention for
Vision Transformers", ICLR 2022, arXiv 2201.02767: each query attends to the 4 children of its parent's
top-k keys) and of Sparsifiner (Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for
Efficient Vision Transformers", CVPR 2023, arXiv 2303.13755: each query attends to its predicted keys).
Every query lists its own keys, so the work is a batch of tiny per-query dot products, not a matrix
product: the kernels gather the listed key and value rows by pointer arithmetic, which keeps memory at
O(Nq * K) (indices and probabilities are never stored) instead of the reference's O(Nq * K * head_dim).

Forward: one program per block of ``BLOCK_M`` queries of one (batch, head). It walks the K listed keys in
chunks of ``BLOCK_K``, keeps a running maximum and sum (online softmax, as in FlashAttention), accumulates
in float32 and stores the row logsumexp for the backward.

Backward: the same blocking. Probabilities are recomputed from the logsumexp, ``delta = rowsum(dO * O)``;
``dq`` belongs to one program and is stored directly; ``dk`` and ``dv`` rows are shared by any number of
queries (and may repeat inside one query), so they are scattered with float32 ``atomic_add`` into float32
buffers and cast at the end. Atomics make ``dk``/``dv`` summation order nondeterministic, so the backend
declines gradient calls when PyTorch's deterministic mode is on.
"""

from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from ._dispatch import register
from ._launch import Launch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # triton is Linux-only
    triton = None
    _IMPORT_ERROR = f"triton cannot be imported ({error})"
else:
    _IMPORT_ERROR = None

# Triton decides between compiling and interpreting when a kernel is defined, i.e. at this module's import.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

MAX_HEAD_DIM = 128
"""Largest q/k and v head dimension: at 128 a chunk already holds a single key per query, and a wider
(BLOCK_M, 1, head_dim) tile would exceed the register budget below (spills)."""

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK_M = 16  # queries per program
_TILE_BUDGET = 2048  # elements of one gathered (BLOCK_M, BLOCK_K, BLOCK_D) tile; with _NUM_WARPS, bounds registers
_NUM_WARPS = 8  # sm_90 build: ~120 registers forward, ~180 backward, no spills, for head dims 32 to 128


if triton is not None:

    @triton.jit
    def _gather_rows(base, rows, stride_row, cols, stride_col, mask):
        """``base[rows[m, j], cols[c]]`` as a float32 (M, K, C) tile; masked entries are 0."""
        pointers = base + rows[:, :, None] * stride_row + cols[None, None, :] * stride_col
        return tl.load(pointers, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _gather_attention_fwd(
        Q, K, V, Index, Out, Lse,
        scale, n_heads, n_queries, n_keys, keys_per_query, head_dim, head_dim_v,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ib, stride_ih, stride_in, stride_ik,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1).to(tl.int64)
        batch, head = bh // n_heads, bh % n_heads
        queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims, dims_v = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
        query_ok, dim_ok, dim_v_ok = queries < n_queries, dims < head_dim, dims_v < head_dim_v

        q_base = Q + batch * stride_qb + head * stride_qh
        q = tl.load(
            q_base + queries[:, None] * stride_qn + dims[None, :] * stride_qd,
            mask=query_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        q = q.to(tl.float32) * scale
        k_base = K + batch * stride_kb + head * stride_kh
        v_base = V + batch * stride_vb + head * stride_vh
        i_base = Index + batch * stride_ib + head * stride_ih

        row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        row_sum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
        for start in range(0, keys_per_query, BLOCK_K):
            slots = start + tl.arange(0, BLOCK_K)
            slot_ok = slots < keys_per_query
            listed = query_ok[:, None] & slot_ok[None, :]
            rows = tl.load(i_base + queries[:, None] * stride_in + slots[None, :] * stride_ik, mask=listed, other=0)
            listed = listed & (rows >= 0) & (rows < n_keys)  # never read outside k/v, whatever the index holds
            keys = _gather_rows(k_base, rows, stride_kn, dims, stride_kd, listed[:, :, None] & dim_ok[None, None, :])
            # padding slots get -inf so they vanish from the softmax; padding queries keep finite garbage
            logits = tl.where(slot_ok[None, :], tl.sum(q[:, None, :] * keys, axis=2), float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, axis=1))
            rescale = tl.exp(row_max - new_max)
            p = tl.exp(logits - new_max[:, None])
            row_sum = row_sum * rescale + tl.sum(p, axis=1)
            values = _gather_rows(
                v_base, rows, stride_vn, dims_v, stride_vd, listed[:, :, None] & dim_v_ok[None, None, :]
            )
            acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * values, axis=1)
            row_max = new_max

        out = acc / row_sum[:, None]
        out_rows = Out + bh * n_queries * head_dim_v + queries[:, None] * head_dim_v + dims_v[None, :]
        tl.store(out_rows, out.to(Out.dtype.element_ty), mask=query_ok[:, None] & dim_v_ok[None, :])
        tl.store(Lse + bh * n_queries + queries, row_max + tl.log(row_sum), mask=query_ok)

    @triton.jit
    def _gather_attention_bwd(
        Q, K, V, Index, Out, GradOut, Lse, GradQ, GradK, GradV,
        scale, n_heads, n_queries, n_keys, keys_per_query, head_dim, head_dim_v,
        stride_qb, stride_qh, stride_qn, stride_qd,
        stride_kb, stride_kh, stride_kn, stride_kd,
        stride_vb, stride_vh, stride_vn, stride_vd,
        stride_ib, stride_ih, stride_in, stride_ik,
        stride_gb, stride_gh, stride_gn, stride_gd,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1).to(tl.int64)
        batch, head = bh // n_heads, bh % n_heads
        queries = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims, dims_v = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
        query_ok, dim_ok, dim_v_ok = queries < n_queries, dims < head_dim, dims_v < head_dim_v
        q_tile, v_tile = query_ok[:, None] & dim_ok[None, :], query_ok[:, None] & dim_v_ok[None, :]

        q_base = Q + batch * stride_qb + head * stride_qh
        q = tl.load(q_base + queries[:, None] * stride_qn + dims[None, :] * stride_qd, mask=q_tile, other=0.0)
        q = q.to(tl.float32) * scale
        g_base = GradOut + batch * stride_gb + head * stride_gh
        grad_out = tl.load(g_base + queries[:, None] * stride_gn + dims_v[None, :] * stride_gd, mask=v_tile, other=0.0)
        grad_out = grad_out.to(tl.float32)
        out_rows = Out + bh * n_queries * head_dim_v + queries[:, None] * head_dim_v + dims_v[None, :]
        out = tl.load(out_rows, mask=v_tile, other=0.0).to(tl.float32)
        delta = tl.sum(grad_out * out, axis=1)  # = sum_j p_j * dp_j, the softmax Jacobian's correction
        lse = tl.load(Lse + bh * n_queries + queries, mask=query_ok, other=0.0)

        k_base = K + batch * stride_kb + head * stride_kh
        v_base = V + batch * stride_vb + head * stride_vh
        i_base = Index + batch * stride_ib + head * stride_ih
        dk_base = GradK + bh * n_keys * head_dim  # float32 buffers, contiguous (B, heads, Nk, dim)
        dv_base = GradV + bh * n_keys * head_dim_v
        grad_q = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for start in range(0, keys_per_query, BLOCK_K):
            slots = start + tl.arange(0, BLOCK_K)
            listed = query_ok[:, None] & (slots < keys_per_query)[None, :]
            rows = tl.load(i_base + queries[:, None] * stride_in + slots[None, :] * stride_ik, mask=listed, other=0)
            listed = listed & (rows >= 0) & (rows < n_keys)  # never read or write outside k/v
            k_mask = listed[:, :, None] & dim_ok[None, None, :]
            v_mask = listed[:, :, None] & dim_v_ok[None, None, :]
            keys = _gather_rows(k_base, rows, stride_kn, dims, stride_kd, k_mask)
            values = _gather_rows(v_base, rows, stride_vn, dims_v, stride_vd, v_mask)
            p = tl.where(listed, tl.exp(tl.sum(q[:, None, :] * keys, axis=2) - lse[:, None]), 0.0)
            grad_p = tl.sum(grad_out[:, None, :] * values, axis=2)
            grad_logits = p * (grad_p - delta[:, None])
            grad_q += tl.sum(grad_logits[:, :, None] * keys, axis=1)
            # a key row may be listed by many queries and several times by one: accumulate atomically
            dv_rows = dv_base + rows[:, :, None] * head_dim_v + dims_v[None, None, :]
            tl.atomic_add(dv_rows, p[:, :, None] * grad_out[:, None, :], mask=v_mask, sem="relaxed")
            dk_rows = dk_base + rows[:, :, None] * head_dim + dims[None, None, :]
            tl.atomic_add(dk_rows, grad_logits[:, :, None] * q[:, None, :], mask=k_mask, sem="relaxed")

        dq_rows = GradQ + bh * n_queries * head_dim + queries[:, None] * head_dim + dims[None, :]
        tl.store(dq_rows, (grad_q * scale).to(GradQ.dtype.element_ty), mask=q_tile)


def _blocks(keys_per_query: int, head_dim: int, head_dim_v: int) -> dict[str, int]:
    """Power-of-two tile sizes: head dims padded (and masked) to >= 16, as many keys per chunk as fit."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_dv = max(16, triton.next_power_of_2(head_dim_v))
    fit = max(1, _TILE_BUDGET // (_BLOCK_M * max(block_d, block_dv)))
    block_k = min(triton.next_power_of_2(keys_per_query), fit)
    return dict(BLOCK_M=_BLOCK_M, BLOCK_K=block_k, BLOCK_D=block_d, BLOCK_DV=block_dv)


def forward_launch(q, k, v, index, out, lse, scale: float) -> Launch:
    batch, heads, n_queries, head_dim = q.shape
    n_keys, head_dim_v, keys_per_query = k.shape[2], v.shape[-1], index.shape[-1]
    grid = (triton.cdiv(n_queries, _BLOCK_M), batch * heads)
    args = (
        q, k, v, index, out, lse,
        scale, heads, n_queries, n_keys, keys_per_query, head_dim, head_dim_v,
        *q.stride(), *k.stride(), *v.stride(), *index.stride(),
    )  # fmt: skip
    meta = dict(**_blocks(keys_per_query, head_dim, head_dim_v), num_warps=_NUM_WARPS)
    return Launch("gather forward", _gather_attention_fwd, grid, args, meta)


def backward_launch(q, k, v, index, out, lse, grad_out, grad_q, grad_k, grad_v, scale: float) -> Launch:
    batch, heads, n_queries, head_dim = q.shape
    n_keys, head_dim_v, keys_per_query = k.shape[2], v.shape[-1], index.shape[-1]
    grid = (triton.cdiv(n_queries, _BLOCK_M), batch * heads)
    args = (
        q, k, v, index, out, grad_out, lse, grad_q, grad_k, grad_v,
        scale, heads, n_queries, n_keys, keys_per_query, head_dim, head_dim_v,
        *q.stride(), *k.stride(), *v.stride(), *index.stride(), *grad_out.stride(),
    )  # fmt: skip
    meta = dict(**_blocks(keys_per_query, head_dim, head_dim_v), num_warps=_NUM_WARPS)
    return Launch("gather backward", _gather_attention_bwd, grid, args, meta)


PTX_SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "quadtree": (64, 1, 56 * 56, 56 * 56, 8 * 4, 32),  # QuadTree-B stage 1: 4 children of the top-8 parents
    "sparsifiner": (64, 6, 197, 197, 50, 64),  # DeiT-S tokens, about a quarter of the keys kept
}
"""(B, heads, Nq, Nk, K, head_dim) of the launches ``attnzoo bench ptx`` compiles."""


def ptx_launches(batch, heads, n_queries, n_keys, listed, head_dim, dtype) -> list[Launch]:
    """The forward and backward launches at one shape, on meta tensors (nothing runs)."""
    q, grad_q, out, grad_out = (
        torch.empty(batch, heads, n_queries, head_dim, dtype=dtype, device="meta") for _ in "1234"
    )
    k, v = (torch.empty(batch, heads, n_keys, head_dim, dtype=dtype, device="meta") for _ in "12")
    grad_k, grad_v = (torch.empty(batch, heads, n_keys, head_dim, device="meta") for _ in "12")
    index = torch.empty(batch, heads, n_queries, listed, dtype=torch.int64, device="meta")
    lse = torch.empty(batch, heads, n_queries, device="meta")
    scale = head_dim**-0.5
    return [
        forward_launch(q, k, v, index, out, lse, scale),
        backward_launch(q, k, v, index, out, lse, grad_out, grad_q, grad_k, grad_v, scale),
    ]


def _forward(q, k, v, index, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, n_queries, _ = q.shape
    out = torch.empty(batch, heads, n_queries, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, n_queries, dtype=torch.float32, device=q.device)
    if out.numel() > 0:
        forward_launch(q, k, v, index, out, lse, scale)()
    return out, lse


def _backward(q, k, v, index, out, lse, grad_out, scale: float) -> tuple[torch.Tensor, ...]:
    grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    if grad_q.numel() > 0 and grad_out.numel() > 0:
        backward_launch(q, k, v, index, out, lse, grad_out, grad_q, grad_k, grad_v, scale)()
    else:
        grad_q.zero_()
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)


class _GatherAttention(torch.autograd.Function):
    """Saves the output and the logsumexp (O(Nq) floats), not the probabilities (O(Nq * K))."""

    @staticmethod
    def forward(ctx, q, k, v, index, scale):
        out, lse = _forward(q, k, v, index, scale)
        ctx.save_for_backward(q, k, v, index, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, index, out, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v = _backward(q, k, v, index, out, lse, grad_out, ctx.scale)
        needs = ctx.needs_input_grad
        return (grad_q if needs[0] else None, grad_k if needs[1] else None, grad_v if needs[2] else None, None, None)


def gather_attention_triton(q, k, v, index, scale: float) -> torch.Tensor:
    """Same contract as :func:`attnzoo.kernels.torch_backend.gather_attention_torch` (arguments already checked)."""
    return _GatherAttention.apply(q, k, v, index, scale)


def unavailable() -> str | None:
    """Why this backend cannot run in this environment at all (``None`` if it can)."""
    return _IMPORT_ERROR


def unsupported(q, k, v, index, **_) -> str | None:
    """Why the kernels cannot serve these (already validated) tensors, as a sentence (``None`` if they can)."""
    if q.device.type == "cpu" and not _INTERPRETED:
        return (
            "CPU tensors need Triton's interpreter, which was off when attnzoo was imported "
            "(set TRITON_INTERPRET=1 before importing it; it is slow and meant for tests)"
        )
    if q.device.type not in ("cuda", "cpu"):
        return f"the Triton kernels run on CUDA devices only, got {q.device.type} tensors"
    if q.dtype not in _DTYPES:
        return f"the Triton kernels support float32, float16 and bfloat16, got {q.dtype}"
    head_dim, head_dim_v = q.shape[-1], v.shape[-1]
    if head_dim > MAX_HEAD_DIM or head_dim_v > MAX_HEAD_DIM:
        return f"the Triton kernels support head dims up to {MAX_HEAD_DIM}, got q/k {head_dim} and v {head_dim_v}"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and torch.are_deterministic_algorithms_enabled():
        return (
            "its backward accumulates dk and dv with atomic adds, which are not deterministic, "
            "and torch.use_deterministic_algorithms(True) is in force"
        )
    return None


register("gather_attention", "triton", gather_attention_triton, unavailable=unavailable, unsupported=unsupported)
