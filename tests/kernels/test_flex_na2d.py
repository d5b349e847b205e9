"""The ``flex`` na2d backend (FlexAttention with a block mask and rpb ``score_mod``) against the torch reference.

On the CPU FlexAttention runs forward only (no backward there); the ``gpu`` tests compare forward and
all gradients, rpb's included, on CUDA.
"""

import pytest
import torch

from attnzoo.kernels import BackendError, flex_na2d, na2d
from tests.kernels.na2d_compare import CASES as NA2D_CASES
from tests.kernels.na2d_compare import assert_matches_torch, make_inputs

if flex_na2d.unavailable() is not None:
    pytest.skip(flex_na2d.unavailable(), allow_module_level=True)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = [*NA2D_CASES, ((1, 12, 11, 1, 16), 11, 1, True, None)]


@pytest.mark.parametrize("shape,kernel_size,dilation,with_rpb,scale", CASES)
def test_forward_matches_torch_on_the_cpu(shape, kernel_size, dilation, with_rpb, scale):
    q, k, v, rpb, _ = make_inputs(shape, kernel_size, with_rpb, device="cpu", seed=sum(shape))
    with torch.no_grad():
        got = na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale, backend="flex")
        want = na2d(q, k, v, kernel_size, dilation, rpb=rpb, scale=scale, backend="torch")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_token_order_is_a_permutation_of_compact_tiles():
    tokens = flex_na2d.token_order(20, 35, 7, 2, "cpu")
    n = 20 * 35
    assert torch.equal(tokens.order.sort().values, torch.arange(n))
    assert torch.equal(tokens.order[tokens.inverse], torch.arange(n))
    # the first 128 tokens are one 8 x 16 tile of group 0: rows 0..14 and columns 0..30 step 2
    first = tokens.order[:128]
    rows, cols = first // 35, first % 35
    assert set(rows.tolist()) == set(range(0, 16, 2)) and set(cols.tolist()) == set(range(0, 32, 2))


def test_block_mask_skips_most_blocks_at_nat_stage_one():
    """56 x 56, k=7: a 128-query block meets a few 8 x 16 key tiles, not all 25 blocks."""
    mask = flex_na2d.block_mask(56, 56, 7, 1, "cpu")
    assert mask.sparsity() > 60.0  # percent of (query block, key block) pairs skipped


def test_refuses_backward_on_the_cpu_and_dropout():
    q, k, v, rpb, _ = make_inputs((1, 8, 8, 1, 16), 3, device="cpu")
    with pytest.raises(BackendError, match="no backward pass on the CPU"):
        na2d(q.requires_grad_(), k, v, 3, backend="flex")
    with pytest.raises(BackendError, match="no attention dropout"):
        na2d(q, k, v, 3, attn_drop=0.1, backend="flex")
    with torch.no_grad(), pytest.raises(BackendError, match="power-of-two head dims"):
        na2d(*(torch.zeros(1, 8, 8, 1, 24) for _ in range(3)), 3, backend="flex")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("shape,kernel_size,dilation,with_rpb,scale", CASES[:8])
def test_gpu_forward_and_gradients_match_torch_in_float32(shape, kernel_size, dilation, with_rpb, scale):
    q, k, v, rpb, grad = make_inputs(shape, kernel_size, with_rpb, device="cuda", seed=sum(shape))
    with torch.backends.cuda.matmul.flags(allow_tf32=False):
        assert_matches_torch(q, k, v, rpb, grad, kernel_size, dilation, scale, backend="flex")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dilation", [((2, 56, 56, 2, 32), 1), ((2, 56, 56, 4, 64), 2), ((2, 28, 28, 8, 32), 4)])
def test_gpu_half_precision_against_float32_torch(shape, dilation, dtype):
    q, k, v, rpb, grad = make_inputs(shape, 7, device="cuda", seed=dilation)
    assert_matches_torch(q, k, v, rpb, grad, 7, dilation, dtype=dtype, backend="flex")
