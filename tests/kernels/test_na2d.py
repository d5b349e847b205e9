"""na2d against brute-force dense attention, NATTEN, gradcheck, torch.compile and a memory bound."""

import natten
import pytest
import torch
import torch.nn.functional as F

from attnzoo.kernels import na2d, neighborhood_indices
from tests.kernels.reference import LargestTensor, dense_na2d, nearest_same_residue


def qkv(shape, dtype=torch.float64, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.quick
@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
@pytest.mark.parametrize("with_rpb", [False, True])
def test_matches_dense_masked_attention(kernel_size, dilation, with_rpb):
    span = kernel_size * dilation
    # non-square, one side exactly the minimum, the other odd/even past it
    height, width = span, span + 3 + dilation
    q, k, v = qkv((2, height, width, 2, 4), seed=kernel_size * 10 + dilation)
    rpb = torch.randn(2, 2 * kernel_size - 1, 2 * kernel_size - 1, dtype=torch.float64) if with_rpb else None
    out = na2d(q, k, v, kernel_size, dilation, rpb=rpb)
    torch.testing.assert_close(out, dense_na2d(q, k, v, kernel_size, dilation, rpb=rpb))


@pytest.mark.parametrize("height,width", [(7, 7), (8, 13), (15, 17), (21, 9), (10, 10)])
def test_matches_dense_on_odd_and_even_sizes(height, width):
    q, k, v = qkv((1, height, width, 3, 5), seed=height * width)
    rpb = torch.randn(3, 13, 13, dtype=torch.float64)
    torch.testing.assert_close(na2d(q, k, v, 7, rpb=rpb, scale=0.3), dense_na2d(q, k, v, 7, rpb=rpb, scale=0.3))


@pytest.mark.parametrize("length", range(3, 40))
@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (5, 2), (7, 3), (3, 4), (9, 1)])
def test_neighborhood_indices_are_the_nearest_same_residue_keys(length, kernel_size, dilation):
    if length < kernel_size * dilation:
        return
    keys, bias_index = neighborhood_indices(length, kernel_size, dilation)
    assert keys.tolist() == nearest_same_residue(length, kernel_size, dilation)
    position = torch.arange(length)[:, None]
    assert torch.equal(bias_index, (keys - position) // dilation + kernel_size - 1)
    assert int(bias_index.min()) >= 0 and int(bias_index.max()) <= 2 * kernel_size - 2


@pytest.mark.parametrize(
    "height,width,kernel_size,dilation",
    [(9, 11, 3, 1), (9, 11, 3, 3), (14, 7, 7, 1), (20, 17, 5, 3), (16, 16, 3, 4), (18, 21, 9, 2)],
)
def test_matches_natten_without_bias(height, width, kernel_size, dilation):
    q, k, v = qkv((2, height, width, 2, 16), dtype=torch.float32, seed=3)
    expected = natten.na2d(q, k, v, kernel_size, dilation=dilation)
    torch.testing.assert_close(na2d(q, k, v, kernel_size, dilation), expected, atol=1e-5, rtol=1e-5)


def test_kernel_covering_the_whole_map_is_full_attention():
    q, k, v = qkv((2, 7, 7, 2, 8), seed=5)
    full = F.scaled_dot_product_attention(*(t.flatten(1, 2).transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(na2d(q, k, v, 7), full.transpose(1, 2).reshape(q.shape))


@pytest.mark.quick
@pytest.mark.parametrize("dilation", [1, 2])
def test_gradcheck(dilation):
    q, k, v = qkv((1, 3 * dilation, 3 * dilation + 2, 2, 3), seed=dilation, grad=True)
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: na2d(*t[:3], 3, dilation, rpb=t[3]), (q, k, v, rpb))


def test_bfloat16_runs_in_bfloat16_and_stays_close():
    q, k, v = qkv((1, 8, 9, 2, 16), dtype=torch.float32, seed=7)
    rpb = torch.randn(2, 5, 5)
    out = na2d(*(t.bfloat16() for t in (q, k, v)), 3, rpb=rpb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), na2d(q, k, v, 3, rpb=rpb), atol=3e-2, rtol=3e-2)


def test_compile_fullgraph_forward():
    q, k, v = qkv((1, 9, 10, 2, 4), dtype=torch.float32, seed=11)
    rpb = torch.randn(2, 5, 5)
    compiled = torch.compile(lambda *t: na2d(*t[:3], 3, 2, rpb=t[3], backend="torch"), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, rpb), na2d(q, k, v, 3, 2, rpb=rpb))


def test_compile_fullgraph_backward():
    q, k, v = qkv((1, 7, 8, 2, 4), dtype=torch.float32, seed=12, grad=True)
    rpb = torch.randn(2, 5, 5, requires_grad=True)
    compiled = torch.compile(lambda *t: na2d(*t[:3], 3, rpb=t[3]), fullgraph=True, backend="aot_eager")
    compiled(q, k, v, rpb).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v, rpb)]
    for t in (q, k, v, rpb):
        t.grad = None
    na2d(q, k, v, 3, rpb=rpb).square().sum().backward()
    for got, t in zip(grads, (q, k, v, rpb), strict=True):
        torch.testing.assert_close(got, t.grad)


def test_memory_grows_with_neighborhood_not_with_tokens_squared():
    height, width, heads, head_dim, kernel_size = 48, 40, 1, 2, 3
    q, k, v = qkv((1, height, width, heads, head_dim), dtype=torch.float32, grad=True)
    rpb = torch.randn(heads, 5, 5, requires_grad=True)
    with LargestTensor() as mode:
        na2d(q, k, v, kernel_size, rpb=rpb).sum().backward()
    tokens = height * width
    # the reference attends k x k query tiles to their (2k-1) x (2k-1) key halo (tiles padded at the border)
    padded = (-(-height // kernel_size) * kernel_size) * (-(-width // kernel_size) * kernel_size)
    assert mode.numel <= max(padded * (2 * kernel_size - 1) ** 2 * heads, padded * heads * head_dim)
    assert mode.numel < tokens * tokens / 50


def test_attention_dropout_zeroes_whole_weights_and_rescales():
    torch.manual_seed(0)
    q, k, v = qkv((1, 6, 6, 1, 1), dtype=torch.float32)
    ones = torch.ones_like(v)
    # with v = 1 every output is the sum of the kept, rescaled weights: 0 or a multiple of 1/(1-p)
    out = na2d(q, k, ones, 3, attn_drop=0.5)
    assert not torch.allclose(out, ones)
    assert torch.allclose(na2d(q, k, ones, 3), ones)
    with pytest.raises(ValueError, match=r"attn_drop must lie in \[0, 1\), got 1.0"):
        na2d(q, k, v, 3, attn_drop=1.0)
