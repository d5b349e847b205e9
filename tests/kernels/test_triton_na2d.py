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
from tests.kernels.na2d_compare import CASES, DEVICE, assert_matches_torch, make_inputs, run
from tests.kernels.reference import LargestTensor

if triton_na2d._unavailable() is not None:
    pytest.skip(triton_na2d._unavailable(), allow_module_level=True)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    "shape,kernel_size,dilation,with_rpb,scale",
    CASES
    + [
        ((1, 10, 13, 2, 24), 3, 3, True, None),  # head_dim below its power-of-two block
        ((1, 9, 8, 1, 64), 5, 1, True, None),
        ((1, 8, 9, 1, 128), 3, 1, True, None),  # widest head: 8 warps
        ((1, 10, 9, 1, 100), 3, 1, False, None),  # wide head below its power-of-two block
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


@pytest.mark.quick
def test_channels_last_permuted_inputs():
    """(B, heads, H, W, d) tensors permuted to the (B, H, W, heads, d) view: no stride is the contiguous one."""
    gen = torch.Generator(DEVICE).manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 12, 16, generator=gen, device=DEVICE).permute(0, 2, 3, 1, 4) for _ in range(3))
    grad = torch.randn(1, 9, 12, 2, 16, generator=gen, device=DEVICE)
    rpb = torch.randn(2, 9, 9, generator=gen, device=DEVICE)
    assert_matches_torch(q, k, v, rpb, grad, 5, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,kernel_size,dilation", [((1, 7, 9, 2, 16), 3, 1), ((1, 15, 14, 2, 32), 5, 2)])
def test_half_precision_against_float32_reference(shape, kernel_size, dilation, dtype):
    q, k, v, rpb, grad = make_inputs(shape, kernel_size, seed=4)
    assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, dtype=dtype)


def test_gradients_are_deterministic_without_bias_and_refused_with_it_in_deterministic_mode():
    """dq, dk, dv are stored once by their owner (no atomics); only drpb adds partial sums atomically."""
    q, k, v, rpb, grad = make_inputs((1, 8, 9, 1, 16), 3, seed=5)
    first, second = (run("triton", q, k, v, None, grad, 3, 1) for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    torch.use_deterministic_algorithms(True)
    try:
        run("triton", q, k, v, None, grad, 3, 1)  # allowed: no atomics
        with pytest.raises(BackendError, match="bias gradient adds per-program partial sums with atomics"):
            run("triton", q, k, v, rpb, grad, 3, 1)
    finally:
        torch.use_deterministic_algorithms(False)


def test_empty_batch():
    q, k, v, rpb, grad = make_inputs((0, 7, 9, 2, 16), 3, seed=3)
    got = run("triton", q, k, v, rpb, grad, 3, 1)
    assert got[0].shape == q.shape and float(got[4].abs().sum()) == 0.0


def test_tile_config_covers_the_halo_in_one_block_row():
    for kernel_size in (3, 5, 7, 9, 11, 13):
        for head_dim in (16, 24, 32, 64, 128):
            config = triton_na2d.tile_config(head_dim, kernel_size)
            assert config.COLS >= config.TILE_W + kernel_size - 1
            assert config.BLOCK_D >= head_dim and config.ROWS * config.COLS >= 16  # tl.dot needs 16
            assert config.TILE_H * config.TILE_W >= 16


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
    wide = torch.zeros(1, 15, 15, 1, 16, device=DEVICE)
    with pytest.raises(BackendError, match=r"kernel_size must be at most 13, got 15"):
        na2d(wide, wide, wide, 15, backend="triton")


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
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "shape,kernel_size,dilation",
    [
        ((2, 56, 56, 2, 32), 7, 1),
        ((2, 56, 56, 4, 64), 7, 2),
        ((2, 28, 28, 8, 64), 7, 4),
        ((2, 14, 14, 16, 32), 7, 2),
        ((1, 33, 47, 2, 128), 13, 1),
        ((1, 40, 30, 3, 16), 11, 2),
    ],
)
def test_gpu_half_precision_against_float32_torch(shape, kernel_size, dilation, dtype):
    q, k, v, rpb, grad = make_inputs(shape, kernel_size, device="cuda", seed=dilation)
    assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, dtype=dtype)


@pytest.mark.gpu
@cuda
def test_gpu_compile_fullgraph():
    q, k, v, rpb, grad = make_inputs((2, 28, 28, 4, 32), 7, device="cuda", seed=9)
    compiled_matches_eager(q, k, v, rpb, grad, 7, 2, backend="inductor", tol=1e-5)  # drpb atomics: order varies
