"""MixerBlock: the residual structure around any mixer, by module or by name."""

import pytest
import torch
from torch import nn

from attnzoo.blocks import MixerBlock, NeighborhoodAttention2D, create_mixer


class Scale(nn.Module):
    def __init__(self, dim, num_heads=1):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), 2.0))

    def forward(self, x, offset=0.0):
        return x * self.weight + offset


def test_pre_norm_residual_structure_with_layer_scale():
    torch.manual_seed(0)
    block = MixerBlock(8, Scale(8), mlp_ratio=2.0, layer_scale=0.5).eval()
    x = torch.randn(2, 3, 5, 8)
    mid = x + 0.5 * (block.norm1(x) * 2.0 + 1.0)
    expected = mid + 0.5 * block.mlp(block.norm2(mid))
    torch.testing.assert_close(block(x, offset=1.0), expected)
    assert block.mlp.fc1.out_features == 16
    assert block.ls1.gamma.shape == (8,)


def test_mixer_by_name_and_drop_path_in_training_only():
    block = MixerBlock(16, "neighborhood", num_heads=2, drop_path=0.5, mixer_kwargs=dict(kernel_size=3))
    assert isinstance(block.mixer, NeighborhoodAttention2D) and block.mixer.kernel_size == 3
    x = torch.randn(8, 5, 5, 16)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    torch.manual_seed(0)
    assert not torch.allclose(block(x), block(x))


def test_errors():
    with pytest.raises(ValueError, match="num_heads is required to build the mixer 'neighborhood' by name"):
        MixerBlock(16, "neighborhood")
    with pytest.raises(ValueError, match="mixer_kwargs only applies when mixer is given by name"):
        MixerBlock(16, Scale(16), mixer_kwargs=dict(a=1))
    with pytest.raises(ValueError, match="unknown mixer 'nope'; choose one of"):
        create_mixer("nope", dim=16, num_heads=2)
    with pytest.raises(ValueError, match="mlp_ratio must be > 0"):
        MixerBlock(16, Scale(16), mlp_ratio=0)
