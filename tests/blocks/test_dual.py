"""DaViT dual attention: weight-for-weight parity with timm's davit modules, identities, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models import davit as timm_davit

from attnzoo.blocks.dual import (
    ChannelBlock,
    ChannelGroupAttention,
    ConvPosEnc,
    DaViTBlockPair,
    DualAttention,
    SpatialBlock,
    SpatialWindowAttention,
)

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


def _to_nchw(x):
    return x.permute(0, 3, 1, 2).contiguous()


def _to_nhwc(x):
    return x.permute(0, 2, 3, 1)


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
    assert _shapes(SpatialBlock(16, 2)) == _shapes(timm_davit.SpatialBlock(16, 2))
    assert _shapes(ChannelBlock(16, 2)) == _shapes(timm_davit.ChannelBlock(16, 2, qkv_bias=True))
    stage = timm_davit.DaVitStage(16, 16, depth=1, downsample=False, num_heads=2)
    assert _shapes(DaViTBlockPair(16, 2)) == _shapes(stage.blocks[0])
    assert "0.cpe1.proj.weight" in _shapes(DaViTBlockPair(16, 2))
    assert _shapes(ConvPosEnc(16))["proj.weight"] == (16, 1, 3, 3)


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


@pytest.mark.parametrize("height,width", [(15, 17), (9, 9), (1, 1)])
def test_dual_attention_loads_timm_attention_and_matches(height, width):
    """create_mixer("dual") builds DualAttention: timm's attn.* weights load by name, outputs equal timm's."""
    x = torch.randn(2, height, width, 16)
    ref = _randomize(timm_davit.WindowAttention(16, (7, 7), 2), seed=1).eval()
    spatial = DualAttention(16, 2, attention="spatial").eval()
    spatial.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(spatial(x), _timm_windowed(ref, x, 7), atol=1e-5, rtol=1e-5)
    ref = _randomize(timm_davit.ChannelAttention(16, 2, qkv_bias=True), seed=2).eval()
    channel = DualAttention(16, 2, attention="channel", window_size=3).eval()  # window_size unused here
    channel.load_state_dict(ref.state_dict(), strict=True)
    expected = ref(x.reshape(2, height * width, 16)).reshape(2, height, width, 16)
    torch.testing.assert_close(channel(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_dual_attention_equals_the_named_modules(qkv_bias):
    x = torch.randn(2, 7, 9, 16)
    pairs = [
        (SpatialWindowAttention(16, 4, window_size=4, qkv_bias=qkv_bias), dict(attention="spatial", window_size=4)),
        (ChannelGroupAttention(16, 4, qkv_bias=qkv_bias), dict(attention="channel")),
    ]
    for named, kwargs in pairs:
        dual = DualAttention(16, 4, qkv_bias=qkv_bias, **kwargs)
        dual.load_state_dict(named.state_dict(), strict=True)
        torch.testing.assert_close(dual(x), named(x), atol=0, rtol=0)
    assert DualAttention(16, 4).attention == "spatial" and DualAttention(16, 4).window_size == 7


@pytest.mark.parametrize("cpe_act", [False, True])
@pytest.mark.parametrize("height,width", SIZES)
def test_blocks_match_timm(height, width, cpe_act):
    x = torch.randn(2, height, width, 16)
    pairs = [
        (timm_davit.SpatialBlock(16, 2, window_size=7, drop_path=0.2, cpe_act=cpe_act), SpatialBlock),
        (timm_davit.ChannelBlock(16, 2, qkv_bias=True, drop_path=0.2, cpe_act=cpe_act), ChannelBlock),
    ]
    for ref, cls in pairs:
        ref = _randomize(ref).eval()
        block = cls(16, 2, drop_path=0.2, cpe_act=cpe_act).eval()
        block.load_state_dict(ref.state_dict())
        torch.testing.assert_close(block(x), _to_nhwc(ref(_to_nchw(x))), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height,width", [(15, 17), (9, 9), (1, 1)])
def test_block_pairs_load_timm_stage_blocks_and_match(height, width):
    stage = _randomize(timm_davit.DaVitStage(16, 16, depth=2, downsample=False, num_heads=2, window_size=5)).eval()
    pairs = torch.nn.Sequential(*(DaViTBlockPair(16, 2, window_size=5) for _ in range(2))).eval()
    pairs.load_state_dict(stage.blocks.state_dict(), strict=True)
    x = torch.randn(2, height, width, 16)
    torch.testing.assert_close(pairs(x), _to_nhwc(stage(_to_nchw(x))), atol=1e-5, rtol=1e-5)


def test_blocks_without_ffn():
    x = torch.randn(1, 9, 11, 16)
    ref = _randomize(timm_davit.ChannelBlock(16, 2, qkv_bias=True, ffn=False)).eval()
    block = ChannelBlock(16, 2, ffn=False).eval()
    block.load_state_dict(ref.state_dict())
    torch.testing.assert_close(block(x), _to_nhwc(ref(_to_nchw(x))), atol=1e-5, rtol=1e-5)
    # timm's ffn=False SpatialBlock cannot run; an MLP whose last layer is zero contributes nothing instead
    ref = _randomize(timm_davit.SpatialBlock(16, 2)).eval()
    with torch.no_grad():
        ref.mlp.fc2.weight.zero_()
        ref.mlp.fc2.bias.zero_()
    block = SpatialBlock(16, 2, ffn=False).eval()
    assert block.mlp is None and not any(k.startswith(("norm2", "mlp")) for k in block.state_dict())
    block.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith(("norm2", "mlp"))})
    torch.testing.assert_close(block(x), _to_nhwc(ref(_to_nchw(x))), atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize(
    "factory",
    [
        SpatialWindowAttention,
        ChannelGroupAttention,
        DaViTBlockPair,
        lambda dim, heads: DualAttention(dim, heads, attention="spatial"),
        lambda dim, heads: DualAttention(dim, heads, attention="channel"),
    ],
)
def test_bf16_autocast(factory):
    """The mixers return bf16; a block pair keeps its fp32 residual stream (bf16 branches are added to it)."""
    module = _randomize(factory(32, 4), seed=3).eval()
    x = torch.randn(2, 15, 17, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    pair = isinstance(module, DaViTBlockPair)
    assert out.dtype == (torch.float32 if pair else torch.bfloat16) and out.shape == x.shape
    ref = module(x)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2


def test_every_parameter_gets_a_gradient():
    pair = DaViTBlockPair(16, 2, drop_path=(0.1, 0.2), window_size=4).train()
    assert pair[0].drop_path1.drop_prob == 0.1 and pair[1].drop_path2.drop_prob == 0.2
    pair(torch.randn(2, 7, 9, 16)).sum().backward()
    missing = [n for n, p in pair.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    for attention in ("spatial", "channel"):
        dual = DualAttention(16, 2, attention=attention, window_size=4).train()
        dual(torch.randn(2, 7, 9, 16)).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dual.parameters())


@pytest.mark.parametrize("height,width", [(7, 9), (15, 17), (1, 1)])
def test_shapes(height, width):
    x = torch.randn(2, height, width, 16)
    modules = (
        SpatialWindowAttention(16, 2),
        ChannelGroupAttention(16, 2),
        DaViTBlockPair(16, 2),
        DualAttention(16, 2, attention="spatial", window_size=4),
        DualAttention(16, 2, attention="channel"),
    )
    for module in modules:
        assert module(x).shape == x.shape


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    pair = DaViTBlockPair(16, 2, window_size=4).eval()
    compiled = torch.compile(pair, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for shape in [(2, 9, 11, 16), (2, 6, 13, 16)]:
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), pair(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["spatial", "channel"])
def test_dual_attention_compiles_fullgraph(attention):
    dual = DualAttention(16, 2, attention=attention, window_size=4).eval()
    x = torch.randn(2, 9, 11, 16)
    compiled = torch.compile(dual, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), dual(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "factory,error,message",
    [
        (lambda: SpatialWindowAttention(30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: ChannelGroupAttention(30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: SpatialWindowAttention(32, 4, window_size=0), ValueError, "window_size must be >= 1, got 0"),
        (lambda: SpatialWindowAttention(32, 4, window_size=2.5), TypeError, "window_size must be an int"),
        (lambda: SpatialBlock(32, 4, mlp_ratio=0), ValueError, "mlp_ratio must be > 0, got 0"),
        (lambda: ChannelBlock(32, 4, drop_path=1.5), ValueError, r"drop_path must lie in \[0.0, 1.0\], got 1.5"),
        (lambda: DaViTBlockPair(32, 4, drop_path=(0.1,)), ValueError, r"drop_path must be a rate or a \(spatial"),
        (lambda: ChannelBlock(32, 0), ValueError, "num_heads must be >= 1"),
        (lambda: ConvPosEnc(32, k=4), ValueError, "k must be odd, got 4"),
        (lambda: DualAttention(32, 4, attention="both"), ValueError, "attention must be one of .*got 'both'"),
        (lambda: DualAttention(32, 4, attention=None), TypeError, "attention must be a str"),
        (lambda: DualAttention(30, 4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: DualAttention(32, 4, window_size=0), ValueError, "window_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments(factory, error, message):
    with pytest.raises(error, match=message):
        factory()


@pytest.mark.parametrize(
    "module",
    [
        SpatialWindowAttention(8, 2),
        ChannelGroupAttention(8, 2),
        DaViTBlockPair(8, 2),
        DualAttention(8, 2, attention="spatial"),
        DualAttention(8, 2, attention="channel"),
    ],
)
def test_bad_input(module):
    with pytest.raises(ValueError, match=r"x must be a channels-last map \(B, H, W, C\), got shape \(1, 16, 8\)"):
        module(torch.randn(1, 16, 8))
    with pytest.raises(ValueError, match="x has 4 channels but the module was built with dim=8"):
        module(torch.randn(1, 4, 4, 4))
