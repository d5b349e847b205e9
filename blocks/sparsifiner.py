"""Sparsifiner: instance-dependent sparse attention chosen by a low-rank connectivity predictor.

Wei, Duke, Jiang, Aarabi, Taylor, Shkurti. "Sparsifiner: Learning Sparse Instance-Dependent Attention for
Efficient Vision Transformers", CVPR 2023 (arXiv 2303.13755). Authors' code: lim142857/Sparsifiner,
``src/models/sparsifiner.py`` (``MaskPredictor``, ``Attention``); losses in ``src/losses.py``.

Per block, a cheap predictor approximates the attention map in low rank, every query keeps the
``ceil(keep_ratio * N)`` keys the approximation scores highest, and full-precision attention runs only
over those keys. The authors compute that with a dense ``-inf``-masked softmax; here the kept keys are
gathered (:func:`attnzoo.kernels.gather_attention`), which gives the same softmax over the same keys with
O(N * k * d) memory. The predictor's own cost is inherent to the method: a rank-N_r approximation
``(N, N_r) @ (N_r, N)`` and a top-k over its ``N x N`` scores.

Training (authors' default recipe, SPEC §7.2): phase 1 trains only ``mask_predictor`` with dense attention
(``attn_recon=True`` in training mode) on ``0.01 * mean over layers of MSE_sum(approx_attn, teacher
attention rows 1..N-1)`` — see :func:`attn_recon_loss`; phase 2 freezes the predictor and trains the
backbone through the sparse attention. The top-k indices carry no gradient, so the predictor learns only
through that loss.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from attnzoo.kernels import gather_attention

from ._common import (
    check_dim_heads,
    check_fraction,
    check_map,
    check_optional_positive_real,
    check_positive_int,
    check_sequence,
)

_SPARSE_IMPLS = ("gather", "masked")


def _check_non_negative_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


class SparsifinerMaskPredictor(nn.Module):
    """Low-rank approximation of one layer's attention map (the authors' ``MaskPredictor``).

    ``proj_c_q``/``proj_c_k`` shrink the head dimension (shared by all heads); ``proj_n`` ``(N, N_r)``
    compresses the keys along the token axis (Linformer-style); the softmax over the N_r compressed
    keys gives basis coefficients, and ``proj_back_n`` ``(N, N_r)``, read transposed, is the basis that
    expands them back to N key columns. Its logits are scaled by ``num_heads ** -0.5``, as the authors
    wrote it (their ``Attention`` never passes ``qk_scale`` down).
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
        head_dim = check_dim_heads(dim, num_heads)
        self.num_heads = num_heads
        self.num_tokens = check_positive_int("num_tokens", num_tokens)
        reduce_n_factor = check_positive_int("reduce_n_factor", reduce_n_factor)
        reduce_c_factor = check_positive_int("reduce_c_factor", reduce_c_factor)
        self.reduced_c = head_dim // reduce_c_factor
        if self.reduced_c < 1:
            raise ValueError(
                f"reduce_c_factor ({reduce_c_factor}) must not exceed the head dimension dim // num_heads ({head_dim})"
            )
        # The authors' int(N // reduce_n_factor); at least one column so that tiny maps (N < factor) still work.
        self.reduced_n = max(self.num_tokens // reduce_n_factor, 1)
        self.scale = num_heads**-0.5
        self.basis_threshold = _check_non_negative_real("basis_threshold", basis_threshold)
        if basis_coef_topk is not None:
            basis_coef_topk = check_positive_int("basis_coef_topk", basis_coef_topk)
        self.basis_coef_topk = basis_coef_topk
        self.basis_coef_threshold = _check_non_negative_real("basis_coef_threshold", basis_coef_threshold)

        self.proj_c_q = nn.Linear(head_dim, self.reduced_c)
        self.proj_c_k = nn.Linear(head_dim, self.reduced_c)
        self.proj_n = nn.Parameter(torch.zeros(self.num_tokens, self.reduced_n))
        trunc_normal_(self.proj_n, std=0.02)
        if share_inout_proj:
            self.proj_back_n = self.proj_n
        else:
            self.proj_back_n = nn.Parameter(torch.zeros(self.num_tokens, self.reduced_n))
            trunc_normal_(self.proj_back_n, std=0.02)

    def forward(self, q: torch.Tensor, k: torch.Tensor, num_prefix_tokens: int, recon: bool):
        """``(basis_coef (B, h, N-p, N_r), approx_attn (B, h, N-p, N))`` for the non-prefix queries.

        ``recon`` (the authors' reconstruction-training mode) uses the raw basis and every coefficient;
        otherwise the basis is ``|proj_back_n|`` with entries ``<= basis_threshold`` zeroed and each row of
        coefficients keeps its ``basis_coef_topk`` largest (or those above ``basis_coef_threshold``).
        """
        # Run in the parameters' dtype even under autocast: the top-k choice of keys should not hinge on
        # bf16 rounding (which turns many low-rank scores into ties).
        dtype = self.proj_c_q.weight.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
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


class SparsifinerAttention(nn.Module):
    """Multi-head attention whose connectivity (top-k keys per query) a low-rank predictor chooses per image.

    Parameter names follow the authors' checkpoints: ``qkv``, ``proj``, ``mask_predictor.proj_c_q``,
    ``mask_predictor.proj_c_k``, ``mask_predictor.proj_n`` ``(N, N_r)``, ``mask_predictor.proj_back_n``
    ``(N, N_r)``. Defaults are the authors' DeiT-S run (``sparsifiner_default_config.yaml``): keep 25% of
    the keys, ``N_r = N // 6``, ``c = d // 2``, basis threshold 0.02, top-8 basis coefficients.

    The predictor is sized by the token count, so the module serves one ``num_tokens``. Prefix tokens
    (DeiT's cls token) are queries that attend to every token, like the authors' all-ones cls row; as keys
    they compete for the top-k like any other token.

    Args:
        keep_ratio: fraction of keys each query keeps (the authors' ``attn_keep_rate``), in (0, 1];
            ``ceil(keep_ratio * num_tokens)`` keys. At 1.0 the attention is dense.
        reduce_n_factor, reduce_c_factor: ``N_r = max(num_tokens // reduce_n_factor, 1)`` (the max only for tiny
            maps, where the authors' N_r would be 0), ``c = head_dim // reduce_c_factor``.
        share_inout_proj: ``proj_back_n`` is ``proj_n`` (one parameter under both names).
        basis_threshold, basis_coef_topk, basis_coef_threshold: sparsification of the predictor outside
            reconstruction training (``basis_coef_topk=None`` switches to the threshold).
        attn_recon: the authors' phase-1 mode; while training, attention is dense and the predictor uses the
            raw basis and all coefficients. Has no effect in eval mode. May be toggled on the module.
        sparse_impl: ``"gather"`` (O(N k d), default) or ``"masked"`` (dense SDPA with a boolean mask, as the
            authors compute it; O(N^2), kept for comparison).
        attn_drop: must be 0 — the authors' forward never applies attention dropout.
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
        check_fraction("proj_drop", proj_drop, 0.0, 1.0)
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

    def forward(
        self,
        x: torch.Tensor,
        grid_size: Sequence[int] | None = None,
        num_prefix_tokens: int = 0,
        return_aux: bool = False,
    ):
        """``(B, H, W, C)`` map, or ``(B, N, C)`` sequence with ``grid_size=(H, W)`` and ``num_prefix_tokens``.

        With ``return_aux`` returns ``(out, aux)``; ``aux`` holds, for the non-prefix queries,
        ``approx_attn`` (the predictor's map, differentiable in its parameters), ``attn`` (the detached
        dense attention probabilities it is trained to match), ``basis_coef`` and ``index`` (the kept keys).
        """
        num_prefix_tokens = check_positive_int("num_prefix_tokens", num_prefix_tokens, minimum=0)
        if isinstance(x, torch.Tensor) and (x.dim() not in (3, 4) or (x.dim() == 3 and grid_size is None)):
            raise ValueError(
                "x must be a channels-last map (B, H, W, C), or a token sequence (B, N, C) given with "
                f"grid_size=(H, W); got shape {tuple(x.shape)}" + (" without grid_size" if x.dim() == 3 else "")
            )
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            check_sequence(x, self.dim, grid_size, num_prefix_tokens)
            tokens = x
        else:
            check_map(x, self.dim)
            if num_prefix_tokens:
                raise ValueError(f"num_prefix_tokens must be 0 for a (B, H, W, C) map, got {num_prefix_tokens}")
            if grid_size is not None and tuple(grid_size) != tuple(x.shape[1:3]):
                raise ValueError(f"grid_size {tuple(grid_size)} does not match the map's (H, W) {tuple(x.shape[1:3])}")
            tokens = x.flatten(1, 2)
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"x has {tokens.shape[1]} tokens but the module was built with num_tokens={self.num_tokens} "
                "(the connectivity predictor's proj_n/proj_back_n are sized by the token count)"
            )
        out, aux = self._mix(tokens, num_prefix_tokens, return_aux)
        if x.dim() == 4:
            out = out.view_as(x)
        return (out, aux) if return_aux else out

    def _mix(self, x: torch.Tensor, prefix: int, return_aux: bool):
        batch, n_tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, n_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        recon = self.training and self.attn_recon
        dense = recon or self.attn_budget == n_tokens

        aux = None
        index = None
        if return_aux or not dense:
            basis_coef, approx_attn = self.mask_predictor(q, k, prefix, recon)
            # Integer indices: no gradient reaches the predictor through the attention output.
            index = approx_attn.detach().topk(self.attn_budget, dim=-1, sorted=False).indices
            if return_aux:
                logits = (q[:, :, prefix:] @ k.transpose(-1, -2)) * self.scale
                target = logits.softmax(dim=-1).detach()
                aux = {"approx_attn": approx_attn, "attn": target, "basis_coef": basis_coef, "index": index}

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
        out = out.transpose(1, 2).reshape(batch, n_tokens, channels)
        return self.proj_drop(self.proj(out)), aux

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, num_tokens={self.num_tokens}, "
            f"keep_ratio={self.keep_ratio}, attn_budget={self.attn_budget}, sparse_impl={self.sparse_impl!r}"
        )


def attn_recon_loss(aux_per_layer: Sequence[dict], weight: float = 0.01) -> torch.Tensor:
    """The authors' predictor loss: ``weight * mean over layers of MSE_sum(approx_attn, attn)``.

    ``aux_per_layer`` holds each block's ``aux``. The authors' target is the frozen dense teacher's
    attention (rows 1..N-1); in their phase 1 the backbone is the teacher's and frozen, so ``aux["attn"]``
    (the block's own dense probabilities) is the same target. Pass teacher maps in ``attn`` otherwise.
    """
    if len(aux_per_layer) == 0:
        raise ValueError("aux_per_layer must hold at least one layer's aux")
    total = sum(F.mse_loss(aux["approx_attn"], aux["attn"], reduction="sum") for aux in aux_per_layer)
    return weight * total / len(aux_per_layer)
