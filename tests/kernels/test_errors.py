"""Bad input raises a clear TypeError/ValueError naming the argument, before any backend runs."""

import pytest
import torch

from attnzoo.kernels import gather_attention, na2d


def maps(shape=(1, 8, 8, 2, 4), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(kernel_size=4), ValueError, "kernel_size must be odd, got 4"),
        (dict(kernel_size=0), ValueError, "kernel_size must be >= 1, got 0"),
        (dict(kernel_size=-3), ValueError, "kernel_size must be >= 1"),
        (dict(kernel_size=3.0), TypeError, "kernel_size must be an int"),
        (dict(kernel_size=True), TypeError, "kernel_size must be an int"),
        (dict(kernel_size=3, dilation=0), ValueError, "dilation must be >= 1, got 0"),
        (dict(kernel_size=3, dilation=1.5), TypeError, "dilation must be an int"),
        (dict(kernel_size=3, scale="big"), TypeError, "scale must be a real number"),
        (dict(kernel_size=3, scale=float("nan")), ValueError, "scale must be finite, got nan"),
        (dict(kernel_size=3, scale=float("inf")), ValueError, "scale must be finite, got inf"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 4, 4)), ValueError, r"rpb must have shape .* = \(2, 5, 5\)"),
        (dict(kernel_size=3, rpb=torch.zeros(3, 5, 5)), ValueError, r"rpb must have shape"),
        (dict(kernel_size=3, rpb=torch.zeros(5, 5)), ValueError, "rpb must have rank 3"),
        (dict(kernel_size=3, rpb=torch.zeros(2, 5, 5, dtype=torch.int64)), TypeError, "rpb must be a floating-point"),
        (dict(kernel_size=3, backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_na2d_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        na2d(*maps(), **kwargs)


def test_head_dim_zero_and_empty_batches():
    with pytest.raises(ValueError, match=r"head_dim \(the last dimension of q\) must be >= 1, got 0"):
        na2d(*maps((1, 8, 8, 2, 0)), 3)
    q, k, v = (t.requires_grad_() for t in maps((0, 8, 8, 2, 4)))
    out = na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5))
    out.sum().backward()
    assert out.shape == (0, 8, 8, 2, 4) and q.grad.shape == q.shape
    index = torch.zeros(0, 2, 5, 3, dtype=torch.int64)
    assert gather_attention(*(torch.randn(0, 2, 5, 4) for _ in range(3)), index).shape == (0, 2, 5, 4)
    no_queries = torch.zeros(1, 2, 0, 3, dtype=torch.int64)
    keys = torch.randn(1, 2, 5, 4)
    assert gather_attention(torch.randn(1, 2, 0, 4), keys, keys, no_queries).shape == (1, 2, 0, 4)


def test_na2d_map_smaller_than_kernel_times_dilation_names_both_numbers():
    with pytest.raises(ValueError, match=r"kernel_size \* dilation = 3 \* 3 = 9 .* got H=8, W=8"):
        na2d(*maps(), 3, 3)
    with pytest.raises(ValueError, match=r"= 9 \* 1 = 9 .* H=10, W=8"):
        na2d(*maps((1, 10, 8, 2, 4)), 9)


def test_na2d_bad_tensors():
    q, k, v = maps()
    with pytest.raises(ValueError, match=r"q must have rank 5 \(B, H, W, heads, head_dim\), got shape \(8, 8, 2, 4\)"):
        na2d(q[0], k, v, 3)
    with pytest.raises(ValueError, match="v must have rank 5"):
        na2d(q, k, v.flatten(-2), 3)
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        na2d(q, [1], v, 3)
    with pytest.raises(ValueError, match="q, k and v must have one shape"):
        na2d(q, k[:, :7], v, 3)
    with pytest.raises(TypeError, match="v has dtype torch.float64 but q has torch.float32"):
        na2d(q, k, v.double(), 3)
    with pytest.raises(TypeError, match="q must be a floating-point tensor"):
        na2d(*(t.long() for t in (q, k, v)), 3)
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        na2d(q, k.to("meta"), v, 3)
    with pytest.raises(ValueError, match="rpb is on meta but q is on cpu"):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5, device="meta"))


def gather_inputs():
    q = torch.randn(1, 2, 5, 4)
    k = torch.randn(1, 2, 7, 4)
    return q, k, k.clone(), torch.zeros(1, 2, 5, 3, dtype=torch.int64)


def test_gather_attention_bad_arguments():
    q, k, v, index = gather_inputs()
    too_high, negative = index.clone(), index.clone()
    too_high[0, 1, 4, 2] = 7
    negative[0, 0, 2, 0] = -1
    with pytest.raises(ValueError, match=r"index values must lie in \[0, Nk\) = \[0, 7\), got values from 0 to 7"):
        gather_attention(q, k, v, too_high)
    with pytest.raises(ValueError, match="got values from -1 to 0"):
        gather_attention(q, k, v, negative)
    with pytest.raises(TypeError, match="index must have dtype torch.int64, got torch.int32"):
        gather_attention(q, k, v, index.int())
    with pytest.raises(ValueError, match=r"index must have shape \(B, heads, Nq, K>=1\)"):
        gather_attention(q, k, v, index[:, :, :4])
    with pytest.raises(ValueError, match=r"index must have shape"):
        gather_attention(q, k, v, index[..., :0])
    with pytest.raises(ValueError, match="index must have rank 4"):
        gather_attention(q, k, v, index[0])
    with pytest.raises(ValueError, match="q must have rank 4"):
        gather_attention(q[0], k, v, index)
    with pytest.raises(ValueError, match="k .* must match q .* in batch, heads and head_dim"):
        gather_attention(q, k[..., :3], v, index)
    with pytest.raises(ValueError, match="v .* must match k .* in batch, heads and Nk"):
        gather_attention(q, k, v[:, :, :6], index)
    with pytest.raises(TypeError, match="k has dtype torch.float16 but q has torch.float32"):
        gather_attention(q, k.half(), v, index)
    with pytest.raises(ValueError, match="index is on meta but q is on cpu"):
        gather_attention(q, k, v, index.to("meta"))
