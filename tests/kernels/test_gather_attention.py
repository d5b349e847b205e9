"""gather_attention against dense masked attention, gradcheck and torch.compile."""

import pytest
import torch

from attnzoo.kernels import gather_attention
from attnzoo.kernels.ops import check_index_range
from tests.kernels.reference import dense_gather_attention


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
