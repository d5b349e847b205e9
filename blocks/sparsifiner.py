"""Sparsifiner: instance-dependent sparse attention chosen by a low-rank connectivity predictor.

Wei et al., "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
CVPR 2023 (arXiv 2303.13755). Authors' code: lim142857/Sparsifiner, ``src/models/sparsifiner.py``
(``MaskPredictor``, ``Attention``). Each query keeps the ``ceil(keep_ratio * N)`` keys the predictor scores
highest. The authors mask a dense softmax with ``-inf``; here the kept keys go to
:func:`attnzoo.kernels.gather_attention`: the same softmax, whose backward keeps only q, k, v, the index, the
output and its logsumexp (the torch backend computes it from chunked dense scores at this K = N/4, by its cost
rule). The predictor runs without autograd unless its aux is asked for: only its integer top-k is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import _assert, trunc_normal_
from torch import nn

from attnzoo.kernels import gather_attention
from attnzoo.kernels._checks import check_dim_heads, check_fraction, check_optional_positive_real, check_positive_int

from .record import AttentionRecord, QueryMap, RecordsAttention, scatter_to_grid

_SPARSE_IMPLS = ("gather", "masked")


@dataclass
class SparsifinerRecord(AttentionRecord):
    """``N = P + H*W`` tokens, the first ``num_prefix_tokens`` ``P`` of them prefix (cls) tokens.

    ``attn`` ``(B, heads, N-P, K)``: each patch query's softmax weights over its kept keys ``index``
    ``(B, heads, N-P, K)`` (token positions in ``[0, N)``; in dense mode ``K = N`` and ``index`` lists every key).
    ``prefix_attn`` ``(B, heads, P, N)``: the prefix queries' dense weights. ``v`` ``(B, heads, N, d)``.
    ``map_size`` is ``None`` when the patch grid is unknown (then there is nothing to draw).
    """

    map_size: tuple[int, int] | None
    num_prefix_tokens: int
    dense: bool
    attn: torch.Tensor
    index: torch.Tensor
    prefix_attn: torch.Tensor
    v: torch.Tensor
    kind: str = "sparsifiner"

    @property
    def batch_size(self) -> int:
        return self.attn.shape[0]

    def query_maps(self, row: int, col: int, batch: int = 0) -> list[QueryMap]:
        """The patch query's kept keys' weights over the patch grid; the prefix keys' share goes in the title."""
        if self.map_size is None:
            raise ValueError("this record has no patch grid (a token sequence given without grid_size): no maps")
        self._check_query(row, col, batch)
        prefix = self.num_prefix_tokens
        query = row * self.map_size[1] + col
        weights, keys = self.attn[batch, :, query], self.index[batch, :, query]  # (heads, K)
        on_patch = keys >= prefix
        grid = scatter_to_grid(weights * on_patch, (keys - prefix).clamp(min=0), self.map_size).mean(0)
        n_keys = prefix + self.map_size[0] * self.map_size[1]
        title = f"kept {keys.shape[-1]} of {n_keys} keys"
        if prefix:
            share = (weights * ~on_patch).sum(-1).mean().item()
            title += f" ({'cls' if prefix == 1 else 'prefix'} {share:.2f})"
        return [QueryMap(title, grid, marker=(row, col))]


def _autocast_state(device: torch.device) -> tuple[str, torch.dtype, bool]:
    """The autocast setting in force for ``device``, to compute a deferred tensor as it would have been here."""
    device_type = "cpu" if device.type == "meta" else device.type
    return device_type, torch.get_autocast_dtype(device_type), torch.is_autocast_enabled(device_type)


class SparsifinerAux(dict):
    """A mixer's ``aux``: ``approx_attn``, ``basis_coef``, ``index``, and ``attn`` computed on first access.

    ``attn`` is the dense (B, heads, N-P, N) softmax, the target of phase 1's reconstruction loss only: building
    it in every forward that records aux (phase 2 records too, and never reads it) would cost an N x N matrix per
    block for nothing. It is detached and computed from the forward's q and k, as if built in the forward.
    """

    target = None

    def __missing__(self, key):
        if key != "attn" or self.target is None:
            raise KeyError(key)
        self["attn"] = attn = self.target()
        self.target = None  # drop the closure's q and k
        return attn


class SparsifinerMaskPredictor(nn.Module):
    """Low-rank approximation of one layer's attention map (the authors' ``MaskPredictor``).

    ``proj_c_q``/``proj_c_k`` shrink the head dimension, ``proj_n`` ``(N, N_r)`` compresses the keys
    (Linformer-style), and ``proj_back_n`` read transposed expands the N_r basis coefficients back to N keys.
    Logits are scaled by ``num_heads ** -0.5``, as the authors wrote it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_tokens: int = 197,
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        share_inout_proj: bool = False,
        basis_threshold: float = 0.02,
        basis_coef_topk: int | None = 8,
        basis_coef_threshold: float = 0.05,
    ):
        super().__init__()
        head_dim = dim // num_heads  # dim, num_heads and num_tokens are checked by SparsifinerAttention
        self.num_heads = num_heads
        self.num_tokens = num_tokens
        reduce_n_factor = check_positive_int("reduce_n_factor", reduce_n_factor)
        reduce_c_factor = check_positive_int("reduce_c_factor", reduce_c_factor)
        self.reduced_c = head_dim // reduce_c_factor
        if self.reduced_c < 1:
            raise ValueError(
                f"reduce_c_factor ({reduce_c_factor}) must not exceed the head dimension dim // num_heads ({head_dim})"
            )
        # The authors' int(N // reduce_n_factor); at least one column so that tiny maps (N < factor) still work.
        self.reduced_n = max(num_tokens // reduce_n_factor, 1)
        self.scale = num_heads**-0.5
        self.basis_threshold = check_fraction("basis_threshold", basis_threshold, 0.0, math.inf)
        if basis_coef_topk is not None:
            basis_coef_topk = check_positive_int("basis_coef_topk", basis_coef_topk)
        self.basis_coef_topk = basis_coef_topk
        self.basis_coef_threshold = check_fraction("basis_coef_threshold", basis_coef_threshold, 0.0, math.inf)

        self.proj_c_q = nn.Linear(head_dim, self.reduced_c)
        self.proj_c_k = nn.Linear(head_dim, self.reduced_c)
        self.proj_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
        trunc_normal_(self.proj_n, std=0.02)
        if share_inout_proj:
            self.proj_back_n = self.proj_n
        else:
            self.proj_back_n = nn.Parameter(torch.zeros(num_tokens, self.reduced_n))
            trunc_normal_(self.proj_back_n, std=0.02)

    def forward(self, q: torch.Tensor, k: torch.Tensor, num_prefix_tokens: int, recon: bool):
        """``(basis_coef (B, h, N-p, N_r), approx_attn (B, h, N-p, N))`` for the non-prefix queries.

        ``recon`` (phase-1 training) uses the raw basis and every coefficient; otherwise the basis is
        ``|proj_back_n|`` thresholded and each coefficient row keeps its top ``basis_coef_topk``.
        """
        # Run in the parameters' dtype even under autocast: the top-k choice of keys should not hinge on
        # bf16 rounding (which turns many low-rank scores into ties).
        dtype = self.proj_c_q.weight.dtype
        # (the meta device, used to count MACs, has no autocast: name the CPU's, which is equally off)
        autocast_device = "cpu" if q.device.type == "meta" else q.device.type
        with torch.autocast(device_type=autocast_device, enabled=False):
            q_c = self.proj_c_q(q[:, :, num_prefix_tokens:].to(dtype))  # (B, h, N-p, c)
            k_c = self.proj_c_k(k.to(dtype))  # (B, h, N, c)
            k_r = k_c.transpose(-1, -2) @ self.proj_n  # (B, h, c, N_r)
            basis_coef = ((q_c @ k_r) * self.scale).softmax(dim=-1)  # (B, h, N-p, N_r)
            basis = self.proj_back_n.t()  # (N_r, N)
            if not recon:
                basis = F.threshold(basis.abs(), self.basis_threshold, 0.0)
                if self.basis_coef_topk is not None:
                    top = min(self.basis_coef_topk, self.reduced_n)  # N_r <= topk keeps every coefficient
                    values, columns = basis_coef.topk(top, dim=-1, sorted=False)
                    basis_coef = torch.zeros_like(basis_coef).scatter(-1, columns, values)
                elif self.basis_coef_threshold > 0:
                    basis_coef = F.threshold(basis_coef, self.basis_coef_threshold, 0.0)
            approx_attn = basis_coef @ basis  # (B, h, N-p, N)
        return basis_coef, approx_attn

    def extra_repr(self) -> str:
        return (
            f"num_tokens={self.num_tokens}, reduced_n={self.reduced_n}, reduced_c={self.reduced_c}, "
            f"basis_threshold={self.basis_threshold}, basis_coef_topk={self.basis_coef_topk}"
        )


class SparsifinerAttention(RecordsAttention, nn.Module):
    """Multi-head attention whose connectivity (top-k keys per query) a low-rank predictor chooses per image.

    Parameter names are the authors' checkpoint keys; defaults are their DeiT-S run
    (``sparsifiner_default_config.yaml``). The predictor is sized by the token count, so the module serves one
    ``num_tokens``. Prefix tokens (DeiT's cls token) attend to every token, like the authors' all-ones cls row.

    Args:
        keep_ratio: fraction of keys each query keeps (the authors' ``attn_keep_rate``), in (0, 1].
        reduce_n_factor, reduce_c_factor: ``N_r = max(num_tokens // reduce_n_factor, 1)``,
            ``c = head_dim // reduce_c_factor``.
        basis_threshold, basis_coef_topk, basis_coef_threshold: sparsification of the predictor outside
            reconstruction training (``basis_coef_topk=None`` switches to the threshold).
        attn_recon: the authors' phase-1 mode: while training, attention is dense. May be toggled on the module.
            The argument also sets ``mask_predictor``'s ``requires_grad`` (the attribute does not): the predictor
            only picks keys (integer top-k), so no loss on the output reaches it; it learns from phase 1's aux
            reconstruction loss alone. :func:`attnzoo.sparsifiner_distillation.set_training_phase` switches both.
        sparse_impl: ``"gather"`` (O(N k d)) or ``"masked"`` (the authors' dense masked softmax, O(N^2)).
        attn_drop: must be 0; the authors never apply attention dropout.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        num_tokens: int = 197,
        keep_ratio: float = 0.25,
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        share_inout_proj: bool = False,
        basis_threshold: float = 0.02,
        basis_coef_topk: int | None = 8,
        basis_coef_threshold: float = 0.05,
        attn_recon: bool = False,
        sparse_impl: str = "gather",
    ):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = check_dim_heads(dim, num_heads)
        self.num_tokens = check_positive_int("num_tokens", num_tokens)
        self.keep_ratio = check_fraction("keep_ratio", keep_ratio, 0.0, 1.0, low_open=True)
        self.attn_budget = min(math.ceil(self.keep_ratio * self.num_tokens), self.num_tokens)
        qk_scale = check_optional_positive_real("qk_scale", qk_scale)
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        if check_fraction("attn_drop", attn_drop, 0.0, 1.0) != 0.0:
            raise ValueError(f"attn_drop must be 0 for Sparsifiner (the authors never apply it), got {attn_drop}")
        if sparse_impl not in _SPARSE_IMPLS:
            raise ValueError(f"sparse_impl must be one of {_SPARSE_IMPLS}, got {sparse_impl!r}")
        self.sparse_impl = sparse_impl
        self.attn_recon = bool(attn_recon)

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mask_predictor = SparsifinerMaskPredictor(
            dim,
            num_heads,
            num_tokens=num_tokens,
            reduce_n_factor=reduce_n_factor,
            reduce_c_factor=reduce_c_factor,
            share_inout_proj=share_inout_proj,
            basis_threshold=basis_threshold,
            basis_coef_topk=basis_coef_topk,
            basis_coef_threshold=basis_coef_threshold,
        )
        # Frozen outside phase 1: a parameter that requires grad but never gets one is what timm's model
        # checks flag as a bug, and optimisers would carry it for nothing.
        self.mask_predictor.requires_grad_(self.attn_recon)

    def forward(
        self,
        x: torch.Tensor,
        grid_size: Sequence[int] | None = None,
        num_prefix_tokens: int = 0,
        return_aux: bool = False,
    ):
        """``(B, H, W, C)`` map, or ``(B, N, C)`` sequence with ``grid_size=(H, W)`` and ``num_prefix_tokens``.

        With ``return_aux``: ``(out, aux)``, a :class:`SparsifinerAux` holding ``approx_attn``, the detached dense
        ``attn`` it is trained to match (computed when first read), ``basis_coef`` and ``index`` (the kept keys)
        for the non-prefix queries.
        """
        if x.dim() == 3 and grid_size is not None:
            _assert(
                0 <= num_prefix_tokens and x.shape[1] == num_prefix_tokens + grid_size[0] * grid_size[1],
                "a token sequence holds num_prefix_tokens + H*W tokens",
            )
            tokens = x
        else:
            msg = "x must be a channels-last map (B, H, W, C), or a token sequence (B, N, C) given with grid_size"
            _assert(x.dim() == 4, msg)
            _assert(num_prefix_tokens == 0, "a (B, H, W, C) map has no prefix tokens")
            _assert(grid_size is None or tuple(grid_size) == x.shape[1:3], "grid_size must be the map's (H, W)")
            tokens = x.flatten(1, 2)
        # the predictor's proj_n/proj_back_n are sized by the token count
        _assert(tokens.shape[1] == self.num_tokens, f"x must hold the module's num_tokens={self.num_tokens} tokens")
        grid = x.shape[1:3] if x.dim() == 4 else grid_size  # for a record's pictures
        out, aux = self._mix(tokens, num_prefix_tokens, return_aux, grid)
        if x.dim() == 4:
            out = out.view_as(x)
        return (out, aux) if return_aux else out

    def _mix(self, x: torch.Tensor, prefix: int, return_aux: bool, grid: Sequence[int] | None = None):
        batch, n_tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, n_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        recon = self.training and self.attn_recon
        dense = recon or self.attn_budget == n_tokens

        aux = None
        index = None
        if return_aux:
            basis_coef, approx_attn = self.mask_predictor(q, k, prefix, recon)
            # Integer indices: no gradient reaches the predictor through the attention output.
            index = approx_attn.detach().topk(self.attn_budget, dim=-1, sorted=False).indices
            aux = SparsifinerAux(approx_attn=approx_attn, basis_coef=basis_coef, index=index)
            aux.target = partial(self._dense_target, q.detach(), k.detach(), prefix, _autocast_state(q.device))
        elif not dense:
            # only the integer top-k leaves the predictor: no autograd graph (nor saved tensors) for it
            with torch.no_grad():
                _, approx_attn = self.mask_predictor(q, k, prefix, recon)
                index = approx_attn.topk(self.attn_budget, dim=-1, sorted=False).indices

        if dense:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        elif self.sparse_impl == "masked":
            keep = torch.zeros(batch, self.num_heads, n_tokens - prefix, n_tokens, dtype=torch.bool, device=x.device)
            keep = keep.scatter(-1, index, True)
            if prefix:
                keep = torch.cat([keep.new_ones(batch, self.num_heads, prefix, n_tokens), keep], dim=2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=self.scale)
        else:
            out = gather_attention(q[:, :, prefix:], k, v, index, scale=self.scale)
            if prefix:  # prefix queries see every token: a (prefix x N) dense attention
                head = F.scaled_dot_product_attention(q[:, :, :prefix], k, v, scale=self.scale)
                out = torch.cat([head, out], dim=2)
        if self.recording:
            self._record(self._attention_record(q, k, v, index if not dense else None, prefix, grid))
        out = out.transpose(1, 2).reshape(batch, n_tokens, channels)
        return self.proj_drop(self.proj(out)), aux

    def _dense_target(self, q, k, prefix: int, autocast: tuple[str, torch.dtype, bool]) -> torch.Tensor:
        """The detached dense attention of the patch queries, which phase 1 trains the predictor to match."""
        device_type, dtype, enabled = autocast
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return ((q[:, :, prefix:] @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)

    def _attention_record(self, q, k, v, index, prefix: int, grid) -> SparsifinerRecord:
        """The weights by explicit softmax (float32, float64 for float64 input); ``index=None``: dense."""
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        q, k = q.detach().to(dtype), k.detach().to(dtype)
        batch, heads, n_tokens, head_dim = k.shape
        dense = index is None
        prefix_attn = ((q[:, :, :prefix] @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
        if dense:
            attn = ((q[:, :, prefix:] @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1)
            index = torch.arange(n_tokens, device=q.device).expand(batch, heads, n_tokens - prefix, n_tokens)
        else:
            flat = index.flatten(2)[..., None].expand(-1, -1, -1, head_dim)
            k_kept = k.gather(2, flat).view(*index.shape, head_dim)
            attn = (torch.einsum("bhnd,bhnkd->bhnk", q[:, :, prefix:], k_kept) * self.scale).softmax(dim=-1)
        grid = None if grid is None else (int(grid[0]), int(grid[1]))
        return SparsifinerRecord(grid, prefix, dense, attn, index, prefix_attn, v.detach())

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_tokens={self.num_tokens}, "
            f"keep_ratio={self.keep_ratio}, attn_budget={self.attn_budget}, sparse_impl={self.sparse_impl!r}"
        )
