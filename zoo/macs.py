"""Multiply-accumulates of a forward pass, counted the way the papers count them (`attnzoo info`, the arena).

``torch.utils.flop_counter`` counts the matmuls a kernel actually runs. The torch reference of
neighborhood attention runs padded tiles (about (2k-1)^2 keys per query instead of k^2), so for
:class:`~attnzoo.blocks.NeighborhoodAttention2D` the attention products are replaced by their
definition, ``2 * B * heads * H * W * k^2 * head_dim`` MACs (q.k and attn.v), as the NAT/DiNAT
papers count them. Sparsifiner's predictor rebuilds its approximate attention from basis coefficients of which
each query keeps ``basis_coef_topk`` (8): by definition a sparse product, ``B * heads * Nq * N * topk`` MACs, not
the dense ``Nq x N_r`` by ``N_r x N`` product the reference runs with the other coefficients zeroed (phase-1
reconstruction, which keeps every coefficient, is counted dense). ``gather_attention`` is counted on its torch
backend's gather path: each query's listed keys only, as QuadTree and Sparsifiner define it (the backend's cost rule
may run a shape densely, scoring every key and keeping the listed ones, because a GEMM is the faster way on a CPU;
that is an implementation's choice, not the mechanism's cost). Everything else is the counter's own number;
SDPA is counted on the meta device (torch 2.14's counter gives CPU SDPA no formula), so count there.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.blocks.neighborhood import NeighborhoodAttention2D
from attnzoo.blocks.sparsifiner import SparsifinerMaskPredictor
from attnzoo.kernels import torch_backend


@contextlib.contextmanager
def _listed_keys_only():
    """``gather_attention``'s torch backend on its gather path (its dense-scores threshold at zero) while counting."""
    saved = torch_backend.DENSE_KEYS_PER_LISTED
    torch_backend.DENSE_KEYS_PER_LISTED = 0
    try:
        yield
    finally:
        torch_backend.DENSE_KEYS_PER_LISTED = saved


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of ``model(*inputs)`` (no grad; works on the meta device)."""
    intrinsic: dict[str, int] = {}  # module name -> its attention MACs over all calls
    names = {module: name for name, module in model.named_modules()}

    def record(module, args, output):
        batch, height, width, _ = output.shape
        span = module.kernel_size * module.dilation  # small maps are padded before attention
        tokens = max(height, span) * max(width, span)
        macs = 2 * batch * module.num_heads * tokens * module.kernel_size**2 * module.head_dim
        intrinsic[names[module]] = intrinsic.get(names[module], 0) + macs

    sparse_products = [0]  # MACs the predictor's sparse coefficients save against the dense product it runs

    def record_predictor(module, args, output):
        recon = args[3] if len(args) > 3 else False
        if recon or module.basis_coef_topk is None:
            return
        batch, heads, queries, keys = output[1].shape
        kept = min(module.basis_coef_topk, module.reduced_n)
        sparse_products[0] += batch * heads * queries * keys * (module.reduced_n - kept)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, NeighborhoodAttention2D)]
    hooks += [
        m.register_forward_hook(record_predictor) for m in model.modules() if isinstance(m, SparsifinerMaskPredictor)
    ]
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad(), _listed_keys_only():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    total = counter.get_total_flops() // 2 - sparse_products[0]
    for name, macs in intrinsic.items():
        prefix = f"{root}.{name}"
        counted = per_module.get(prefix, 0) - per_module.get(f"{prefix}.qkv", 0) - per_module.get(f"{prefix}.proj", 0)
        total += macs - counted // 2
    return total
