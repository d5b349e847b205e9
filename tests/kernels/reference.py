"""Brute-force oracles for the kernel tests, written independently of the library code.

Neighborhoods are defined here as "the kernel_size nearest positions with the query's residue
modulo dilation" (one window per axis), found by sorting distances in plain Python; attention is
dense softmax over the whole map with an explicit -inf mask. Only for tiny shapes.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def nearest_same_residue(length: int, kernel_size: int, dilation: int) -> list[list[int]]:
    """Per query position, its kernel_size nearest positions of equal residue (sorted ascending)."""
    windows = []
    for i in range(length):
        same = [p for p in range(length) if p % dilation == i % dilation]
        nearest = sorted(same, key=lambda p: abs(p - i))[:kernel_size]
        windows.append(sorted(nearest))
    return windows


def dense_na2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None):
    """Neighborhood attention as full attention over H*W keys with a mask (+ NAT bias)."""
    batch, height, width, heads, head_dim = q.shape
    scale = head_dim**-0.5 if scale is None else scale
    rows = nearest_same_residue(height, kernel_size, dilation)
    cols = nearest_same_residue(width, kernel_size, dilation)
    n = height * width
    query, key, bias_row, bias_col = [], [], [], []
    for qi in range(height):
        for qj in range(width):
            for ki in rows[qi]:
                for kj in cols[qj]:
                    query.append(qi * width + qj)
                    key.append(ki * width + kj)
                    bias_row.append((ki - qi) // dilation + kernel_size - 1)
                    bias_col.append((kj - qj) // dilation + kernel_size - 1)
    bias = torch.full((heads, n, n), float("-inf"), dtype=q.dtype)
    bias[:, query, key] = 0.0 if rpb is None else rpb[:, bias_row, bias_col].to(q.dtype)
    qf, kf, vf = (t.reshape(batch, n, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    attn = (qf @ kf.transpose(-1, -2) * scale + bias).softmax(-1)
    return (attn @ vf).transpose(1, 2).reshape(batch, height, width, heads, head_dim)


def dense_gather_attention(q, k, v, index, scale=None):
    """Each query's listed keys as a dense mask; repeated indices count as repeated keys."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    counts = torch.zeros(*index.shape[:3], k.shape[2], dtype=q.dtype)
    counts.scatter_add_(-1, index, torch.ones(index.shape, dtype=q.dtype))
    logits = q @ k.transpose(-1, -2) * scale + counts.log()  # log(count) repeats a key count times
    return logits.softmax(-1) @ v


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces, forward and backward (``floating_only``: float tensors only,
    which leaves out the Triton interpreter's byte copies of kernel arguments)."""

    def __init__(self, floating_only: bool = False):
        super().__init__()
        self.floating_only = floating_only
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or not self.floating_only):
                self.numel = max(self.numel, t.numel())
        return out
