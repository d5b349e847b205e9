"""Property-based: na2d equals dense masked attention for random sizes, kernels and dilations."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.kernels import na2d
from tests.kernels.reference import dense_na2d


@st.composite
def na_problems(draw):
    kernel_size = draw(st.sampled_from([1, 3, 5, 7]))
    dilation = draw(st.integers(1, 4))
    span = kernel_size * dilation
    height = draw(st.integers(span, span + 9))
    width = draw(st.integers(span, span + 9))
    heads = draw(st.integers(1, 3))
    head_dim = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 2))
    with_rpb = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return kernel_size, dilation, (batch, height, width, heads, head_dim), with_rpb, seed


@settings(max_examples=60, deadline=None)
@given(na_problems())
def test_na2d_equals_dense_masked_attention(problem):
    kernel_size, dilation, shape, with_rpb, seed = problem
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = None
    if with_rpb:
        rpb = torch.randn(shape[3], 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen, dtype=torch.float64)
    expected = dense_na2d(q, k, v, kernel_size, dilation, rpb=rpb)
    torch.testing.assert_close(na2d(q, k, v, kernel_size, dilation, rpb=rpb), expected)
