"""DaViT's attentions: weight-for-weight parity with timm's davit modules, identities, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models import davit as timm_davit

from attnzoo.blocks import create_mixer
from attnzoo.blocks.dual import ChannelGroupAttention, SpatialWindowAttention

SIZES = [(15, 17), (9, 9), (7, 9), (1, 1), (14, 21)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module, seed=0):
    """Random weights everywhere (LayerNorm affine and biases too), so every parameter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def _timm_windowed(attn, x, ws):
    """timm's SpatialBlock attention path (pad, partition, WindowAttention, reverse, crop)."""
    _, height, width, channels = x.shape
    xp = F.pad(x, (0, 0, 0, (-width) % ws, 0, (-height) % ws))
    windows = timm_davit.window_partition(xp, (ws, ws)).view(-1, ws * ws, channels)
    out = attn(windows).view(-1, ws, ws, channels)
    return timm_davit.window_reverse(out, (ws, ws), xp.shape[1], xp.shape[2])[:, :height, :width]


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_keys_and_shapes_equal_timm():
    assert _shapes(SpatialWindowAttention(16, 2)) == _shapes(timm_davit.WindowAttention(16, (7, 7), 2))
    assert _shapes(ChannelGroupAttention(16, 2)) == _shapes(timm_davit.ChannelAttention(16, 2, qkv_bias=True))


@pytest.mark.parametrize("window_size", [7, 3])
@pytest.mark.parametrize("height,width", SIZES)
def test_spatial_window_attention_matches_timm(height, width, window_size):
    ref = _randomize(timm_davit.WindowAttention(16, (window_size, window_size), 2)).eval()
    mixer = SpatialWindowAttention(16, 2, window_size=window_size).eval()
    mixer.load_state_dict(ref.state_dict())
    x = torch.randn(2, height, width, 16)
    torch.testing.assert_close(mixer(x), _timm_windowed(ref, x, window_size), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("height,width", SIZES)
def test_channel_group_attention_matches_timm(height, width, qkv_bias):
    ref = _randomize(timm_davit.ChannelAttention(24, 3, qkv_bias=qkv_bias)).eval()
    mixer = ChannelGroupAttention(24, 3, qkv_bias=qkv_bias).eval()
    mixer.load_state_dict(ref.state_dict())
    x = torch.randn(2, height, width, 24)
    expected = ref(x.reshape(2, height * width, 24)).reshape(2, height, width, 24)
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.quick
@pytest.mark.parametrize("height,width", [(15, 17), (9, 9), (1, 1)])
def test_create_mixer_dual_loads_timm_attention_and_matches(height, width):
    """create_mixer("dual") builds either attention: timm's attn.* weights load by name, outputs equal timm's."""
    x = torch.randn(2, height, width, 16)
    ref = _randomize(timm_davit.WindowAttention(16, (7, 7), 2), seed=1).eval()
    spatial = create_mixer("dual", 16, 2, attention="spatial").eval()
    assert type(spatial) is SpatialWindowAttention and spatial.window_size == 7
    spatial.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(spatial(x), _timm_windowed(ref, x, 7), atol=1e-5, rtol=1e-5)
    ref = _randomize(timm_davit.ChannelAttention(16, 2, qkv_bias=True), seed=2).eval()
    channel = create_mixer("dual", 16, 2, attention="channel", window_size=3).eval()  # window_size unused here
    assert type(channel) is ChannelGroupAttention
    channel.load_state_dict(ref.state_dict(), strict=True)
    expected = ref(x.reshape(2, height * width, 16)).reshape(2, height, width, 16)
    torch.testing.assert_close(channel(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height,width", [(7, 7), (5, 6), (1, 1)])
def test_one_window_is_full_attention_over_the_zero_padded_map(height, width):
    """window_size 7 on a map of at most 7x7: plain MHSA over the 49 tokens of the zero-padded map, cropped."""
    mixer = _randomize(SpatialWindowAttention(12, 3, window_size=7)).double()
    x = torch.randn(2, height, width, 12, dtype=torch.float64)
    padded = torch.zeros(2, 7, 7, 12, dtype=torch.float64)
    padded[:, :height, :width] = x
    q, k, v = (padded.reshape(2, 49, 12) @ mixer.qkv.weight.T + mixer.qkv.bias).chunk(3, dim=-1)
    heads = [slice(4 * h, 4 * h + 4) for h in range(3)]
    out = torch.cat([torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / 2.0, -1) @ v[..., s] for s in heads], -1)
    expected = mixer.proj(out.reshape(2, 7, 7, 12)[:, :height, :width])
    torch.testing.assert_close(mixer(x), expected, atol=1e-10, rtol=1e-10)


def test_channel_attention_formula_by_hand():
    """out[n, i] = sum_j softmax_j(sum_m k[m, i] v[m, j] / sqrt(d)) q[n, j], per channel group."""
    mixer = _randomize(ChannelGroupAttention(12, 3)).double()
    x = torch.randn(2, 5, 7, 12, dtype=torch.float64)
    qkv = mixer.qkv(x.reshape(2, 35, 12))
    q, k, v = qkv[..., :12], qkv[..., 12:24], qkv[..., 24:]
    groups = []
    for g in range(3):
        s = slice(4 * g, 4 * g + 4)
        logits = torch.stack([(k[:, :, s][..., i : i + 1] * v[:, :, s]).sum(1) for i in range(4)], 1) / math.sqrt(4)
        groups.append(torch.bmm(q[:, :, s], logits.softmax(-1).transpose(1, 2)))
    expected = mixer.proj(torch.cat(groups, -1)).reshape(2, 5, 7, 12)
    torch.testing.assert_close(mixer(x), expected, atol=1e-10, rtol=1e-10)


def test_channel_attention_is_equivariant_to_pixel_permutations():
    mixer = _randomize(ChannelGroupAttention(16, 4)).double()
    x = torch.randn(2, 6, 5, 16, dtype=torch.float64)
    perm = torch.randperm(30)
    shuffled = x.reshape(2, 30, 16)[:, perm].reshape(2, 6, 5, 16)
    expected = mixer(x).reshape(2, 30, 16)[:, perm].reshape(2, 6, 5, 16)
    torch.testing.assert_close(mixer(shuffled), expected, atol=1e-10, rtol=1e-10)


def test_windows_are_independent():
    """Changing one window's pixels leaves the output of every other window unchanged."""
    mixer = _randomize(SpatialWindowAttention(16, 2, window_size=4)).double()
    x = torch.randn(1, 8, 12, 16, dtype=torch.float64)
    y = x.clone()
    y[:, 4:8, 4:8] += 1.0
    a, b = mixer(x), mixer(y)
    outside = torch.ones(8, 12, dtype=torch.bool)
    outside[4:8, 4:8] = False
    torch.testing.assert_close(a[:, outside], b[:, outside], atol=1e-12, rtol=0)
    assert not torch.allclose(a[:, 4:8, 4:8], b[:, 4:8, 4:8])


def _dual(attention, **kwargs):
    return lambda dim, heads: create_mixer("dual", dim, heads, attention=attention, **kwargs)


MIXERS = [_dual("spatial"), _dual("channel"), _dual("spatial", window_size=4)]


@pytest.mark.parametrize("factory", MIXERS)
def test_bf16_autocast(factory):
    module = _randomize(factory(32, 4), seed=3).eval()
    x = torch.randn(2, 15, 17, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    ref = module(x)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize("attention", ["spatial", "channel"])
def test_every_parameter_gets_a_gradient(attention):
    dual = create_mixer("dual", 16, 2, attention=attention, window_size=4).train()
    dual(torch.randn(2, 7, 9, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dual.parameters())


@pytest.mark.parametrize("height,width", [(7, 9), (15, 17), (1, 1)])
@pytest.mark.parametrize("factory", MIXERS)
def test_shapes(height, width, factory):
    x = torch.randn(2, height, width, 16)
    assert factory(16, 2)(x).shape == x.shape


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("attention", ["spatial", "channel"])
def test_compile_fullgraph_matches_eager(attention, dynamic):
    dual = create_mixer("dual", 16, 2, attention=attention, window_size=4).eval()
    compiled = torch.compile(dual, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for shape in [(2, 9, 11, 16), (2, 6, 13, 16)]:
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), dual(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "factory,error,message",
    [
        (lambda: SpatialWindowAttention(30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: ChannelGroupAttention(30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: SpatialWindowAttention(32, 4, window_size=0), ValueError, "window_size must be >= 1, got 0"),
        (lambda: SpatialWindowAttention(32, 4, window_size=2.5), TypeError, "window_size must be an int"),
        (lambda: ChannelGroupAttention(32, 0), ValueError, "num_heads must be >= 1"),
        (lambda: create_mixer("dual", 32, 4, attention="both"), ValueError, "attention must be .*got 'both'"),
        (lambda: create_mixer("dual", 32, 4, attention=None), ValueError, "attention must be .*got None"),
        (lambda: create_mixer("dual", 30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: create_mixer("dual", 32, 4, window_size=0), ValueError, "window_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments(factory, error, message):
    with pytest.raises(error, match=message):
        factory()


@pytest.mark.parametrize("attention", ["spatial", "channel"])
def test_bad_input(attention):
    module = create_mixer("dual", 8, 2, attention=attention)
    with pytest.raises(AssertionError, match=r"x must be a channels-last map \(B, H, W, C\)"):
        module(torch.randn(1, 16, 8))
    with pytest.raises(AssertionError, match="x has the wrong number of channels for dim=8"):
        module(torch.randn(1, 4, 4, 4))
