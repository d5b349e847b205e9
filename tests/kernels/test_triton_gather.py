"""The triton backend of gather_attention against the torch backend: values and gradients.

Without CUDA the kernels run on CPU tensors through Triton's interpreter (``tests/conftest.py`` turns it
on), so those tests use small shapes; the ``gpu`` tests use QuadTree's and Sparsifiner's real shapes.
"""

import importlib

import pytest
import torch

from attnzoo.kernels import BackendError, gather_attention
from tests.kernels.reference import LargestTensor


@pytest.fixture(scope="module", autouse=True)
def triton_gather():
    """The backend module (``kernels/ops.py`` imports and so registers it); skip where it cannot run."""
    module = importlib.import_module("attnzoo.kernels.triton_gather")
    reason = module.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return module


@pytest.fixture
def device(triton_gather):
    """CUDA when there is one; otherwise the CPU, which only the interpreter can serve."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not triton_gather._INTERPRETED:
        pytest.skip("no CUDA device and Triton's interpreter is off (TRITON_INTERPRET != 1)")
    return torch.device("cpu")


def make_inputs(shape, dtype=torch.float32, device="cpu", seed=0, index=None):
    """q, k, v (requiring grad) and an index; ``shape`` = (B, heads, Nq, Nk, d, dv, K)."""
    batch, heads, n_queries, n_keys, head_dim, head_dim_v, keys_per_query = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_queries, head_dim, generator=gen)
    k = torch.randn(batch, heads, n_keys, head_dim, generator=gen)
    v = torch.randn(batch, heads, n_keys, head_dim_v, generator=gen)
    if index is None:
        index = torch.randint(0, n_keys, (batch, heads, n_queries, keys_per_query), generator=gen)
    q, k, v = (t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v))
    return q, k, v, index.to(device)


def value_and_grads(q, k, v, index, backend, grad_out, scale=None):
    out = gather_attention(q, k, v, index, scale=scale, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype)))


def assert_matches_torch(q, k, v, index, scale=None, atol=1e-4, rtol=1e-4):
    """Triton's output and (dq, dk, dv) against the torch backend on float32 copies of the same inputs.

    grad_out is drawn in q's dtype, so the float32 reference sees exactly what the kernels saw.
    """
    shape = (*q.shape[:3], v.shape[-1])
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device=q.device, dtype=q.dtype)
    got = value_and_grads(q, k, v, index, "triton", grad_out, scale)
    ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    expected = value_and_grads(*ref_inputs, index, "torch", grad_out, scale)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        assert a.dtype == q.dtype, name
        torch.testing.assert_close(a.float(), b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


# (B, heads, Nq, Nk, d, dv, K): partial query blocks, several key chunks with a partial last one,
# K = 1, K not a power of two, Nq < Nk and Nq > Nk, d and dv that are not powers of two, dv != d
SHAPES = [
    (2, 2, 37, 23, 32, 32, 20),
    (1, 2, 19, 7, 16, 16, 1),
    (1, 1, 21, 30, 20, 40, 9),
    (1, 2, 17, 50, 64, 48, 13),
    (2, 1, 9, 5, 128, 96, 3),
    (1, 1, 6, 3, 8, 4, 7),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_values_and_gradients_match_torch(shape, device):
    q, k, v, index = make_inputs(shape, device=device, seed=sum(shape))
    assert_matches_torch(q, k, v, index)


@pytest.mark.parametrize("scale", [0.37, -1.5, 0.0])
def test_custom_scale(scale, device):
    assert_matches_torch(*make_inputs((1, 2, 18, 11, 32, 16, 6), device=device), scale=scale)


@pytest.mark.quick
def test_repeated_indices_within_and_across_queries(device):
    # every query lists key 2 three times and key 0 twice, among others: dk/dv rows collect many atomic adds
    shape = (2, 2, 33, 6, 16, 16, 8)
    gen = torch.Generator().manual_seed(5)
    index = torch.randint(0, 6, (2, 2, 33, 8), generator=gen)
    index[..., :3] = 2
    index[..., 3:5] = 0
    assert_matches_torch(*make_inputs(shape, device=device, index=index))


def test_every_slot_on_one_key(device):
    index = torch.zeros(1, 2, 40, 5, dtype=torch.int64)
    q, k, v, index = make_inputs((1, 2, 40, 4, 16, 16, 5), device=device, index=index)
    assert_matches_torch(q, k, v, index)
    out = gather_attention(q, k, v, index, backend="triton")
    torch.testing.assert_close(out, v[:, :, :1].expand_as(out))


def test_strided_inputs_index_and_grad_out(device):
    """Heads-last tensors seen through a transpose, an expanded (stride-0) index, an expanded grad_out."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, n, 3, 16, generator=gen).to(device).transpose(1, 2) for n in (13, 9, 9))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    index = torch.randint(0, 9, (2, 1, 1, 5), generator=gen).to(device).expand(2, 3, 13, 5)
    assert not q.is_contiguous() and index.stride(2) == 0
    assert_matches_torch(q, k, v, index)
    (got,) = torch.autograd.grad(gather_attention(q, k, v, index, backend="triton").sum(), q)
    (expected,) = torch.autograd.grad(gather_attention(q, k, v, index, backend="torch").sum(), q)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_precision(dtype, tol, device):
    q, k, v, index = make_inputs((1, 2, 20, 9, 32, 16, 6), dtype=dtype, device=device)
    assert_matches_torch(q, k, v, index, atol=tol, rtol=tol)


def test_only_requested_gradients_and_no_grad(device):
    q, k, v, index = make_inputs((1, 1, 8, 5, 16, 16, 3), device=device)
    k.requires_grad_(False)
    out = gather_attention(q, k, v, index, backend="triton")
    out.sum().backward()
    assert k.grad is None and q.grad is not None and v.grad is not None
    with torch.no_grad():
        assert not gather_attention(q, k, v, index, backend="triton").requires_grad


def test_no_query_tokens(device):
    q, k, v, index = make_inputs((1, 2, 0, 4, 16, 16, 3), device=device)
    out, dq, dk, dv = value_and_grads(q, k, v, index, "triton", torch.ones(1, 2, 0, 16, device=device))
    assert out.shape == (1, 2, 0, 16) and dq.shape == q.shape
    assert not dk.any() and not dv.any()


def test_gathered_rows_are_never_materialised(device):
    q, k, v, index = make_inputs((1, 1, 64, 64, 32, 32, 16), device=device)
    with LargestTensor(floating_only=True) as mode:
        gather_attention(q, k, v, index, backend="triton").sum().backward()
    assert mode.numel <= max(t.numel() for t in (q, k, v))  # the torch backend builds Nq * K * d


def test_forced_refusals_name_the_reason(triton_gather, device, monkeypatch):
    q, k, v, index = make_inputs((1, 1, 4, 4, 16, 16, 2), device=device)
    with pytest.raises(BackendError, match="does not support .* float32, float16 and bfloat16, got torch.float64"):
        gather_attention(q.double(), k.double(), v.double(), index, backend="triton")
    wide = torch.randn(1, 1, 4, 160, device=device)
    with pytest.raises(BackendError, match=r"head dims up to 128, got q/k 160 and v 160"):
        gather_attention(wide, wide, wide, index, backend="triton")
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(BackendError, match="atomic adds, which are not deterministic"):
            gather_attention(q, k, v, index, backend="triton")
        with torch.no_grad():
            gather_attention(q, k, v, index, backend="triton")  # no backward, no atomics
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(triton_gather, "_INTERPRETED", False)
    cpu = [t.detach().cpu() for t in (q, k, v, index)]
    with pytest.raises(BackendError, match="CPU tensors need Triton's interpreter"):
        gather_attention(*cpu, backend="triton")
    torch.testing.assert_close(gather_attention(*cpu), gather_attention(*cpu, backend="torch"))  # auto still runs


# ---- CUDA, realistic shapes -------------------------------------------------------------------------------


def quadtree_index(batch, heads, side, topk, gen):
    """QuadTree's fine-level index: the 4 children of ``topk`` distinct coarse keys, shared by 4 siblings."""
    coarse = side // 2
    parents = torch.rand(batch, heads, coarse * coarse, coarse * coarse, generator=gen).argsort(-1)[..., :topk]
    row, col = parents // coarse, parents % coarse
    children = [(2 * row + dr) * side + 2 * col + dc for dr in (0, 1) for dc in (0, 1)]
    per_parent = torch.stack(children, -1).flatten(-2)  # (B, h, coarse^2, 4 * topk)
    per_parent = per_parent.view(batch, heads, coarse, 1, coarse, 1, 4 * topk).expand(-1, -1, -1, 2, -1, 2, -1)
    return per_parent.reshape(batch, heads, side * side, 4 * topk)


def sparsifiner_index(batch, heads, tokens, keys, gen):
    return torch.rand(batch, heads, tokens, tokens, generator=gen).argsort(-1)[..., :keys]


REALISTIC = {
    "quadtree-h1-d32": ((2, 1, 3136, 3136, 32, 32, 32), quadtree_index, (2, 1, 56, 8)),
    "quadtree-h2-d64": ((2, 2, 3136, 3136, 64, 64, 32), quadtree_index, (2, 2, 56, 8)),
    "sparsifiner": ((8, 6, 197, 197, 64, 64, 50), sparsifiner_index, (8, 6, 197, 50)),
}
HALF_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", list(HALF_TOLERANCE), ids=str)
@pytest.mark.parametrize("case", list(REALISTIC))
def test_realistic_shapes_on_cuda(case, dtype):
    shape, make_index, args = REALISTIC[case]
    index = make_index(*args, torch.Generator().manual_seed(0))
    q, k, v, index = make_inputs(shape, dtype=dtype, device="cuda", index=index)
    tol = HALF_TOLERANCE[dtype]
    assert_matches_torch(q, k, v, index, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_backward_saves_q_k_v_index_out_and_logsumexp_only(backend, device):
    """Both backends keep the same six tensors for backward: no gathered rows (Nq * K * d), scores or probabilities."""
    q, k, v, index = make_inputs((2, 2, 40, 24, 16, 8, 12), device=device)
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = gather_attention(q, k, v, index, backend=backend)
    expected = [tuple(t.shape) for t in (q, k, v, index, out)] + [(2, 2, 40)]
    assert sorted(s for s, _ in saved) == sorted(expected)
    assert dict(saved)[(2, 2, 40)] == torch.float32  # the logsumexp
    out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v))


def test_groups_of_queries_read_their_shared_row(device):
    """``group=4``: the Triton kernels get the row repeated per query and agree with the torch backend's groups."""
    q, k, v, _ = make_inputs((1, 2, 24, 10, 16, 16, 1), device=device)
    index = torch.randint(0, 10, (1, 2, 6, 5), generator=torch.Generator().manual_seed(3)).to(device)
    grad_out = torch.randn(1, 2, 24, 16, generator=torch.Generator().manual_seed(4)).to(device)
    got = value_and_grads_grouped(q, k, v, index, "triton", grad_out)
    expected = value_and_grads_grouped(q, k, v, index, "torch", grad_out)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def value_and_grads_grouped(q, k, v, index, backend, grad_out):
    out = gather_attention(q, k, v, index, backend=backend, group=4)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))
