"""Fused Triton forward and backward of 2-D (dilated) neighborhood attention with NAT's bias.

Neighborhood attention (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
arXiv 2204.07143) lets every pixel attend to the ``k x k`` pixels around it, the window shifted
inward at the borders so that every query sees exactly ``k * k`` keys; dilated neighborhood
attention (Hassani & Shi, "Dilated Neighborhood Attention Transformer", arXiv 2209.15001) takes
those keys every ``dilation`` pixels, among the positions of the query's residue. The semantics are
exactly :func:`attnzoo.kernels.torch_backend.na2d_torch` (NATTEN's), which the tests compare with.

Design (flash-attention style, Dao et al., arXiv 2205.14135, applied to a fixed neighbourhood):

* Forward: a program owns a ``TILE_H x TILE_W`` tile of query pixels of one (batch, head). It
  loops over the ``k * k`` neighbour slots; in slot ``(ti, tj)`` each query gathers its own key and
  value rows (per-query addresses, since windows shift at borders and differ per residue), and an
  online softmax (running max and sum, in float32) folds them into the output accumulator. Nothing
  of size ``queries x k*k`` is written to memory; the per-query logsumexp is, for the backward.
* Backward: the same tiling and loop recompute each probability from the logsumexp, with
  ``delta = rowsum(dO * O)``. ``dq`` is accumulated per query. ``dk``, ``dv`` and the bias gradient
  are scattered from the query side with float32 atomic adds (a key is reached by a variable number
  of queries at the borders, which makes a key-side pass awkward). The bias gradient sums over
  batch and positions into ``(2k-1)^2`` cells per head, so nearly all queries would hit the same few
  addresses; queries whose window is centred (the interior: in slot ``(ti, tj)`` they all read cell
  ``(ti + k//2, tj + k//2)``) are first summed in the tile, so one atomic per tile and slot serves
  them. As in flash-attention, ``delta`` uses the stored (rounded) output, which adds a little
  error to half-precision gradients. The backward is not itself differentiable.

The forward and backward are :func:`torch.library.custom_op` operators with registered fake
(shape) functions and autograd, so ``torch.compile(fullgraph=True)`` captures them as opaque calls.
(``torch.library.triton_op`` would let Inductor see the kernels, but its shape function runs the
kernel body, which Triton's interpreter cannot do on fake tensors, so it cannot be tested on CPU.)
On CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``), slowly, for tests.
"""

from __future__ import annotations

import os

import torch

from ._dispatch import register

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


def _tile(block_d: int) -> tuple[int, int]:
    """Query tile (rows, cols): 8 rows, and fewer columns for wider heads to bound registers."""
    return 8, min(16, max(4, 512 // block_d))


if triton is not None:

    @triton.jit
    def _window(pos, length, dilation, K: tl.constexpr):
        """Residue, index in the residue's sub-sequence, and window start (sub-sequence units).

        The start is ``clamp(sub - K//2, 0, sub_length - K)``, low bound first: NATTEN's rule, which
        keeps the window inside the map by shifting it, never shrinking it.
        """
        residue = pos % dilation
        sub = pos // dilation
        sub_length = (length - residue + dilation - 1) // dilation
        start = tl.minimum(tl.maximum(sub - K // 2, 0), sub_length - K)
        return residue, sub, start

    @triton.jit
    def _na2d_fwd_kernel(
        q_ptr, k_ptr, v_ptr, rpb_ptr, out_ptr, lse_ptr,
        height, width, heads, head_dim, dilation, scale,
        sq_b, sq_h, sq_w, sq_n, sq_d,
        sk_b, sk_h, sk_w, sk_n, sk_d,
        sv_b, sv_h, sv_w, sv_n, sv_d,
        so_b, so_h, so_w, so_n, so_d,
        sr_n, sr_h, sr_w,
        K: tl.constexpr, HAS_RPB: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        tiles_w = tl.cdiv(width, TILE_W)
        tiles = tl.cdiv(height, TILE_H) * tiles_w
        tile = tl.program_id(0) % tiles  # neighbouring programs share (batch, head): their keys overlap in cache
        b = tl.program_id(0) // tiles // heads
        n = tl.program_id(0) // tiles % heads
        offs = tl.arange(0, TILE_H * TILE_W)
        i = (tile // tiles_w) * TILE_H + offs // TILE_W
        j = (tile % tiles_w) * TILE_W + offs % TILE_W
        valid = (i < height) & (j < width)
        d = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < head_dim)[None, :]
        b64 = b.to(tl.int64)  # batch offsets can pass 2**31 elements

        q_rows = q_ptr + b64 * sq_b + n * sq_n + i[:, None] * sq_h + j[:, None] * sq_w + d[None, :] * sq_d
        q = tl.load(q_rows, mask=mask, other=0.0).to(tl.float32) * scale
        k_base = k_ptr + b64 * sk_b + n * sk_n + d[None, :] * sk_d
        v_base = v_ptr + b64 * sv_b + n * sv_n + d[None, :] * sv_d
        r_i, g_i, s_i = _window(i, height, dilation, K)
        r_j, g_j, s_j = _window(j, width, dilation, K)

        m = tl.full([TILE_H * TILE_W], float("-inf"), tl.float32)
        l = tl.zeros([TILE_H * TILE_W], tl.float32)  # noqa: E741
        acc = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for ti in range(K):
            key_i = r_i + (s_i + ti) * dilation
            for tj in range(K):
                key_j = r_j + (s_j + tj) * dilation
                key = tl.load(k_base + key_i[:, None] * sk_h + key_j[:, None] * sk_w, mask=mask, other=0.0)
                logit = tl.sum(q * key.to(tl.float32), axis=1)
                if HAS_RPB:
                    bias = rpb_ptr + n * sr_n + (s_i + ti - g_i + K - 1) * sr_h + (s_j + tj - g_j + K - 1) * sr_w
                    logit += tl.load(bias, mask=valid, other=0.0).to(tl.float32)
                m_new = tl.maximum(m, logit)
                alpha = tl.exp(m - m_new)
                p = tl.exp(logit - m_new)
                value = tl.load(v_base + key_i[:, None] * sv_h + key_j[:, None] * sv_w, mask=mask, other=0.0)
                acc = acc * alpha[:, None] + p[:, None] * value.to(tl.float32)
                l = l * alpha + p  # noqa: E741
                m = m_new

        out_rows = out_ptr + b64 * so_b + n * so_n + i[:, None] * so_h + j[:, None] * so_w + d[None, :] * so_d
        tl.store(out_rows, (acc / l[:, None]).to(out_ptr.dtype.element_ty), mask=mask)
        lse_rows = lse_ptr + (b64 * heads + n) * height * width + i * width + j
        tl.store(lse_rows, m + tl.log(l), mask=valid)

    @triton.jit
    def _na2d_bwd_kernel(
        q_ptr, k_ptr, v_ptr, rpb_ptr, out_ptr, lse_ptr, dout_ptr,
        dq_ptr, dk_ptr, dv_ptr, drpb_ptr,
        height, width, heads, head_dim, dilation, scale,
        sq_b, sq_h, sq_w, sq_n, sq_d,
        sk_b, sk_h, sk_w, sk_n, sk_d,
        sv_b, sv_h, sv_w, sv_n, sv_d,
        so_b, so_h, so_w, so_n, so_d,
        sd_b, sd_h, sd_w, sd_n, sd_d,
        sg_b, sg_h, sg_w, sg_n, sg_d,
        sr_n, sr_h, sr_w,
        K: tl.constexpr, HAS_RPB: tl.constexpr, RPB_GRAD: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """``dq`` (q's dtype), ``dk``, ``dv`` (float32) share strides ``sg_*``; ``drpb`` (float32) has rpb's."""
        tiles_w = tl.cdiv(width, TILE_W)
        tiles = tl.cdiv(height, TILE_H) * tiles_w
        tile = tl.program_id(0) % tiles  # neighbouring programs share (batch, head): their keys overlap in cache
        b = tl.program_id(0) // tiles // heads
        n = tl.program_id(0) // tiles % heads
        offs = tl.arange(0, TILE_H * TILE_W)
        i = (tile // tiles_w) * TILE_H + offs // TILE_W
        j = (tile % tiles_w) * TILE_W + offs % TILE_W
        valid = (i < height) & (j < width)
        d = tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < head_dim)[None, :]
        b64 = b.to(tl.int64)

        q_off = b64 * sq_b + n * sq_n + i[:, None] * sq_h + j[:, None] * sq_w + d[None, :] * sq_d
        q = tl.load(q_ptr + q_off, mask=mask, other=0.0).to(tl.float32) * scale
        o_off = b64 * so_b + n * so_n + i[:, None] * so_h + j[:, None] * so_w + d[None, :] * so_d
        out = tl.load(out_ptr + o_off, mask=mask, other=0.0).to(tl.float32)
        do_off = b64 * sd_b + n * sd_n + i[:, None] * sd_h + j[:, None] * sd_w + d[None, :] * sd_d
        dout = tl.load(dout_ptr + do_off, mask=mask, other=0.0).to(tl.float32)
        delta = tl.sum(dout * out, axis=1)  # = sum_t p_t dp_t, the softmax's Jacobian term
        lse = tl.load(lse_ptr + (b64 * heads + n) * height * width + i * width + j, mask=valid, other=0.0)
        k_base = k_ptr + b64 * sk_b + n * sk_n + d[None, :] * sk_d
        v_base = v_ptr + b64 * sv_b + n * sv_n + d[None, :] * sv_d
        g_base = b64 * sg_b + n * sg_n + d[None, :] * sg_d
        r_i, g_i, s_i = _window(i, height, dilation, K)
        r_j, g_j, s_j = _window(j, width, dilation, K)
        # a centred window reads bias cell (ti + K//2, tj + K//2) in slot (ti, tj), whatever the query
        centred = valid & (s_i == g_i - K // 2) & (s_j == g_j - K // 2)

        dq = tl.zeros([TILE_H * TILE_W, BLOCK_D], tl.float32)
        for ti in range(K):
            key_i = r_i + (s_i + ti) * dilation
            bias_i = s_i + ti - g_i + K - 1
            for tj in range(K):
                key_j = r_j + (s_j + tj) * dilation
                bias_j = s_j + tj - g_j + K - 1
                key = tl.load(k_base + key_i[:, None] * sk_h + key_j[:, None] * sk_w, mask=mask, other=0.0)
                key = key.to(tl.float32)
                logit = tl.sum(q * key, axis=1)
                if HAS_RPB:
                    bias = rpb_ptr + n * sr_n + bias_i * sr_h + bias_j * sr_w
                    logit += tl.load(bias, mask=valid, other=0.0).to(tl.float32)
                p = tl.where(valid, tl.exp(logit - lse), 0.0)
                value = tl.load(v_base + key_i[:, None] * sv_h + key_j[:, None] * sv_w, mask=mask, other=0.0)
                dlogit = p * (tl.sum(dout * value.to(tl.float32), axis=1) - delta)
                dq += dlogit[:, None] * key
                grad_off = g_base + key_i[:, None] * sg_h + key_j[:, None] * sg_w
                tl.atomic_add(dk_ptr + grad_off, dlogit[:, None] * q, mask=mask)  # q carries the scale
                tl.atomic_add(dv_ptr + grad_off, p[:, None] * dout, mask=mask)
                if RPB_GRAD:
                    cell = drpb_ptr + n * sr_n
                    inner = tl.sum(tl.where(centred, dlogit, 0.0), axis=0)
                    tl.atomic_add(cell + (ti + K // 2) * sr_h + (tj + K // 2) * sr_w, inner)
                    tl.atomic_add(cell + bias_i * sr_h + bias_j * sr_w, dlogit, mask=valid & ~centred)

        dq_off = g_base + i[:, None] * sg_h + j[:, None] * sg_w
        tl.store(dq_ptr + dq_off, (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask)

    def _launch_shape(q: torch.Tensor) -> tuple[tuple[int], dict]:
        batch, height, width, heads, head_dim = q.shape
        block_d = triton.next_power_of_2(head_dim)
        tile_h, tile_w = _tile(block_d)
        grid = (triton.cdiv(height, tile_h) * triton.cdiv(width, tile_w) * batch * heads,)  # 1-D: no 65535 cap
        return grid, {"TILE_H": tile_h, "TILE_W": tile_w, "BLOCK_D": block_d, "num_warps": 4}

    def _rpb_args(rpb: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """A pointer and strides for the bias; q stands in (never read) when there is none."""
        return (q, (0, 0, 0)) if rpb is None else (rpb, rpb.stride())

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
        """Output ``(B, H, W, heads, d)`` in q's dtype and float32 logsumexp ``(B, heads, H, W)``."""
        batch, height, width, heads, head_dim = q.shape
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty((batch, heads, height, width), dtype=torch.float32, device=q.device)
        rpb_t, rpb_strides = _rpb_args(rpb, q)
        grid, meta = _launch_shape(q)
        _na2d_fwd_kernel[grid](
            q, k, v, rpb_t, out, lse,
            height, width, heads, head_dim, dilation, scale,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *rpb_strides,
            K=kernel_size, HAS_RPB=rpb is not None, **meta,
        )  # fmt: skip
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
        _, height, width, heads, head_dim = q.shape
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        dk = torch.zeros(q.shape, dtype=torch.float32, device=q.device)  # atomic targets: float32, zeroed
        dv = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        rpb_grad = rpb_grad and rpb is not None
        rpb = None if rpb is None else rpb.contiguous()  # the kernel indexes rpb and drpb with one set of strides
        drpb = torch.zeros(rpb.shape if rpb_grad else 0, dtype=torch.float32, device=q.device)
        rpb_t, rpb_strides = _rpb_args(rpb, q)
        grid, meta = _launch_shape(q)
        _na2d_bwd_kernel[grid](
            q, k, v, rpb_t, out, lse, dout,
            dq, dk, dv, drpb if rpb_grad else dk,
            height, width, heads, head_dim, dilation, scale,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *dout.stride(), *dk.stride(), *rpb_strides,
            K=kernel_size, HAS_RPB=rpb is not None, RPB_GRAD=rpb_grad, **meta,
        )  # fmt: skip
        drpb = drpb.to(rpb.dtype) if rpb_grad else drpb
        return dq, dk.to(k.dtype), dv.to(v.dtype), drpb

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
    """Neighborhood attention on ``(B, H, W, heads, d)`` tensors with the fused Triton kernels.

    Same signature and result as :func:`~attnzoo.kernels.torch_backend.na2d_torch`; ``attn_drop`` must
    be 0 (dropout on the weights is not fused; :func:`_unsupported` routes such calls away).
    """
    if attn_drop > 0.0:
        raise ValueError("the triton na2d backend does not fuse attention dropout; use the torch backend")
    return _forward(q, k, v, rpb, kernel_size, dilation, float(scale))[0]


def _unavailable() -> str | None:
    return _TRITON_MISSING


def _unsupported(q, k, v, attn_drop=0.0, **_) -> str | None:
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
    for name, t in (("q", q), ("k", k), ("v", v)):
        if sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:], strict=True)) >= 2**31:
            return f"one batch element of {name} spans 2**31 elements or more (the kernels index within it in int32)"
    return None


register("na2d", "triton", na2d_triton, unavailable=_unavailable, unsupported=_unsupported)
