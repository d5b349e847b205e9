"""gather_attention against dense masked attention, gradcheck and torch.compile."""

import pytest
import torch

from attnzoo.kernels import gather_attention, torch_backend
from attnzoo.kernels.ops import check_index_range
from tests.kernels.reference import LargestTensor, dense_gather_attention


def inputs(batch, heads, n_queries, n_keys, head_dim, keys_per_query, seed=0, grad=False, unique=True):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_queries, head_dim, generator=gen, dtype=torch.float64)
    k = torch.randn(batch, heads, n_keys, head_dim, generator=gen, dtype=torch.float64)
    v = torch.randn(batch, heads, n_keys, head_dim + 1, generator=gen, dtype=torch.float64)
    if unique:
        scores = torch.rand(batch, heads, n_queries, n_keys, generator=gen)
        index = scores.argsort(-1)[..., :keys_per_query]
    else:
        index = torch.randint(0, n_keys, (batch, heads, n_queries, keys_per_query), generator=gen)
    return [t.requires_grad_(grad) for t in (q, k, v)] + [index]


@pytest.mark.quick
@pytest.mark.parametrize("n_queries,n_keys,keys_per_query", [(5, 9, 1), (16, 16, 4), (12, 40, 17), (7, 3, 3)])
@pytest.mark.parametrize("unique", [True, False])
def test_matches_dense_masked_attention(n_queries, n_keys, keys_per_query, unique):
    q, k, v, index = inputs(2, 3, n_queries, n_keys, 8, keys_per_query, seed=n_keys, unique=unique)
    torch.testing.assert_close(gather_attention(q, k, v, index), dense_gather_attention(q, k, v, index))
    torch.testing.assert_close(
        gather_attention(q, k, v, index, scale=0.7), dense_gather_attention(q, k, v, index, scale=0.7)
    )


def test_listing_every_key_is_full_attention():
    q, k, v, _ = inputs(1, 2, 6, 10, 4, 1)
    index = torch.arange(10).expand(1, 2, 6, 10)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(gather_attention(q, k, v, index), full)


@pytest.mark.quick
def test_gradcheck():
    q, k, v, index = inputs(1, 2, 4, 6, 3, 3, seed=1, grad=True, unique=False)
    assert torch.autograd.gradcheck(lambda *t: gather_attention(*t, index), (q, k, v))


def test_compile_fullgraph():
    q, k, v, index = [t.float() if t.is_floating_point() else t for t in inputs(1, 2, 8, 12, 4, 5)]
    compiled = torch.compile(lambda *t: gather_attention(*t), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, index), gather_attention(q, k, v, index))


def test_index_range_check_reads_nothing_back_off_the_cpu():
    """Off the CPU the range check is a queued device assertion: a meta index (no values to read) passes through.

    A host read (``int()``, ``.item()``) of a meta tensor raises, so this fails if the check synchronises.
    """
    index = torch.empty(2, 3, 5, 4, dtype=torch.int64, device="meta")
    check_index_range(index, 7)
    with pytest.raises(ValueError, match=r"\[0, 7\), got values from 0 to 9"):
        check_index_range(torch.tensor([[[[0, 9]]]]), 7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gpu_gather_attention_does_not_synchronise(backend):
    q, k, v = (torch.randn(2, 3, 50, 32, device="cuda") for _ in range(3))
    index = torch.randint(0, 50, (2, 3, 50, 8), device="cuda")
    gather_attention(q, k, v, index, backend=backend)  # warm-up: lazy initialisation may synchronise
    torch.cuda.set_sync_debug_mode("error")
    try:
        gather_attention(q, k, v, index, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- the torch backend's two paths, chunking and what backward keeps (issue 27) ----------------------------


def gathered_reference(q, k, v, index, scale=None):
    """The torch backend before issue 27: gather every query's key and value rows, autograd through indexing."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    batch, heads, n_queries, listed = index.shape
    flat = index.reshape(batch, heads, n_queries * listed, 1)
    k_sel = k.gather(2, flat.expand(-1, -1, -1, k.shape[-1])).view(batch, heads, n_queries, listed, -1)
    v_sel = v.gather(2, flat.expand(-1, -1, -1, v.shape[-1])).view(batch, heads, n_queries, listed, -1)
    attn = ((q.unsqueeze(-2) * scale) @ k_sel.transpose(-1, -2)).squeeze(-2).softmax(-1)
    return (attn.unsqueeze(-2) @ v_sel).squeeze(-2)


def quadtree_pattern(batch, heads, side, topk, gen):
    """QuadTree's fine level: the 4 children of ``topk`` coarse keys, shared by the 4 sibling queries."""
    coarse = side // 2
    parents = torch.rand(batch, heads, coarse * coarse, coarse * coarse, generator=gen).argsort(-1)[..., :topk]
    row, col = parents // coarse, parents % coarse
    children = torch.stack([(2 * row + a) * side + 2 * col + b for a in (0, 1) for b in (0, 1)], -1).flatten(-2)
    children = children.view(batch, heads, coarse, 1, coarse, 1, 4 * topk).expand(-1, -1, -1, 2, -1, 2, -1)
    return children.reshape(batch, heads, side * side, 4 * topk)


def index_pattern(name, batch, heads, n_queries, n_keys, listed, gen):
    """Every kind of index the two mixers produce, plus the degenerate ones (repeats, one key for all)."""
    if name == "topk":  # Sparsifiner: distinct keys per query, unsorted
        return torch.rand(batch, heads, n_queries, n_keys, generator=gen).argsort(-1)[..., :listed]
    if name == "repeats":
        return torch.randint(0, n_keys, (batch, heads, n_queries, listed), generator=gen)
    if name == "one_key":
        return torch.full((batch, heads, n_queries, listed), n_keys - 1)
    if name == "every_key":  # listed == n_keys: full attention
        return torch.arange(n_keys).expand(batch, heads, n_queries, n_keys).clone()
    raise ValueError(name)


def grads_of(fn, q, k, v, index, grad_out, **kw):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, index, **kw)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


@pytest.fixture
def small_chunks(monkeypatch):
    """A per-chunk budget of 600 elements: every call below runs in several chunks, the last one partial."""
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 600)


CASES = [  # (pattern, B, heads, Nq, Nk, K)
    ("topk", 2, 3, 13, 20, 5),
    ("topk", 1, 2, 11, 7, 7),
    ("repeats", 2, 2, 9, 6, 8),
    ("repeats", 1, 1, 10, 40, 3),
    ("one_key", 1, 2, 7, 5, 4),
    ("every_key", 1, 2, 6, 9, 9),
]


@pytest.mark.quick
@pytest.mark.parametrize("path", ["dense", "gather"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_torch_paths_match_the_gathered_reference(case, path, monkeypatch):
    name, batch, heads, n_queries, n_keys, listed = case
    gen = torch.Generator().manual_seed(n_keys)
    index = index_pattern(name, batch, heads, n_queries, n_keys, listed, gen)
    q, k, v, _ = inputs(batch, heads, n_queries, n_keys, 8, 1, seed=listed)
    per_query = batch * heads * (n_keys if path == "dense" else listed * v.shape[-1])
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 4 * per_query)  # chunks of 4 queries, the last partial
    assert torch_backend._plan(q, k, v, index, path)[1] == 4
    grad_out = torch.randn(batch, heads, n_queries, v.shape[-1], generator=gen, dtype=q.dtype)
    got = grads_of(torch_backend.gather_attention_torch, q, k, v, index, grad_out, scale=0.3, path=path)
    expected = grads_of(gathered_reference, q, k, v, index, grad_out, scale=0.3)
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, what=what: f"{what}: {m}")
    torch.testing.assert_close(got[0], dense_gather_attention(q, k, v, index, scale=0.3))


@pytest.mark.parametrize("path", ["dense", "gather"])
def test_quadtree_pattern_in_float32(path, small_chunks):
    gen = torch.Generator().manual_seed(4)
    index = quadtree_pattern(2, 2, 8, 3, gen)  # 64 queries and keys, 12 listed, shared by siblings
    q, k, v, _ = (t.float() if t.is_floating_point() else t for t in inputs(2, 2, 64, 64, 16, 1, seed=2))
    grad_out = torch.randn(2, 2, 64, 17, generator=gen)
    got = grads_of(torch_backend.gather_attention_torch, q, k, v, index, grad_out, scale=0.25, path=path)
    expected = grads_of(gathered_reference, *(t.double() for t in (q, k, v)), index, grad_out.double(), scale=0.25)
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=1e-5, msg=lambda m, what=what: f"{what}: {m}")


@pytest.mark.parametrize("path", ["dense", "gather"])
def test_gradcheck_each_path_in_chunks(path, monkeypatch):
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 40)
    q, k, v, index = inputs(1, 2, 5, 6, 3, 4, seed=3, grad=True, unique=False)
    index[..., :2] = 1  # a repeated key in every query
    assert torch.autograd.gradcheck(lambda *t: torch_backend.gather_attention_torch(*t, index, 0.6, path), (q, k, v))


def test_the_cost_rule_picks_dense_for_sparsifiner_and_gather_for_quadtree():
    """Sparsifiner keeps a quarter of the keys (dense scores are cheaper); QuadTree lists 32 of 3,136 (gather)."""
    cost_rule = torch_backend.DENSE_KEYS_PER_LISTED
    sparse = [torch.empty(8, 6, 197, 64), torch.empty(8, 6, 197, 64), torch.empty(8, 6, 197, 64)]
    assert torch_backend._plan(*sparse, torch.empty(8, 6, 197, 50, dtype=torch.int64), None)[0] == "dense"
    quad = [torch.empty(2, 1, 3136, 32)] * 3
    assert torch_backend._plan(*quad, torch.empty(2, 1, 3136, 32, dtype=torch.int64), None)[0] == "gather"
    at_rule = [torch.empty(1, 1, 4, 8), torch.empty(1, 1, 3 * cost_rule, 8), torch.empty(1, 1, 3 * cost_rule, 8)]
    assert torch_backend._plan(*at_rule, torch.empty(1, 1, 4, 3, dtype=torch.int64), None)[0] == "dense"
    at_rule[1] = at_rule[2] = torch.empty(1, 1, 3 * cost_rule + 1, 8)
    assert torch_backend._plan(*at_rule, torch.empty(1, 1, 4, 3, dtype=torch.int64), None)[0] == "gather"
    # QuadTree's 28x28 level: 32 listed of 784, each row shared by 4 children: gather; its 14x14 level: dense
    fine = [torch.empty(2, 1, 784, 32)] * 3
    assert torch_backend._plan(*fine, torch.empty(2, 1, 196, 32, dtype=torch.int64), None, 4)[0] == "gather"
    coarse = [torch.empty(2, 1, 196, 32)] * 3
    assert torch_backend._plan(*coarse, torch.empty(2, 1, 49, 32, dtype=torch.int64), None, 4)[0] == "dense"


def saved_by_backward(fn):
    """Every tensor autograd saves while ``fn`` runs, as (numel, dtype)."""
    saved = []

    def pack(t):
        saved.append((t.numel(), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return saved, out


@pytest.mark.quick
@pytest.mark.parametrize("path", ["dense", "gather", None])
def test_torch_backward_saves_only_q_k_v_index_out_and_logsumexp(path):
    """Nothing of size Nq * K * d (gathered rows) or Nq * Nk (scores) is kept: six tensors, none above q/k/v."""
    q, k, v, index = float32_leaves(inputs(2, 2, 48, 40, 8, 20))
    saved, out = saved_by_backward(lambda: torch_backend.gather_attention_torch(q, k, v, index, 0.5, path))
    expected = [q.numel(), k.numel(), v.numel(), index.numel(), out.numel(), 2 * 2 * 48]
    assert sorted(n for n, _ in saved) == sorted(expected)
    assert max(n for n, dtype in saved if dtype.is_floating_point) < 2 * 2 * 48 * 40  # < one Nq x Nk score matrix
    assert [dtype for _, dtype in saved if not dtype.is_floating_point] == [torch.int16]  # Nk = 40 fits in int16
    out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v))


@pytest.mark.parametrize("path", ["dense", "gather"])
def test_temporaries_stay_within_the_chunk_budget(path, monkeypatch):
    """Forward and backward: no float temporary larger than a chunk's budget (or than the inputs and outputs)."""
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 2000)
    q, k, v, index = float32_leaves(inputs(1, 2, 200, 60, 8, 30))
    with LargestTensor(floating_only=True) as mode:
        torch_backend.gather_attention_torch(q, k, v, index, 0.5, path).sum().backward()
    out_numel = 2 * 200 * v.shape[-1]
    assert mode.numel <= max(2000, q.numel(), out_numel)  # unchunked, the paths build 2*200*60 or 2*200*30*9


@pytest.mark.parametrize("path", ["dense", "gather"])
def test_compile_fullgraph_forward_and_backward(path, small_chunks):
    q, k, v, index = (t.float() if t.is_floating_point() else t for t in inputs(1, 2, 9, 12, 4, 5, unique=False))
    grad_out = torch.randn(1, 2, 9, 5)

    def attend(q, k, v, index):
        return torch_backend.gather_attention_torch(q, k, v, index, 0.5, path)

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")  # backward: the graph AOT derives
    got = grads_of(compiled, q, k, v, index, grad_out)
    for a, b in zip(got, grads_of(attend, q, k, v, index, grad_out), strict=True):
        torch.testing.assert_close(a, b)


def grads_of_inputs(*tensors):
    return [t.detach().requires_grad_() for t in tensors]


def float32_leaves(tensors):
    """q, k, v as float32 leaves requiring grad; the index as it is."""
    q, k, v, index = tensors
    return (*grads_of_inputs(q.float(), k.float(), v.float()), index)


def test_half_precision_dense_path_normalises_in_float32():
    q, k, v, index = inputs(1, 2, 12, 16, 8, 6, unique=False)
    got = torch_backend.gather_attention_torch(q.bfloat16(), k.bfloat16(), v.bfloat16(), index, 0.35, "dense")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), gathered_reference(q, k, v, index, 0.35), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("path", ["dense", "gather"])
@pytest.mark.parametrize("group", [2, 4])
def test_groups_of_queries_sharing_a_row_equal_one_row_per_query(path, group, monkeypatch):
    """``group`` consecutive queries read one index row: the same as that row repeated per query, in chunks."""
    rows, n_keys, listed = 7, 15, 6
    q, k, v, _ = inputs(2, 2, rows * group, n_keys, 8, 1, seed=group)
    index = index_pattern("repeats", 2, 2, rows, n_keys, listed, torch.Generator().manual_seed(1))
    per_row = 2 * 2 * (group * n_keys if path == "dense" else listed * v.shape[-1])
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 3 * per_row)  # chunks of 3 rows, the last partial
    assert torch_backend._plan(q, k, v, index, path, group)[1] == 3
    grad_out = torch.randn(2, 2, rows * group, v.shape[-1], generator=torch.Generator().manual_seed(2), dtype=q.dtype)
    got = grads_of(torch_backend.gather_attention_torch, q, k, v, index, grad_out, scale=0.4, path=path, group=group)
    expected = grads_of(gathered_reference, q, k, v, index.repeat_interleave(group, 2), grad_out, scale=0.4)
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, what=what: f"{what}: {m}")
    with_group = gather_attention(q, k, v, index, scale=0.4, group=group)
    torch.testing.assert_close(with_group, expected[0])


def test_gradcheck_with_groups():
    q, k, v, _ = inputs(1, 2, 6, 5, 3, 1, seed=5, grad=True)
    index = torch.randint(0, 5, (1, 2, 3, 4), generator=torch.Generator().manual_seed(0))
    for path in ("dense", "gather"):
        fn = lambda *t, path=path: torch_backend.gather_attention_torch(*t, index, 0.8, path, 2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v))


def test_group_must_divide_the_queries():
    q, k, v, index = inputs(1, 2, 6, 5, 3, 2)
    with pytest.raises(ValueError, match=r"Nq / group, K>=1\) with group=4 = \(1, 2, 1\) \+ \(K,\)"):
        gather_attention(q, k, v, index[:, :, :1], group=4)
    with pytest.raises(ValueError, match="group must be >= 1"):
        gather_attention(q, k, v, index, group=0)
