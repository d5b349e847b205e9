"""Backend choice: argument > use_backend() > ATTNZOO_BACKEND > auto, and clear errors."""

import pytest
import torch

from attnzoo.kernels import BackendError, _dispatch, available_backends, gather_attention, na2d, use_backend


@pytest.fixture
def fake_backends(monkeypatch):
    """Registers stand-in 'triton' (cannot run here) and 'natten' (no rpb) implementations of na2d."""
    calls = []
    registry = {op: dict(impls) for op, impls in _dispatch._REGISTRY.items()}
    monkeypatch.setattr(_dispatch, "_REGISTRY", registry)

    def natten_fn(q, k, v, kernel_size, dilation, rpb, scale, attn_drop):
        calls.append("natten")
        return torch.zeros_like(q)

    _dispatch.register(
        "na2d",
        "natten",
        natten_fn,
        unsupported=lambda rpb=None, **_: "no relative position bias" if rpb is not None else None,
    )
    _dispatch.register("na2d", "triton", lambda *a: calls.append("triton"), unavailable=lambda: "needs a CUDA device")
    monkeypatch.setitem(_dispatch.AUTO_ORDER, "cpu", ("triton", "natten", "torch"))
    return calls


def maps():
    return [torch.randn(1, 6, 6, 2, 4) for _ in range(3)]


def test_every_backend_is_registered_and_the_cpu_can_run_torch():
    assert set(_dispatch._REGISTRY["na2d"]) == {"torch", "triton", "flex", "natten"}
    assert set(_dispatch._REGISTRY["gather_attention"]) == {"torch", "triton"}
    assert "torch" in available_backends("na2d") and "torch" in available_backends("gather_attention")


def test_forcing_a_backend_without_an_implementation_is_an_error():
    with pytest.raises(
        BackendError, match="backend 'natten' has no implementation of gather_attention .*implemented: "
    ):
        gather_attention(
            torch.randn(1, 1, 2, 4),
            torch.randn(1, 1, 3, 4),
            torch.randn(1, 1, 3, 4),
            torch.zeros(1, 1, 2, 1, dtype=torch.int64),
            backend="natten",
        )


def test_forcing_a_backend_that_cannot_serve_the_call_says_why():
    q, k, v = maps()
    with pytest.raises(
        BackendError, match="backend 'natten' does not support this na2d call: .*relative position bias"
    ):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5), backend="natten")
    with use_backend("triton"), pytest.raises(BackendError, match="backend 'triton' does not support .*float64"):
        na2d(*(t.double() for t in maps()), 3)


def test_auto_on_the_cpu_is_the_exact_reference():
    """On the CPU, torch is fastest (NATTEN's flex path is 1.5-21x slower; Triton only interprets)."""
    q, k, v = maps()
    with torch.no_grad():
        torch.testing.assert_close(na2d(q, k, v, 3), na2d(q, k, v, 3, backend="torch"), rtol=0, atol=0)
    assert _dispatch.AUTO_ORDER["cpu"] == ("torch",)


def test_auto_skips_backends_that_cannot_serve_the_call(fake_backends):
    q, k, v = maps()
    na2d(q, k, v, 3)
    assert fake_backends == ["natten"]  # triton unavailable, natten supports a call without rpb
    out = na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5))
    assert fake_backends == ["natten"] and out.abs().sum() > 0  # rpb: natten skipped, torch ran


def test_forced_backend_reports_why_it_cannot_run(fake_backends):
    q, k, v = maps()
    with pytest.raises(BackendError, match="backend 'triton' is not available for na2d: needs a CUDA device"):
        na2d(q, k, v, 3, backend="triton")
    with pytest.raises(
        BackendError, match="backend 'natten' does not support this na2d call: no relative position bias"
    ):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5), backend="natten")


def test_precedence_argument_context_environment(fake_backends, monkeypatch):
    q, k, v = maps()
    monkeypatch.setenv("ATTNZOO_BACKEND", "torch")
    na2d(q, k, v, 3)
    assert fake_backends == []  # environment forces torch over auto's natten
    with use_backend("natten"):
        na2d(q, k, v, 3)
        assert fake_backends == ["natten"]  # context beats environment
        na2d(q, k, v, 3, backend="torch")
        assert fake_backends == ["natten"]  # argument beats context
        with use_backend("auto"):
            na2d(q, k, v, 3)
            assert fake_backends == ["natten", "natten"]  # inner auto: natten preferred on this fake order
    monkeypatch.setenv("ATTNZOO_BACKEND", "natten")
    na2d(q, k, v, 3)
    assert fake_backends == ["natten"] * 3


def test_bad_names_are_rejected_where_they_are_given(monkeypatch):
    with pytest.raises(
        ValueError, match=r"use_backend\(name\) must be one of 'auto', 'torch', 'triton', 'flex', 'natten'; got 'cuda'"
    ):
        with use_backend("cuda"):
            pass
    monkeypatch.setenv("ATTNZOO_BACKEND", "tritn")
    with pytest.raises(ValueError, match="the ATTNZOO_BACKEND environment variable must be one of .* got 'tritn'"):
        na2d(*maps(), 3)


def test_context_is_restored_after_an_exception():
    with pytest.raises(RuntimeError), use_backend("natten"):
        raise RuntimeError
    assert na2d(*maps(), 3).shape == (1, 6, 6, 2, 4)
