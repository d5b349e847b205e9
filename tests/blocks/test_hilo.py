"""HiLo (LITv2): head split, Hi-Fi windows, Lo-Fi pooled attention, padding, checkpoint names, errors."""

import pytest
import torch

from attnzoo.blocks.hilo import HiLo
from tests.fixtures import FIXTURES


def _softmax_attention(q, k, v, scale, mask=None):
    """(..., Nq, d) x (..., Nk, d): explicit logits, softmax, weighted sum."""
    logits = torch.einsum("...id,...jd->...ij", q, k) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.einsum("...ij,...jd->...id", logits.softmax(-1), v)


def _heads(t, heads):
    """(B, H, W, heads*d) -> (B, heads, H*W, d)."""
    b, h, w, c = t.shape
    return t.reshape(b, h * w, heads, c // heads).permute(0, 2, 1, 3)


def _unheads(t, h, w):
    b, heads, _, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, h, w, heads * d)


def hand_window_branch(m, x):
    """Hi-Fi by hand: dense attention masked to 'same s x s window' (x already padded to multiples of s)."""
    b, h, w, _ = x.shape
    s = m.ws
    q, k, v = m.h_qkv(x).chunk(3, dim=-1)
    rows = torch.arange(h).repeat_interleave(w) // s
    cols = torch.arange(w).repeat(h) // s
    same_window = (rows[:, None] == rows[None, :]) & (cols[:, None] == cols[None, :])
    out = _softmax_attention(_heads(q, m.h_heads), _heads(k, m.h_heads), _heads(v, m.h_heads), m.scale, same_window)
    return m.h_proj(_unheads(out, h, w))


def hand_pooled_branch(m, x):
    """Lo-Fi by hand: keys/values from the mean over each s x s block (x already padded)."""
    b, h, w, c = x.shape
    s = m.ws
    pooled = x.reshape(b, h // s, s, w // s, s, c).mean(dim=(2, 4))
    k, v = m.l_kv(pooled).chunk(2, dim=-1)
    out = _softmax_attention(_heads(m.l_q(x), m.l_heads), _heads(k, m.l_heads), _heads(v, m.l_heads), m.scale)
    return m.l_proj(_unheads(out, h, w))


def _double(m):
    torch.manual_seed(0)
    m = m.double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return m


def test_parameter_names_and_shapes_match_litv2_checkpoint():
    sd = torch.load(FIXTURES / "litv2_reduced.pt", weights_only=True)["state_dict"]
    for prefix, mixer in (
        ("layers.2.blocks.0.attn.", HiLo(96, 12, qkv_bias=True, window_size=2, alpha=0.9)),
        ("layers.3.blocks.0.attn.", HiLo(192, 24, qkv_bias=True, window_size=1, alpha=0.9)),
    ):
        expected = {k[len(prefix) :]: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}
        assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == expected
        mixer.load_state_dict({k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)})


def test_head_split_follows_int_of_heads_times_alpha():
    m = HiLo(96, 12, window_size=2, alpha=0.9)
    assert (m.l_heads, m.h_heads, m.l_dim, m.h_dim) == (10, 2, 80, 16)
    m = HiLo(24, 3, window_size=2, alpha=0.9)  # int(2.7) = 2
    assert (m.l_heads, m.h_heads) == (2, 1)
    assert not hasattr(HiLo(16, 2, alpha=0.0), "l_q") and not hasattr(HiLo(16, 2, alpha=1.0), "h_qkv")
    assert not hasattr(HiLo(16, 2, window_size=1, alpha=0.0), "h_qkv")


def test_alpha_0_is_pure_window_attention():
    m = _double(HiLo(16, 2, qkv_bias=True, window_size=2, alpha=0.0))
    x = torch.randn(2, 6, 8, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), hand_window_branch(m, x), atol=1e-10, rtol=1e-10)


def test_alpha_1_is_pure_pooled_attention():
    m = _double(HiLo(16, 2, qkv_bias=True, window_size=3, alpha=1.0))
    x = torch.randn(2, 6, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), hand_pooled_branch(m, x), atol=1e-10, rtol=1e-10)


def test_mixed_heads_concatenate_hifi_then_lofi():
    m = _double(HiLo(32, 4, qkv_bias=True, window_size=2, alpha=0.5))
    x = torch.randn(2, 8, 6, 32, dtype=torch.float64)
    expected = torch.cat([hand_window_branch(m, x), hand_pooled_branch(m, x)], dim=-1)
    torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_window_1_is_global_mhsa_through_lofi_projections(alpha):
    m = _double(HiLo(16, 4, qkv_bias=True, window_size=1, alpha=alpha))
    assert m.l_heads == 4 and m.h_heads == 0
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)
    k, v = m.l_kv(x).chunk(2, dim=-1)
    out = _softmax_attention(_heads(m.l_q(x), 4), _heads(k, 4), _heads(v, 4), 4**-0.5)
    torch.testing.assert_close(m(x), m.l_proj(_unheads(out, 5, 7)), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("size", [(15, 17), (7, 9), (1, 1), (4, 5)])
@pytest.mark.parametrize("window", [2, 3])
def test_indivisible_maps_are_zero_padded_then_each_branch_cropped(size, window):
    h, w = size
    m = _double(HiLo(24, 3, qkv_bias=True, window_size=window, alpha=0.5))
    x = torch.randn(1, h, w, 24, dtype=torch.float64)
    ph, pw = -h % window, -w % window
    padded = torch.zeros(1, h + ph, w + pw, 24, dtype=torch.float64)
    padded[:, :h, :w] = x
    expected = torch.cat([hand_window_branch(m, padded)[:, :h, :w], hand_pooled_branch(m, padded)[:, :h, :w]], dim=-1)
    out = m(x)
    assert out.shape == (1, h, w, 24)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_qk_scale_overrides_head_dim_scale():
    m = _double(HiLo(16, 2, window_size=2, alpha=0.0, qk_scale=0.3))
    assert m.scale == 0.3
    x = torch.randn(1, 4, 4, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), hand_window_branch(m, x), atol=1e-10, rtol=1e-10)


def test_dropout_arguments_are_not_applied_like_the_reference():
    m = HiLo(16, 2, attn_drop=0.5, proj_drop=0.5).train()
    x = torch.randn(1, 4, 4, 16)
    torch.testing.assert_close(m(x), m(x))


def test_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    m = HiLo(32, 4, qkv_bias=True, window_size=2, alpha=0.5)
    x = torch.randn(2, 7, 9, 32)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("window,alpha", [(2, 0.5), (1, 0.5), (2, 0.0), (2, 1.0)])
def test_every_parameter_gets_a_gradient(window, alpha):
    torch.manual_seed(0)
    m = HiLo(16, 2, qkv_bias=True, window_size=window, alpha=alpha).train()
    m(torch.randn(2, 5, 6, 16)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    m = HiLo(16, 2, qkv_bias=True, window_size=2, alpha=0.5).eval()
    x = torch.randn(2, 7, 6, 16)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"dim": 30, "num_heads": 4}, ValueError, "dim .30. must be divisible by num_heads .4."),
        ({"alpha": -0.1}, ValueError, r"alpha must lie in \[0.0, 1.0\]"),
        ({"alpha": 1.5}, ValueError, r"alpha must lie in \[0.0, 1.0\]"),
        ({"alpha": "half"}, TypeError, "alpha must be a real number"),
        ({"window_size": 0}, ValueError, "window_size must be >= 1"),
        ({"window_size": 2.0}, TypeError, "window_size must be an int"),
        ({"qk_scale": -1.0}, ValueError, "qk_scale must be > 0"),
        ({"attn_drop": 1.5}, ValueError, "attn_drop must lie in"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = {"dim": 16, "num_heads": 2, **kwargs}
    with pytest.raises(error, match=match):
        HiLo(**args)


def test_bad_inputs_are_rejected():
    m = HiLo(16, 2)
    with pytest.raises(AssertionError, match=r"channels-last map \(B, H, W, C\)"):
        m(torch.randn(2, 16, 16))
    with pytest.raises(AssertionError, match="dim=16"):
        m(torch.randn(1, 4, 4, 8))
