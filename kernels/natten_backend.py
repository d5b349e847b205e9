"""The ``natten`` backend of :func:`attnzoo.kernels.na2d`: NATTEN's own kernels, without bias.

NATTEN is the reference implementation of Neighborhood Attention (Hassani et al., "Neighborhood
Attention Transformer", CVPR 2023, arXiv 2204.07143; dilated: "Dilated Neighborhood Attention
Transformer", arXiv 2209.15001). Its ``na2d`` takes the same ``(B, H, W, heads, head_dim)`` layout and
the same window rule as ours, so the call is direct. What it cannot do is declined here, before the
call, so that ``backend="auto"`` falls back to the torch reference instead of failing inside NATTEN:

* relative position bias: NATTEN dropped ``rpb`` in 0.20;
* attention dropout: NATTEN's fused kernels never materialise the weights;
* gradients on the CPU: there NATTEN runs on PyTorch's Flex Attention, which has no CPU backward;
* whatever NATTEN's own backend selection rejects on this device (on the CPU, Flex Attention takes
  float32/float16/bfloat16 and power-of-two head dims from 8 to 512), and ``kernel_size`` 1.

NATTEN is imported on first use: importing it costs about half a second.
"""

from __future__ import annotations

import functools

import torch

from ._dispatch import register

# Device types whose Flex Attention (NATTEN's only backend there) cannot run a backward pass.
_NO_BACKWARD_DEVICES = ("cpu", "mps")


@functools.cache
def _natten():
    """The ``natten`` module, or why it (or the helpers :func:`_natten_refusal` asks) cannot be imported."""
    try:
        import natten
    except ImportError as error:
        return f"natten cannot be imported ({error})"
    try:
        from natten.backends import get_compatible_backends, get_compatible_fmha_backends  # noqa: F401
        from natten.backends.configs.checks import can_run_flex_attention  # noqa: F401
    except ImportError as error:
        version = getattr(natten, "__version__", "?")
        return f"natten {version} lacks the backend-selection helpers used to vet calls before running them ({error})"
    return natten


def na2d_natten(q, k, v, kernel_size: int, dilation: int, rpb, scale: float, attn_drop: float = 0.0) -> torch.Tensor:
    """Same contract as :func:`attnzoo.kernels.torch_backend.na2d_torch`, for calls :func:`unsupported` accepts."""
    natten = _natten()
    if not torch.is_grad_enabled():
        # Flex Attention refuses CPU tensors that require grad even under no_grad; nothing is differentiated here
        q, k, v = q.detach(), k.detach(), v.detach()
    if scale == 0.0:
        # NATTEN reads `scale or head_dim ** -0.5`, so a zero scale must be applied by hand: uniform weights
        q, scale = torch.zeros_like(q), 1.0
    return natten.na2d(q, k, v, kernel_size, dilation=dilation, scale=scale)


def unavailable() -> str | None:
    """Why this backend cannot run in this environment at all (``None`` if it can)."""
    natten = _natten()
    return natten if isinstance(natten, str) else None


def _natten_refusal(q, k, v, kernel_size: int) -> str | None:
    """NATTEN's own answer to "can any of your backends run these tensors?" (``None`` if one can).

    ``natten.na2d`` picks its first compatible backend; when the window covers the whole map it runs
    plain attention (FMHA) on the flattened tokens instead, which has its own compatibility list.
    """
    from natten.backends import get_compatible_backends, get_compatible_fmha_backends
    from natten.backends.configs.checks import can_run_flex_attention

    _, height, width, _, _ = q.shape
    if kernel_size == height and kernel_size == width:
        q, k, v = (t.flatten(1, 2) for t in (q, k, v))
        found = get_compatible_fmha_backends(q, k, v, is_causal=False, is_varlen=False, torch_compile=False)
    else:
        found = get_compatible_backends(q, k, v, torch_compile=False)
    if found:
        return None
    try:  # the last backend NATTEN tries, and the only one without its compiled library, says why not
        can_run_flex_attention(q, k, v, torch_compile=False, raise_error=True)
        detail = ""
    except Exception as error:  # NATTEN raises several types; only the message is wanted
        detail = f" (its Flex Attention backend says: {error})"
    return f"NATTEN has no backend for {q.dtype} {q.device.type} tensors with head_dim {q.shape[-1]}{detail}"


def unsupported(q, k, v, kernel_size: int, rpb=None, attn_drop: float = 0.0, **_) -> str | None:
    """Why NATTEN cannot serve this (already validated) call, as a sentence (``None`` if it can)."""
    if not torch.is_grad_enabled():
        q, k, v = q.detach(), k.detach(), v.detach()  # as na2d_natten will pass them
    if rpb is not None:
        return "NATTEN has no relative position bias since 0.20; call na2d without rpb or use the torch backend"
    if attn_drop > 0.0:
        return "NATTEN's fused kernels have no attention dropout; use attn_drop=0 or the torch backend"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and q.device.type in _NO_BACKWARD_DEVICES:
        return (
            f"NATTEN cannot backpropagate on {q.device.type}: it runs on Flex Attention there, which has no "
            "backward pass; run under torch.no_grad() or use the torch backend"
        )
    if kernel_size < 2:
        return f"NATTEN needs kernel_size >= 2, got {kernel_size}"
    if q.numel() == 0:
        return "NATTEN cannot run on empty tensors (batch 0)"
    return _natten_refusal(q, k, v, kernel_size)


register("na2d", "natten", na2d_natten, unavailable=unavailable, unsupported=unsupported)
