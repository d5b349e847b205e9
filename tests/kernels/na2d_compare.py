"""Comparison of an na2d backend with the torch reference: values and every gradient, shared by the backend tests."""

import torch

from attnzoo.kernels import na2d

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


CASES = [
    ((1, 7, 9, 2, 16), 3, 1, True, None),
    ((2, 10, 13, 1, 16), 5, 2, False, None),
    ((1, 15, 8, 2, 16), 3, 2, True, None),
    ((1, 9, 10, 1, 16), 3, 3, True, 0.3),
    ((1, 7, 9, 1, 16), 7, 1, True, None),  # the window spans the whole height
    ((1, 15, 14, 1, 16), 7, 2, False, 1.7),
    ((1, 8, 11, 2, 32), 5, 1, True, None),
    ((1, 19, 21, 1, 16), 7, 1, True, None),  # interior tiles and ragged last tiles in both axes
    ((1, 9, 11, 1, 16), 9, 1, True, None),
    ((1, 14, 13, 1, 16), 13, 1, True, None),  # k=13: bias table 25x25, halo wider than one 16-key block
    ((1, 13, 17, 1, 16), 3, 4, True, None),  # dilation that divides neither side
]
"""(shape, kernel_size, dilation, with_rpb, scale) every na2d backend is compared with the reference at."""


def make_inputs(shape, kernel_size, with_rpb=True, device=DEVICE, seed=0):
    """float32 q, k, v, an upstream gradient and (optionally) a bias, all from one seed."""
    gen = torch.Generator(device).manual_seed(seed)
    q, k, v, grad = (torch.randn(shape, generator=gen, device=device) for _ in range(4))
    heads, side = shape[3], 2 * kernel_size - 1
    rpb = torch.randn(heads, side, side, generator=gen, device=device) if with_rpb else None
    return q, k, v, rpb, grad


def run(backend, q, k, v, rpb, grad, kernel_size, dilation, scale=None, dtype=None):
    """Output and gradients of (q, k, v[, rpb]); q, k, v are cast to ``dtype`` first (rpb stays)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in (q, k, v)]
    if rpb is not None:
        leaves.append(rpb.detach().clone().requires_grad_())
    out = na2d(
        *leaves[:3], kernel_size, dilation, rpb=leaves[3] if rpb is not None else None, scale=scale, backend=backend
    )
    return [out, *torch.autograd.grad(out, leaves, grad.to(out.dtype))]


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}

HALF_TOLERANCE_UNITS = 4
"""Half-precision tolerance, in units of the dtype's unit roundoff u times the largest reference value.

The inputs are rounded to the half dtype before both backends see them, so the difference is the
kernels' own rounding: per result, at most three roundings of an operand feeding an fp32-accumulated
sum (the probabilities or dS cast for the second GEMM, ``delta`` from the stored output, the stored
result), each within u of the sum's magnitude, plus one u for cancellation. Measured under the
interpreter: at most 2.7 u (bf16) and 1.3 u (fp16) over the cases below.
"""


def assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, scale=None, dtype=None, backend="triton"):
    """``backend`` (in ``dtype``) against torch in float32 on the same values: fp32 within 1e-4, half within 4 u."""
    if dtype in UNIT_ROUNDOFF:  # round once, so both backends see the same input values
        q, k, v, grad = (t.to(dtype).float() for t in (q, k, v, grad))
    got = run(backend, q, k, v, rpb, grad, kernel_size, dilation, scale, dtype)
    want = run("torch", q, k, v, rpb, grad, kernel_size, dilation, scale)
    names = ["out", "dq", "dk", "dv", "drpb"]
    for name, g, w in zip(names, got, want, strict=False):
        assert g.dtype == (w.dtype if name == "drpb" else dtype or w.dtype), name
        if dtype in UNIT_ROUNDOFF:
            atol, rtol = HALF_TOLERANCE_UNITS * UNIT_ROUNDOFF[dtype] * float(w.detach().abs().max()), 0.0
        else:
            atol, rtol = 1e-4, 1e-4
        torch.testing.assert_close(g.float(), w, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
