"""The natten backend of na2d: NATTEN's values against the torch backend, and every refusal.

A refused call must raise BackendError with the reason when the backend is forced, and must leave
``backend="auto"`` on the torch result. Without a GPU, NATTEN runs on Flex Attention, forward only.
"""

import dataclasses
import importlib

import pytest
import torch

from attnzoo.kernels import BackendError, _dispatch, na2d


@pytest.fixture(scope="module", autouse=True)
def natten_backend():
    """The backend module (``kernels/ops.py`` imports and so registers it); skip where it cannot run."""
    module = importlib.import_module("attnzoo.kernels.natten_backend")
    reason = module.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return module


@pytest.fixture
def natten_first(monkeypatch):
    """``auto`` tries natten before torch on the CPU too, so that its refusals are exercised."""
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("natten", "torch"))


def qkv(shape, dtype=torch.float32, seed=0, grad=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize(
    "shape,kernel_size,dilation",
    [
        ((2, 9, 11, 2, 16), 3, 1),
        ((1, 14, 14, 4, 32), 7, 2),
        ((1, 20, 17, 2, 8), 5, 3),
        ((2, 15, 12, 3, 64), 3, 4),
        ((1, 7, 7, 2, 8), 7, 1),  # the window is the whole map: NATTEN runs plain attention instead
    ],
)
def test_matches_torch_backend(shape, kernel_size, dilation):
    q, k, v = qkv(shape, seed=kernel_size * 10 + dilation)
    expected = na2d(q, k, v, kernel_size, dilation, backend="torch")
    torch.testing.assert_close(na2d(q, k, v, kernel_size, dilation, backend="natten"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.3, -2.0, 0.0])
def test_custom_scale(scale):
    q, k, v = qkv((1, 9, 10, 2, 16), seed=4)
    expected = na2d(q, k, v, 3, 2, scale=scale, backend="torch")
    torch.testing.assert_close(na2d(q, k, v, 3, 2, scale=scale, backend="natten"), expected, atol=1e-5, rtol=1e-5)


def test_heads_first_tensors_seen_through_a_permute():
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in qkv((1, 2, 10, 11, 16), seed=6))
    assert not q.is_contiguous()
    torch.testing.assert_close(na2d(q, k, v, 5, backend="natten"), na2d(q, k, v, 5, backend="torch"))


def test_tensors_that_require_grad_run_under_no_grad():
    q, k, v = qkv((1, 8, 8, 2, 16), grad=True)
    with torch.no_grad():
        out = na2d(q, k, v, 3, backend="natten")
    assert not out.requires_grad
    torch.testing.assert_close(out, na2d(q, k, v, 3, backend="torch").detach(), atol=1e-5, rtol=1e-5)


def refused_calls():
    """(id, call kwargs, reason pattern): calls NATTEN cannot serve on the CPU."""
    q, k, v = qkv((1, 8, 8, 2, 16))
    grad = dict(zip("qkv", qkv((1, 8, 8, 2, 16), grad=True), strict=True))
    wide = dict(zip("qkv", qkv((1, 8, 8, 2, 24)), strict=True))
    double = dict(zip("qkv", qkv((1, 8, 8, 2, 16), dtype=torch.float64), strict=True))
    return [
        ("rpb", dict(q=q, k=k, v=v, rpb=torch.zeros(2, 5, 5)), "NATTEN has no relative position bias since 0.20"),
        ("attn_drop", dict(q=q, k=k, v=v, attn_drop=0.2), "NATTEN's fused kernels have no attention dropout"),
        ("requires_grad", grad, "NATTEN cannot backpropagate on cpu"),
        ("kernel_size_1", dict(q=q, k=k, v=v, kernel_size=1), "NATTEN needs kernel_size >= 2, got 1"),
        ("head_dim_24", wide, "powers of two, got 24"),
        ("float64", double, "NATTEN has no backend for torch.float64 cpu tensors"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in refused_calls()])
def test_refusals_raise_when_forced_and_fall_back_under_auto(case, natten_first):
    (call, reason) = next((c[1], c[2]) for c in refused_calls() if c[0] == case)
    call = dict(kernel_size=3) | call
    with pytest.raises(BackendError, match=f"backend 'natten' does not support this na2d call: .*{reason}"):
        na2d(**call, backend="natten")
    torch.manual_seed(0)  # attn_drop draws a mask
    out = na2d(**call)
    torch.manual_seed(0)
    torch.testing.assert_close(out, na2d(**call, backend="torch"), atol=0, rtol=0)


def test_auto_takes_natten_when_it_can(natten_first, monkeypatch, natten_backend):
    calls = []
    impl = _dispatch._REGISTRY["na2d"]["natten"]

    def record(*args):
        calls.append("natten")
        return impl.fn(*args)

    monkeypatch.setitem(_dispatch._REGISTRY["na2d"], "natten", dataclasses.replace(impl, fn=record))
    q, k, v = qkv((1, 8, 9, 2, 16))
    torch.testing.assert_close(na2d(q, k, v, 3), na2d(q, k, v, 3, backend="torch"), atol=1e-5, rtol=1e-5)
    assert calls == ["natten"]


def test_unimportable_natten_is_unavailable(natten_first, monkeypatch, natten_backend):
    monkeypatch.setattr(natten_backend, "_natten", lambda: "natten cannot be imported (No module named 'natten')")
    q, k, v = qkv((1, 8, 8, 2, 16))
    with pytest.raises(BackendError, match="backend 'natten' is not available for na2d: natten cannot be imported"):
        na2d(q, k, v, 3, backend="natten")
    torch.testing.assert_close(na2d(q, k, v, 3), na2d(q, k, v, 3, backend="torch"), atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dilation", [1, 2])
def test_values_and_gradients_on_cuda(dilation):
    q, k, v = qkv((2, 28, 28, 4, 32), grad=True, device="cuda")
    grad_out = torch.randn(q.shape, device="cuda")
    got = na2d(q, k, v, 7, dilation, backend="natten")
    expected = na2d(q, k, v, 7, dilation, backend="torch")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for a, b in zip(
        torch.autograd.grad(got, (q, k, v), grad_out), torch.autograd.grad(expected, (q, k, v), grad_out), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
