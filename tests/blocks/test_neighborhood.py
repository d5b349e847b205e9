"""NeighborhoodAttention2D: NAT's math, padding of small maps, checkpoint names, errors."""

import pytest
import torch
import torch.nn.functional as F

from attnzoo.blocks import NeighborhoodAttention2D
from tests.kernels.reference import dense_na2d


def test_parameter_names_and_shapes_match_nat_checkpoints():
    shapes = {k: tuple(v.shape) for k, v in NeighborhoodAttention2D(32, 4, kernel_size=5).state_dict().items()}
    assert shapes == {
        "qkv.weight": (96, 32),
        "qkv.bias": (96,),
        "rpb": (4, 9, 9),
        "proj.weight": (32, 32),
        "proj.bias": (32,),
    }


def test_kernel_covering_the_whole_map_is_full_attention_plus_bias():
    torch.manual_seed(0)
    mixer = NeighborhoodAttention2D(16, 2, kernel_size=7).double().eval()
    x = torch.randn(2, 7, 7, 16, dtype=torch.float64)
    q, k, v = (mixer.qkv(x).reshape(2, 49, 3, 2, 8).permute(2, 0, 3, 1, 4)).unbind(0)
    position = torch.stack(torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij"), -1).reshape(49, 2)
    offset = position[None, :, :] - position[:, None, :] + 6  # key - query + k - 1
    bias = mixer.rpb[:, offset[..., 0], offset[..., 1]]  # (heads, 49, 49)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    expected = mixer.proj(attn.transpose(1, 2).reshape(2, 7, 7, 16))
    torch.testing.assert_close(mixer(x), expected)


@pytest.mark.parametrize("height,width,dilation", [(5, 6, 1), (3, 9, 1), (12, 20, 3), (1, 1, 1)])
def test_small_maps_are_padded_before_qkv_and_cropped(height, width, dilation):
    torch.manual_seed(1)
    mixer = NeighborhoodAttention2D(8, 2, kernel_size=7, dilation=dilation).double().eval()
    x = torch.randn(1, height, width, 8, dtype=torch.float64)
    span = 7 * dilation
    padded = F.pad(x, (0, 0, 0, max(span - width, 0), 0, max(span - height, 0)))
    q, k, v = mixer.qkv(padded).unflatten(-1, (3, 2, 4)).unbind(3)
    out = dense_na2d(q, k, v, 7, dilation, rpb=mixer.rpb).flatten(-2)[:, :height, :width]
    torch.testing.assert_close(mixer(x), mixer.proj(out))


def test_qk_scale_and_no_bias():
    mixer = NeighborhoodAttention2D(8, 2, kernel_size=3, qk_scale=0.1, rel_pos_bias=False, qkv_bias=False)
    assert mixer.rpb is None and mixer.qkv.bias is None and mixer.scale == 0.1
    x = torch.randn(1, 4, 5, 8)
    q, k, v = mixer.qkv(x).unflatten(-1, (3, 2, 4)).unbind(3)
    torch.testing.assert_close(mixer(x), mixer.proj(dense_na2d(q, k, v, 3, scale=0.1).flatten(-2)))


def test_attention_dropout_only_in_training():
    mixer = NeighborhoodAttention2D(8, 2, kernel_size=3, attn_drop=0.5)
    x = torch.randn(1, 6, 6, 8)
    mixer.eval()
    torch.testing.assert_close(mixer(x), mixer(x))
    mixer.train()
    assert not torch.allclose(mixer(x), mixer(x))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(dim=30, num_heads=4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (dict(dim=32, num_heads=4, kernel_size=4), ValueError, "kernel_size must be odd, got 4"),
        (dict(dim=32, num_heads=4, dilation=0), ValueError, "dilation must be >= 1, got 0"),
        (dict(dim=32, num_heads=0), ValueError, "num_heads must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        NeighborhoodAttention2D(**kwargs)


def test_bad_input():
    mixer = NeighborhoodAttention2D(8, 2, kernel_size=3)
    with pytest.raises(AssertionError, match=r"x must be a channels-last map \(B, H, W, C\)"):
        mixer(torch.randn(1, 16, 8))
    with pytest.raises(AssertionError, match="x has the wrong number of channels for dim=8"):
        mixer(torch.randn(1, 4, 4, 4))
