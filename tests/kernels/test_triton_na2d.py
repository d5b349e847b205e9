"""The fused Triton na2d backend against the torch reference: values and gradients of q, k, v and rpb.

The unmarked tests use small ragged maps on ``DEVICE``: CUDA when there is one, else the CPU under
Triton's interpreter (``tests/conftest.py`` sets it), which is slow. The ``gpu`` tests repeat the
comparison at NAT/DiNAT sizes.
"""

import pytest
import torch

from attnzoo.kernels import (
    BackendError,
    _dispatch,
    na2d,
    triton_na2d,  # noqa: E402
)
from attnzoo.kernels.torch_backend import na2d_torch
from tests.kernels.reference import LargestTensor

if triton_na2d._unavailable() is not None:
    pytest.skip(triton_na2d._unavailable(), allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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


def assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, scale=None, dtype=None, tol=1e-4):
    """Triton in ``dtype`` against torch in float32 on the same inputs; half tolerances scale with the values."""
    got = run("triton", q, k, v, rpb, grad, kernel_size, dilation, scale, dtype)
    want = run("torch", q, k, v, rpb, grad, kernel_size, dilation, scale)
    names = ["out", "dq", "dk", "dv", "drpb"]
    for name, g, w in zip(names, got, want, strict=False):
        assert g.dtype == (w.dtype if name == "drpb" else dtype or w.dtype), name
        atol = tol if dtype in (None, torch.float32) else tol * float(w.detach().abs().max())
        torch.testing.assert_close(g.float(), w, atol=atol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "shape,kernel_size,dilation,with_rpb,scale",
    [
        ((1, 7, 9, 2, 16), 3, 1, True, None),
        ((2, 10, 13, 1, 16), 5, 2, False, None),
        ((1, 15, 8, 2, 16), 3, 2, True, None),
        ((1, 9, 10, 1, 16), 3, 3, True, 0.3),
        ((1, 7, 9, 1, 16), 7, 1, True, None),  # the window spans the whole height
        ((1, 15, 14, 1, 16), 7, 2, False, 1.7),
        ((1, 8, 11, 2, 32), 5, 1, True, None),
        ((1, 10, 13, 2, 24), 3, 3, True, None),  # head_dim below its power-of-two block
    ],
)
def test_matches_torch_in_float32(shape, kernel_size, dilation, with_rpb, scale):
    q, k, v, rpb, grad = make_inputs(shape, kernel_size, with_rpb, seed=sum(shape) + kernel_size)
    assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, scale)


def test_strided_inputs_float64_bias_and_expanded_gradient():
    """q, k, v as views of a fused projection, a float64 bias without grad, and out.sum()'s zero-stride grad."""
    gen = torch.Generator(DEVICE).manual_seed(1)
    x = torch.randn(2, 8, 11, 3, 2, 16, generator=gen, device=DEVICE, requires_grad=True)
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64, device=DEVICE)
    grads = []
    for backend in ("triton", "torch"):
        out = na2d(*x.unbind(3), 3, 2, rpb=rpb, backend=backend)
        (grad,) = torch.autograd.grad(out.sum(), x)
        grads.append((out, grad))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_in_dtype_and_close(dtype):
    q, k, v, rpb, grad = make_inputs((1, 7, 9, 2, 16), 3, seed=4)
    assert_matches_torch(q, k, v, rpb, grad, 3, 1, dtype=dtype, tol=2e-2)


def compiled_matches_eager(q, k, v, rpb, grad, kernel_size, dilation, backend, tol):
    """torch.compile(fullgraph=True) captures the op and its autograd; results equal eager's."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v, rpb)]
    compiled = torch.compile(
        lambda *t: na2d(*t[:3], kernel_size, dilation, rpb=t[3], backend="triton"), fullgraph=True, backend=backend
    )
    out = compiled(*leaves)
    got = [out, *torch.autograd.grad(out, leaves, grad)]
    want = run("triton", q, k, v, rpb, grad, kernel_size, dilation)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=tol, rtol=tol)


def test_compile_fullgraph_forward_and_backward():
    q, k, v, rpb, grad = make_inputs((1, 7, 8, 2, 16), 3, seed=6)
    compiled_matches_eager(q, k, v, rpb, grad, 3, 2, backend="aot_eager", tol=1e-6)


def test_no_tensor_grows_with_the_neighbourhood():
    """Nothing of size queries x k*k is allocated, forward or backward: the largest tensor is q-sized."""
    q, k, v, rpb, grad = make_inputs((1, 8, 9, 1, 16), 7, seed=8)
    with LargestTensor() as mode:
        run("triton", q, k, v, rpb, grad, 7, 1)
    assert mode.numel == q.numel()


def test_refuses_dropout_float64_and_other_head_dims_when_forced():
    q, k, v, _, _ = make_inputs((1, 6, 6, 1, 16), 3)
    with pytest.raises(BackendError, match="backend 'triton' does not support .*attention dropout is not fused"):
        na2d(q, k, v, 3, attn_drop=0.1, backend="triton")
    with pytest.raises(BackendError, match=r"dtype torch.float64 is not supported"):
        na2d(q.double(), k.double(), v.double(), 3, backend="triton")
    small = torch.zeros(1, 6, 6, 1, 8, device=DEVICE)
    with pytest.raises(BackendError, match=r"head_dim must lie in \[16, 128\], got 8"):
        na2d(small, small, small, 3, backend="triton")


def test_cpu_needs_the_interpreter(monkeypatch):
    q, k, v, _, _ = make_inputs((1, 6, 6, 1, 16), 3, device="cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="CPU tensors need Triton's interpreter"):
        na2d(q, k, v, 3, backend="triton")


def test_auto_on_cpu_still_uses_torch():
    q, k, v, rpb, _ = make_inputs((1, 6, 6, 1, 16), 3, device="cpu")
    call = dict(q=q, k=k, v=v, kernel_size=3, dilation=1, rpb=rpb, attn_drop=0.0)
    assert _dispatch.resolve("na2d", "auto", q.device, **call) is na2d_torch
    q, k, v, rpb, _ = make_inputs((1, 6, 6, 1, 16), 3)
    call.update(q=q, k=k, v=v, rpb=rpb)
    assert _dispatch.resolve("na2d", "triton", q.device, **call) is triton_na2d.na2d_triton


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "shape,dilation",
    [((2, 56, 56, 2, 32), 1), ((2, 56, 56, 4, 64), 2), ((2, 28, 28, 8, 32), 4), ((1, 28, 28, 4, 64), 1)],
)
@pytest.mark.parametrize("with_rpb", [True, False])
def test_gpu_matches_torch_in_float32(shape, dilation, with_rpb):
    q, k, v, rpb, grad = make_inputs(shape, 7, with_rpb, device="cuda", seed=dilation)
    assert_matches_torch(q, k, v, rpb, grad, 7, dilation)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape,dilation", [((2, 56, 56, 2, 32), 1), ((2, 56, 56, 4, 64), 2), ((2, 28, 28, 8, 64), 4)])
def test_gpu_half_precision_against_float32_torch(shape, dilation, dtype, tol):
    q, k, v, rpb, grad = make_inputs(shape, 7, device="cuda", seed=dilation)
    assert_matches_torch(q, k, v, rpb, grad, 7, dilation, dtype=dtype, tol=tol)


@pytest.mark.gpu
@cuda
def test_gpu_compile_fullgraph():
    q, k, v, rpb, grad = make_inputs((2, 28, 28, 4, 32), 7, device="cuda", seed=9)
    compiled_matches_eager(q, k, v, rpb, grad, 7, 2, backend="inductor", tol=1e-5)  # atomics: summation order varies
