"""AgentAttention against hand-written references (pooling bins, bilinear tables, DWC built by hand)."""

import math

import pytest
import torch

from attnzoo.blocks.agent import AgentAttention
from attnzoo.blocks.block import MixerBlock

DIM, HEADS = 24, 3


# ----------------------------------------------------------------------------- hand-written reference
def pool_matrix(height, width, p, dtype, pw=None):
    """(p*pw, H*W) averaging matrix of adaptive average pooling: bin i spans [floor(iH/p), ceil((i+1)H/p))."""
    pw = p if pw is None else pw
    mat = torch.zeros(p * pw, height * width, dtype=dtype)
    for i in range(p):
        y0, y1 = (i * height) // p, -((-(i + 1) * height) // p)
        for j in range(pw):
            x0, x1 = (j * width) // pw, -((-(j + 1) * width) // pw)
            for y in range(y0, y1):
                for x in range(x0, x1):
                    mat[i * pw + j, y * width + x] = 1.0 / ((y1 - y0) * (x1 - x0))
    return mat


def resize_matrix(out_size, in_size, dtype):
    """(out, in) weights of 1-D linear resampling with half-pixel centres (align_corners=False)."""
    mat = torch.zeros(out_size, in_size, dtype=dtype)
    for o in range(out_size):
        src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        mat[o, i0] += 1.0 - frac
        mat[o, i1] += frac
    return mat


def reference(m, x, height, width, prefix=0):
    """Agent attention written out with einsums on a (B, P + H*W, C) sequence.

    The map may differ from the module's window (the row/column terms are resampled to it) and the agents may
    be pooled to ``m.agent_grid`` (every bias resampled over the agent grid), as the authors' dense backbones do.
    """
    batch, _, channels = x.shape
    heads, d, p = m.num_heads, channels // m.num_heads, math.isqrt(m.agent_num)
    (gh, gw), (wh, ww) = m.agent_grid, m.window_size
    q, k, v = torch.nn.functional.linear(x, m.qkv.weight, m.qkv.bias).chunk(3, dim=-1)
    agents = torch.einsum("ap,bpc->bac", pool_matrix(height, width, gh, x.dtype, gw), q[:, prefix:])

    def split(t):  # (B, L, C) -> (B, h, L, d)
        return t.reshape(batch, t.shape[1], heads, d).permute(0, 2, 1, 3)

    q, k, v, agents = split(q), split(k), split(v), split(agents)
    ry, rx = resize_matrix(height, 7, x.dtype), resize_matrix(width, 7, x.dtype)
    an = torch.einsum("yi,hnij,xj->hnyx", ry, m.an_bias, rx)
    na = torch.einsum("yi,hnij,xj->hnyx", ry, m.na_bias, rx)
    wy, wx = resize_matrix(height, wh, x.dtype), resize_matrix(width, ww, x.dtype)  # window -> map
    rows = torch.einsum("yi,hni->hny", wy, m.ah_bias[0, ..., 0])[..., None]
    cols = torch.einsum("xj,hnj->hnx", wx, m.aw_bias[0, :, :, 0])[..., None, :]
    b_ak = an + rows + cols  # (h, n, H, W)
    rows = torch.einsum("yi,hin->hny", wy, m.ha_bias[0, :, :, 0])[..., None]
    cols = torch.einsum("xj,hjn->hnx", wx, m.wa_bias[0, :, 0])[..., None, :]
    b_qa = na + rows + cols  # (h, n, H, W)
    # over the agents: a p x p grid resampled to gh x gw
    gy, gx = resize_matrix(gh, p, x.dtype), resize_matrix(gw, p, x.dtype)
    b_ak = torch.einsum("ai,bj,hijl->habl", gy, gx, b_ak.reshape(heads, p, p, -1)).reshape(heads, gh * gw, -1)
    b_qa = torch.einsum("ai,bj,hijl->habl", gy, gx, b_qa.reshape(heads, p, p, -1)).reshape(heads, gh * gw, -1)
    b_qa = b_qa.transpose(1, 2)
    if prefix:
        b_ak = torch.cat([m.ac_bias[0], b_ak], dim=2)
        b_qa = torch.cat([m.ca_bias[0], b_qa], dim=1)
    s = m.scale
    agent_v = torch.softmax(torch.einsum("bhad,bhkd->bhak", agents, k) * s + b_ak, dim=-1) @ v
    out = torch.softmax(torch.einsum("bhqd,bhad->bhqa", q, agents) * s + b_qa, dim=-1) @ agent_v
    out = out.permute(0, 2, 1, 3).reshape(batch, -1, channels)
    # depthwise 3x3 with zero padding, as a sum of shifted copies of the padded value map
    vp = v[:, :, prefix:].permute(0, 2, 1, 3).reshape(batch, height, width, channels)
    vp = torch.nn.functional.pad(vp, (0, 0, 1, 1, 1, 1))
    kernel = m.dwc.weight[:, 0]  # (C, 3, 3)
    local = sum(vp[:, i : i + height, j : j + width] * kernel[:, i, j] for i in range(3) for j in range(3))
    local = (local + m.dwc.bias).reshape(batch, height * width, channels)
    out = torch.cat([out[:, :prefix], out[:, prefix:] + local], dim=1)
    return out @ m.proj.weight.T + m.proj.bias


def build(height, width, agent_num=9, prefix=0, dtype=torch.float64, scale_biases=1.0, **kw):
    torch.manual_seed(0)
    kw.setdefault("window_size", (height, width))
    m = AgentAttention(DIM, HEADS, agent_num=agent_num, num_prefix_tokens=prefix, **kw).to(dtype)
    with torch.no_grad():  # O(1) weights and biases so every term matters
        for name, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (scale_biases if name.endswith("_bias") else 1.0 / math.sqrt(DIM)))
    return m.eval()


# ----------------------------------------------------------------------------- identities
@pytest.mark.parametrize("height,width,agent_num", [(7, 9, 9), (7, 9, 4), (15, 17, 4), (8, 8, 16)])
def test_two_softmax_identity_without_dwc_and_biases(height, width, agent_num):
    m = build(height, width, agent_num)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("_bias") or name.startswith("dwc."):
                p.zero_()
    x = torch.randn(2, height, width, DIM, dtype=torch.float64)
    tokens = x.flatten(1, 2)
    q, k, v = (tokens @ m.qkv.weight.T + m.qkv.bias).split(DIM, dim=-1)
    # agents: AdaptiveAvgPool2d over the full channel dimension
    pooled = torch.nn.AdaptiveAvgPool2d(math.isqrt(agent_num))(q.transpose(1, 2).reshape(2, DIM, height, width))
    a = pooled.flatten(2).transpose(1, 2)
    d = DIM // HEADS
    s = d**-0.5
    heads_out = []
    for h in range(HEADS):
        qh, kh, vh, ah = (t[..., h * d : (h + 1) * d] for t in (q, k, v, a))
        heads_out.append(torch.softmax(qh @ ah.mT * s, -1) @ (torch.softmax(ah @ kh.mT * s, -1) @ vh))
    expected = torch.nn.functional.linear(torch.cat(heads_out, -1), m.proj.weight, m.proj.bias)
    torch.testing.assert_close(m(x), expected.view_as(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("height,width,agent_num", [(7, 9, 9), (7, 9, 4), (15, 17, 4), (5, 3, 16), (14, 14, 49)])
def test_map_form_with_biases_and_dwc(height, width, agent_num):
    m = build(height, width, agent_num)
    x = torch.randn(2, height, width, DIM, dtype=torch.float64)
    expected = reference(m, x.flatten(1, 2), height, width).view_as(x)
    torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("height,width,agent_num,prefix", [(7, 9, 9, 1), (6, 6, 4, 1), (5, 7, 4, 2)])
def test_cls_sequence_form_with_biases_and_dwc(height, width, agent_num, prefix):
    m = build(height, width, agent_num, prefix=prefix)
    assert m.ac_bias.shape == (1, HEADS, agent_num, prefix) and m.ca_bias.shape == (1, HEADS, prefix, agent_num)
    x = torch.randn(2, prefix + height * width, DIM, dtype=torch.float64)
    out = m(x, grid_size=(height, width))
    torch.testing.assert_close(out, reference(m, x, height, width, prefix), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(m(x, grid_size=(height, width), num_prefix_tokens=prefix), out, atol=0, rtol=0)


# ----------------------------------------------------------------------------- dense backbones (any size)
@pytest.mark.parametrize(
    "height,width,window,agent_num,grid",
    [(7, 9, (7, 9), 9, None), (12, 17, (7, 9), 9, None), (5, 4, (7, 9), 4, None), (10, 11, (6, 6), 4, (3, 5))],
)
def test_dynamic_size_and_agent_grid_match_the_reference(height, width, window, agent_num, grid):
    m = build(height, width, agent_num, window_size=window, dynamic_size=True, agent_grid=grid)
    x = torch.randn(2, height, width, DIM, dtype=torch.float64)
    expected = reference(m, x.flatten(1, 2), height, width).view_as(x)
    torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)


def test_dynamic_size_at_the_window_equals_the_fixed_module():
    fixed, dynamic = build(7, 9, 9), build(7, 9, 9, dynamic_size=True)
    x = torch.randn(2, 7, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(dynamic(x), fixed(x), atol=0, rtol=0)
    with pytest.raises(AssertionError, match=r"or dynamic_size=True"):
        fixed(torch.randn(2, 8, 9, DIM, dtype=torch.float64))


def test_agent_grid_pools_more_agents_from_the_same_parameters(monkeypatch):
    m = build(12, 12, 9, agent_grid=(4, 5))
    assert m.an_bias.shape == (HEADS, 9, 7, 7)  # the trained 3x3 agents' tables
    agents = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        agents.append(q.shape[2])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m(torch.randn(1, 12, 12, DIM, dtype=torch.float64))
    assert agents[0] == 20  # the agent -> key attention has one query per agent
    with pytest.raises(ValueError, match="agent_grid"):
        AgentAttention(12, 3, agent_num=4, window_size=7, num_prefix_tokens=1, agent_grid=(3, 3))


def test_sequence_without_prefix_equals_map():
    m = build(7, 9, 4)
    x = torch.randn(2, 7, 9, DIM, dtype=torch.float64)
    seq = m(x.flatten(1, 2), grid_size=(7, 9))
    torch.testing.assert_close(seq.view_as(x), m(x), atol=0, rtol=0)


def test_qk_scale_is_honoured():
    m = build(7, 9, 4, qk_scale=0.3)
    assert m.scale == 0.3
    x = torch.randn(1, 7, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x.flatten(1, 2), 7, 9).view_as(x), atol=1e-10, rtol=1e-10)


def test_fp32_matches_reference():
    m = build(15, 17, 9, dtype=torch.float32, scale_biases=0.5)
    x = torch.randn(2, 15, 17, DIM)
    torch.testing.assert_close(m(x), reference(m, x.flatten(1, 2), 15, 17).view_as(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- parameters and shapes
def test_parameter_names_and_shapes_follow_the_authors():
    m = AgentAttention(32, 4, agent_num=16, window_size=(7, 9))
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "qkv.weight": (96, 32),
        "qkv.bias": (96,),
        "proj.weight": (32, 32),
        "proj.bias": (32,),
        "dwc.weight": (32, 1, 3, 3),
        "dwc.bias": (32,),
        "an_bias": (4, 16, 7, 7),
        "na_bias": (4, 16, 7, 7),
        "ah_bias": (1, 4, 16, 7, 1),
        "aw_bias": (1, 4, 16, 1, 9),
        "ha_bias": (1, 4, 7, 1, 16),
        "wa_bias": (1, 4, 1, 9, 16),
    }
    deit = AgentAttention(48, 3, agent_num=49, window_size=14, num_prefix_tokens=1)
    assert deit.ac_bias.shape == (1, 3, 49, 1) and deit.ca_bias.shape == (1, 3, 1, 49)
    assert deit.ah_bias.shape == (1, 3, 49, 14, 1)
    assert AgentAttention(8, 2, qkv_bias=False, agent_num=4, window_size=4).qkv.bias is None


def test_channels_last_leaves_the_bias_tables_and_the_output_as_they_are():
    """``.to(memory_format=torch.channels_last)`` used to raise on the 5-D ``*_bias`` tables; now it converts the
    4-D tensors only in effect: every key, shape and value stays, 5-D tables stay contiguous, the output is the same."""
    m = build(7, 9, 4, prefix=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seq = torch.randn(2, 64, DIM, dtype=torch.float64)
    expected = m(seq, grid_size=(7, 9))
    m = m.to(memory_format=torch.channels_last)
    after = m.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}
    for key, value in after.items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert all(v.is_contiguous() for v in after.values() if v.dim() == 5)
    assert m.dwc.weight.is_contiguous(memory_format=torch.channels_last)  # 4-D tensors do take the format
    torch.testing.assert_close(m(seq, grid_size=(7, 9)), expected, rtol=0, atol=0)
    assert m.to(torch.float32).ah_bias.dtype == torch.float32  # other conversions reach the 5-D tables too


@pytest.mark.parametrize("height,width,agent_num", [(15, 17, 9), (7, 9, 4), (1, 1, 4), (2, 3, 1)])
def test_shapes_map_and_sequence(height, width, agent_num):
    m = AgentAttention(16, 2, agent_num=agent_num, window_size=(height, width))
    x = torch.randn(2, height, width, 16)
    out = m(x)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    cls = AgentAttention(16, 2, agent_num=agent_num, window_size=(height, width), num_prefix_tokens=1)
    seq = torch.randn(2, 1 + height * width, 16)
    assert cls(seq, grid_size=(height, width)).shape == seq.shape


def test_bfloat16_autocast():
    m = build(7, 9, 9, dtype=torch.float32, scale_biases=0.5)
    x = torch.randn(2, 7, 9, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    ref = m(x)
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, rel
    cls = build(7, 9, 9, prefix=1, dtype=torch.float32, scale_biases=0.5)
    seq = torch.randn(2, 64, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cls(seq, grid_size=(7, 9))
    ref = cls(seq, grid_size=(7, 9))
    assert out.dtype == torch.bfloat16 and (out.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("prefix", [0, 1])
def test_every_parameter_gets_the_right_gradient(prefix):
    m = build(5, 7, 4, prefix=prefix).train()
    x = torch.randn(2, prefix + 35, DIM, dtype=torch.float64)
    grid = dict(grid_size=(5, 7))
    m(x, **grid).sum().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]
    m.zero_grad()
    reference(m, x, 5, 7, prefix).sum().backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-9, rtol=1e-9, msg=name)


def test_attention_dropout_only_in_training():
    m = build(7, 9, 4, attn_drop=0.5)
    x = torch.randn(2, 7, 9, DIM, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x.flatten(1, 2), 7, 9).view_as(x), atol=1e-10, rtol=1e-10)
    expected = m(x)
    dropped = m.train()(x)
    assert not torch.allclose(dropped, expected)


def test_compile_fullgraph():
    m = build(7, 9, 4, dtype=torch.float32, scale_biases=0.5)
    x = torch.randn(2, 7, 9, DIM)
    torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="aot_eager")(x), m(x))
    cls = build(5, 6, 4, prefix=1, dtype=torch.float32, scale_biases=0.5)
    seq = torch.randn(2, 31, DIM)
    compiled = torch.compile(cls, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(seq, grid_size=(5, 6), num_prefix_tokens=1), cls(seq, grid_size=(5, 6)))


def test_inside_mixer_block_with_cls_token():
    block = MixerBlock(DIM, AgentAttention(DIM, HEADS, agent_num=4, window_size=(4, 5), num_prefix_tokens=1))
    x = torch.randn(2, 21, DIM)
    assert block(x, grid_size=(4, 5), num_prefix_tokens=1).shape == x.shape


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(dim=10, num_heads=3), ValueError, r"dim \(10\) must be divisible by num_heads \(3\)"),
        (dict(agent_num=8), ValueError, "agent_num must be a perfect square"),
        (dict(agent_num=0), ValueError, "agent_num must be >= 1"),
        (dict(agent_num=4.0), TypeError, "agent_num must be an int"),
        (dict(window_size=(7, 0)), ValueError, r"window_size\[1\] must be >= 1"),
        (dict(window_size=(7, 7, 7)), ValueError, "window_size must be an int or a pair"),
        (dict(num_prefix_tokens=-1), ValueError, "num_prefix_tokens must be >= 0"),
        (dict(qk_scale=-1.0), ValueError, "qk_scale must be > 0"),
        (dict(attn_drop=1.5), ValueError, "attn_drop must lie in"),
        (dict(proj_drop=-0.1), ValueError, "proj_drop must lie in"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(dim=12, num_heads=3, agent_num=4, window_size=7) | kwargs
    with pytest.raises(exc, match=match):
        AgentAttention(**args)


def test_bad_inputs():
    m = AgentAttention(12, 3, agent_num=4, window_size=(7, 9))
    with pytest.raises(AssertionError, match="x must be a channels-last map"):
        m(torch.randn(2, 7, 9, 12, 1))
    with pytest.raises(AssertionError, match=r"x must be a channels-last map .* given with grid_size=\(H, W\)"):
        m(torch.randn(2, 63, 12))
    with pytest.raises(AssertionError, match=r"the map must be the window_size \(7, 9\) the module was built for"):
        m(torch.randn(2, 9, 7, 12))
    with pytest.raises(AssertionError, match=r"the map must be the window_size \(7, 9\)"):
        m(torch.randn(2, 63, 12), grid_size=(3, 21))
    with pytest.raises(AssertionError, match=r"x must hold num_prefix_tokens \+ H\*W = 0 \+ 7\*9 tokens"):
        m(torch.randn(2, 64, 12), grid_size=(7, 9))
    with pytest.raises(AssertionError, match=r"with grid_size, x must be a token sequence \(B, N, C\)"):
        m(torch.randn(2, 7, 9, 12), grid_size=(7, 8))
    with pytest.raises(AssertionError, match="x has the wrong number of channels for dim=12"):
        m(torch.randn(2, 7, 9, 8))
    with pytest.raises(AssertionError, match="num_prefix_tokens must be the module's num_prefix_tokens=0"):
        m(torch.randn(2, 64, 12), grid_size=(7, 9), num_prefix_tokens=1)
    cls = AgentAttention(12, 3, agent_num=4, window_size=(7, 9), num_prefix_tokens=1)
    with pytest.raises(AssertionError, match=r"built with num_prefix_tokens=1: give it a \(B, N, C\) sequence"):
        cls(torch.randn(2, 7, 9, 12))
    with pytest.raises(AssertionError, match=r"x must hold num_prefix_tokens \+ H\*W = 1 \+ 7\*9 tokens"):
        cls(torch.randn(2, 63, 12), grid_size=(7, 9))
    with pytest.raises(AssertionError, match="num_prefix_tokens must be the module's num_prefix_tokens=1"):
        cls(torch.randn(2, 64, 12), grid_size=(7, 9), num_prefix_tokens=2)
