"""The public attention ops: argument checks, then the backend chosen by :mod:`._dispatch`."""

from __future__ import annotations

import torch

from . import flex_na2d, natten_backend, torch_backend, triton_gather, triton_na2d  # noqa: F401  (each registers itself)
from ._checks import (
    check_floating,
    check_fraction,
    check_odd,
    check_positive_int,
    check_same_dtype_device,
    check_scale,
    check_tensor,
)
from ._dispatch import resolve

_NA_LAYOUT = "(B, H, W, heads, head_dim)"


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int,
    dilation: int = 1,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    attn_drop: float = 0.0,
) -> torch.Tensor:
    """2-D (dilated) neighborhood attention, NAT/DiNAT (Hassani et al., CVPR 2023; arXiv 2204.07143, 2209.15001).

    Each query attends to exactly ``kernel_size**2`` keys: per axis, the positions sharing its
    residue modulo ``dilation``, in a window centred on it and shifted inward at the borders
    (NATTEN's semantics). ``rpb`` is NAT's relative position bias ``(heads, 2k-1, 2k-1)``, read at
    ``(key - query) / dilation + k - 1``. ``scale`` defaults to ``head_dim ** -0.5``.

    Args:
        q, k, v: ``(B, H, W, heads, head_dim)``, one dtype and device.
        kernel_size: odd window size k >= 1.
        dilation: step between neighbours, >= 1; ``H`` and ``W`` must be >= ``kernel_size * dilation``.
        rpb: optional ``(heads, 2k-1, 2k-1)`` bias, any floating dtype (cast to the logits').
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"flex"`` or ``"natten"`` (see :func:`use_backend`).
        attn_drop: dropout probability on the attention weights (training only; NAT's ``attn_drop``).

    Returns:
        ``(B, H, W, heads, head_dim)``.
    """
    check_tensor("q", q, 5, _NA_LAYOUT)
    check_tensor("k", k, 5, _NA_LAYOUT)
    check_tensor("v", v, 5, _NA_LAYOUT)
    check_floating("q", q)
    check_same_dtype_device("q", q, k=k, v=v)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have one shape; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    kernel_size = check_odd("kernel_size", kernel_size)
    dilation = check_positive_int("dilation", dilation)
    _, height, width, heads, head_dim = q.shape
    span = kernel_size * dilation
    if height < span or width < span:
        raise ValueError(
            f"na2d needs a feature map of at least kernel_size * dilation = {kernel_size} * {dilation} = {span} "
            f"per side, got H={height}, W={width}; pad the input (the NAT blocks do) or use a smaller kernel/dilation"
        )
    if rpb is not None:
        check_tensor("rpb", rpb, 3, "(heads, 2*kernel_size-1, 2*kernel_size-1)")
        check_floating("rpb", rpb)
        expected = (heads, 2 * kernel_size - 1, 2 * kernel_size - 1)
        if tuple(rpb.shape) != expected:
            raise ValueError(
                f"rpb must have shape (heads, 2*kernel_size-1, 2*kernel_size-1) = {expected}, got {tuple(rpb.shape)}"
            )
        if rpb.device != q.device:
            raise ValueError(f"rpb is on {rpb.device} but q is on {q.device}; they must be on one device")
    scale = check_scale(scale, head_dim)
    attn_drop = check_fraction("attn_drop", attn_drop, 0, 1, high_open=True)
    impl = resolve(
        "na2d",
        backend,
        q.device,
        q=q,
        k=k,
        v=v,
        kernel_size=kernel_size,
        dilation=dilation,
        rpb=rpb,
        attn_drop=attn_drop,
    )
    return impl(q, k, v, kernel_size, dilation, rpb, scale, attn_drop)


def check_index_range(index: torch.Tensor, n_keys: int) -> None:
    """An index outside ``[0, Nk)`` is an error, never a read out of bounds, and checking it never stalls the GPU.

    On the CPU the values are read and a ``ValueError`` names the range. Elsewhere reading them back
    would synchronise the device on every QuadTree/Sparsifiner block, so the check is queued as a
    device-side assertion (``torch._assert_async``): a bad index stops the CUDA stream with the message
    before any kernel after it runs. (The Triton kernels also mask rows outside the range.)
    Graph capture (compile, export, ``torch.jit.trace``) skips it: a traced read would bake one input's values in.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or index.numel() == 0:
        return
    low, high = torch.aminmax(index)
    if index.device.type == "cpu":
        low, high = int(low), int(high)
        if low < 0 or high >= n_keys:
            raise ValueError(f"index values must lie in [0, Nk) = [0, {n_keys}), got values from {low} to {high}")
        return
    torch._assert_async((low >= 0) & (high < n_keys), f"gather_attention: index values must lie in [0, {n_keys})")


def gather_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
    group: int = 1,
) -> torch.Tensor:
    """Attention in which each query sees only the keys it lists (QuadTree's fine levels, Sparsifiner's masks).

    ``out[b, h, i] = softmax_j(scale * q[b, h, i] . k[b, h, index[b, h, i, j]]) @ v[b, h, index[b, h, i, :]]``.
    A repeated index counts as a repeated key. Backward keeps q, k, v, index, the output and the row
    logsumexp, never gathered rows or probabilities (both backends recompute them).

    Args:
        q: ``(B, heads, Nq, head_dim)``.
        k, v: ``(B, heads, Nk, head_dim)`` (``v`` may have its own last dimension).
        index: ``(B, heads, Nq / group, K)`` int64 key positions in ``[0, Nk)``, K >= 1.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` (see :func:`use_backend`).
        group: consecutive queries that share one index row (QuadTree's 4 children of a parent): the torch
            backend gathers each row's keys once for the group; ``index.repeat_interleave(group, 2)`` is the same.

    Returns:
        ``(B, heads, Nq, v.shape[-1])``.
    """
    check_tensor("q", q, 4, "(B, heads, Nq, head_dim)")
    check_tensor("k", k, 4, "(B, heads, Nk, head_dim)")
    check_tensor("v", v, 4, "(B, heads, Nk, head_dim)")
    check_tensor("index", index, 4, "(B, heads, Nq, K)")
    check_floating("q", q)
    check_same_dtype_device("q", q, k=k, v=v)
    if k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, heads and head_dim")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v {tuple(v.shape)} must match k {tuple(k.shape)} in batch, heads and Nk")
    if index.dtype != torch.int64:
        raise TypeError(f"index must have dtype torch.int64, got {index.dtype}")
    if index.device != q.device:
        raise ValueError(f"index is on {index.device} but q is on {q.device}; they must be on one device")
    group = check_positive_int("group", group)
    rows = q.shape[2] // group
    if index.shape[:2] != q.shape[:2] or index.shape[2] * group != q.shape[2] or index.shape[3] < 1:
        layout = "(B, heads, Nq, K>=1)" if group == 1 else f"(B, heads, Nq / group, K>=1) with group={group}"
        raise ValueError(f"index must have shape {layout} = {(*q.shape[:2], rows)} + (K,), got {tuple(index.shape)}")
    check_index_range(index, k.shape[2])
    scale = check_scale(scale, q.shape[-1])
    impl = resolve("gather_attention", backend, q.device, q=q, k=k, v=v, index=index)
    if getattr(impl, "groups_queries", False):
        return impl(q, k, v, index, scale, group=group)
    if group > 1:  # a backend without groups reads one row per query
        index = index.repeat_interleave(group, dim=2)
    return impl(q, k, v, index, scale)
