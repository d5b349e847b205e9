"""The exact pure-PyTorch backend: the reference every other backend is tested against.

Both ops gather each query's keys explicitly, so memory is O(queries x keys-per-query x head_dim)
and never O(queries x all keys). They run on any device, support autograd through plain indexing,
and trace with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

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


def na2d_torch(q, k, v, kernel_size: int, dilation: int, rpb, scale: float, attn_drop: float = 0.0) -> torch.Tensor:
    """Neighborhood attention on ``(B, H, W, heads, d)`` tensors by gathering each k x k window."""
    _, height, width, _, _ = q.shape
    rows, row_bias = neighborhood_indices(height, kernel_size, dilation, q.device)
    cols, col_bias = neighborhood_indices(width, kernel_size, dilation, q.device)
    row_index = rows[:, None, :, None]  # (H, 1, K, 1)
    col_index = cols[None, :, None, :]  # (1, W, 1, K)

    # heads first so that the per-query products below are batched matmuls without copies
    q = q.permute(0, 3, 1, 2, 4)  # (B, h, H, W, d)
    k_windows = k.permute(0, 3, 1, 2, 4)[:, :, row_index, col_index].flatten(-3, -2)  # (B, h, H, W, K*K, d)
    v_windows = v.permute(0, 3, 1, 2, 4)[:, :, row_index, col_index].flatten(-3, -2)

    logits = (q.unsqueeze(-2) * scale) @ k_windows.transpose(-1, -2)  # (B, h, H, W, 1, K*K)
    logits = logits.squeeze(-2).to(_softmax_dtype(q.dtype))
    if rpb is not None:
        bias = rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]]  # (h, H, W, K, K)
        logits = logits + bias.flatten(-2).to(logits.dtype)
    attn = logits.softmax(dim=-1).to(v.dtype)
    if attn_drop > 0.0:
        attn = torch.nn.functional.dropout(attn, attn_drop)
    out = (attn.unsqueeze(-2) @ v_windows).squeeze(-2)  # (B, h, H, W, d)
    return out.permute(0, 2, 3, 1, 4)


def gather_attention_torch(q, k, v, index, scale: float) -> torch.Tensor:
    """Attention of each query over the keys ``index`` lists, by gathering them."""
    batch, heads, n_queries, keys_per_query = index.shape
    flat = index.reshape(batch, heads, n_queries * keys_per_query, 1)
    k_sel = k.gather(2, flat.expand(-1, -1, -1, k.shape[-1])).view(batch, heads, n_queries, keys_per_query, -1)
    v_sel = v.gather(2, flat.expand(-1, -1, -1, v.shape[-1])).view(batch, heads, n_queries, keys_per_query, -1)
    logits = ((q.unsqueeze(-2) * scale) @ k_sel.transpose(-1, -2)).squeeze(-2)  # (B, h, Nq, K)
    attn = logits.to(_softmax_dtype(q.dtype)).softmax(dim=-1).to(v.dtype)
    return (attn.unsqueeze(-2) @ v_sel).squeeze(-2)


register("na2d", "torch", na2d_torch)
register("gather_attention", "torch", gather_attention_torch)
