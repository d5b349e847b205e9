"""QuadTreeAttention: dense identities, a per-query brute-force reference, checkpoint names, errors."""

import pytest
import torch
import torch.nn.functional as F

from attnzoo.blocks.quadtree import QuadTreeAttention
from tests.fixtures import FIXTURES


def _randomize(m):
    torch.manual_seed(0)
    m = m.double().eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return m


def _nchw_pyramid(m, x):
    """q, k, v pyramids (NCHW, finest first) through the modules themselves."""
    x = x.permute(0, 3, 1, 2)
    q, k, v = [m.q_proj(x)], [m.k_proj(x)], [m.v_proj(x)]
    for level in range(m.sr_ratio - 1):
        q.append(F.avg_pool2d(q[-1], 2))
        k.append(F.avg_pool2d(k[-1], 2))
        v.append(m.value_branchs[level](v[-1]) if m.attn_type == "B" else F.avg_pool2d(v[-1], 2))
    return q, k, v


def dense_quadtree_b(m, x):
    """sum_l softmax(weight)_l * upsample(MHSA_l + LePE_l): variant B when top-k keeps every key."""
    b, h, w, c = x.shape
    heads = m.num_heads
    queries, keys, values = _nchw_pyramid(m, x)
    weight = m.py_att.weight.softmax(0)
    total = 0
    for level in range(m.sr_ratio):
        q, k, v = (t[level] for t in (queries, keys, values))
        hl, wl = q.shape[-2:]
        split = [t.flatten(2).reshape(b, heads, c // heads, hl * wl).transpose(-1, -2) for t in (q, k, v)]
        msg = F.scaled_dot_product_attention(*split).transpose(-1, -2).reshape(b, c, hl, wl)
        coarse_index = m.sr_ratio - 1 - level
        lepe = m.py_att.get_vs[coarse_index](v)
        total = total + F.interpolate((msg + lepe) * weight[coarse_index], size=(h, w), mode="nearest")
    return m.proj(total.permute(0, 2, 3, 1))


def brute_force_quadtree(m, x):
    """Per-query loops written from the paper's description (variants A and B), for tiny maps only."""
    b, h, w, c = x.shape
    heads, d, topk, levels = m.num_heads, c // m.num_heads, m.topk, m.sr_ratio
    queries, keys, values = _nchw_pyramid(m, x)
    out = torch.zeros(b, c, h, w, dtype=x.dtype)
    for bi in range(b):
        for hd in range(heads):
            ch = slice(hd * d, (hd + 1) * d)
            selection = None  # {(row, col): [((key_row, key_col), score), ...]} for the level above
            for coarse_index in range(levels):
                level = levels - 1 - coarse_index
                q, k, v = (t[level][bi, ch] for t in (queries, keys, values))
                hl, wl = q.shape[-2:]
                msg = torch.zeros(d, hl, wl, dtype=x.dtype)
                new_selection = {}
                for i in range(hl):
                    for j in range(wl):
                        if selection is None:
                            cand = [(r, s) for r in range(hl) for s in range(wl)]
                            logits = torch.stack([q[:, i, j] @ k[:, r, s] * m.scale for r, s in cand])
                            probs = logits.softmax(0)
                        else:
                            parent = selection[(i // 2, j // 2)]
                            cand = [(2 * r + a, 2 * s + e) for (r, s), _ in parent for a in (0, 1) for e in (0, 1)]
                            logits = torch.stack([q[:, i, j] @ k[:, r, s] * m.scale for r, s in cand])
                            if m.attn_type == "B":
                                probs = logits.softmax(0)
                            else:  # softmax among the 4 children of each parent key, times that key's score
                                parent_scores = torch.stack([score for _, score in parent])
                                probs = (logits.view(-1, 4).softmax(1) * parent_scores[:, None]).flatten()
                        keep = torch.ones(len(cand), dtype=torch.bool)
                        if level > 0 or (m.attn_type == "A" and levels == 1):
                            top = probs.topk(min(topk, len(cand))).indices
                            new_selection[(i, j)] = [(cand[t], probs[t]) for t in top.tolist()]
                            if m.attn_type == "A":
                                keep[top] = False  # refined below (or, at L = 1, simply dropped)
                        for t, (r, s) in enumerate(cand):
                            if keep[t]:
                                msg[:, i, j] += probs[t] * v[:, r, s]
                if m.attn_type == "B":
                    msg = (msg + m.py_att.get_vs[coarse_index](values[level][bi : bi + 1])[0, ch]) * (
                        m.py_att.weight.softmax(0)[coarse_index]
                    )
                factor = 2**level
                out[bi, ch] += msg.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
                selection = new_selection
    return m.proj(out.permute(0, 2, 3, 1))


@pytest.mark.parametrize(
    "fixture,prefix,dim,heads,levels",
    [
        ("quadtree_b0_reduced.pt", "block1.0.attn.", 16, 1, 4),
        ("quadtree_b0_reduced.pt", "block3.0.attn.", 80, 5, 2),
        ("quadtree_b0_reduced.pt", "block4.0.attn.", 128, 8, 1),
        ("quadtreeA_b0_reduced.pt", "block1.0.attn.", 16, 1, 4),
    ],
)
def test_parameter_names_and_shapes_match_authors_checkpoint(fixture, prefix, dim, heads, levels):
    fx = torch.load(FIXTURES / fixture, weights_only=True)
    attn_type = fx["config"]["attn_type"]
    mixer = QuadTreeAttention(dim, heads, qkv_bias=True, sr_ratio=levels, attn_type=attn_type)
    sub = {k[len(prefix) :]: v for k, v in fx["state_dict"].items() if k.startswith(prefix)}
    assert {k: tuple(v.shape) for k, v in mixer.state_dict().items()} == {k: tuple(v.shape) for k, v in sub.items()}
    mixer.load_state_dict(sub)


@pytest.mark.parametrize("size,levels,topk", [((8, 12), 3, 24), ((8, 8), 2, 10**6), ((4, 4), 3, 8)])
def test_b_with_topk_covering_every_key_is_weighted_sum_of_dense_levels(size, levels, topk):
    # (4, 4) with 3 levels: 1 and 4 coarse tokens < topk, so the default topk keeps everything (clamped)
    m = _randomize(QuadTreeAttention(16, 2, qkv_bias=True, sr_ratio=levels, attn_type="B", topk=topk))
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_quadtree_b(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("size", [(15, 17), (7, 9), (1, 1)])
def test_b_single_level_is_mhsa_plus_lepe(size):
    m = _randomize(QuadTreeAttention(16, 4, qkv_bias=True, sr_ratio=1, attn_type="B", topk=2))
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    xc = x.permute(0, 3, 1, 2)
    q, k, v = (p(xc).flatten(2).unflatten(1, (4, 4)).transpose(-1, -2) for p in (m.q_proj, m.k_proj, m.v_proj))
    attn = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v  # head_dim 4: scale 1/2
    lepe = m.py_att.get_vs[0](m.v_proj(xc))
    expected = m.proj((attn.transpose(-1, -2).reshape(2, 16, *size) + lepe).permute(0, 2, 3, 1))
    out = m(x)
    assert out.shape == (2, *size, 16)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("attn_type", ["A", "B"])
@pytest.mark.parametrize("size,levels,topk", [((8, 8), 3, 2), ((4, 8), 2, 3), ((3, 5), 1, 4)])
def test_partial_topk_matches_per_query_brute_force(attn_type, size, levels, topk):
    m = _randomize(QuadTreeAttention(8, 2, qkv_bias=True, sr_ratio=levels, attn_type=attn_type, topk=topk))
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), brute_force_quadtree(m, x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("attn_type", ["A", "B"])
@pytest.mark.parametrize(
    "size,levels",
    [
        (
            (12, 20),
            3,
        ),
        ((14, 18), 2),
        ((7, 9), 1),
        ((1, 1), 1),
    ],
)
def test_shapes_on_odd_and_non_square_maps(attn_type, size, levels):
    m = QuadTreeAttention(32, 4, sr_ratio=levels, attn_type=attn_type)
    out = m(torch.randn(2, *size, 32))
    assert out.shape == (2, *size, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("attn_type", ["A", "B"])
def test_bf16_autocast_matches_fp32(attn_type):
    m = _randomize(QuadTreeAttention(32, 4, qkv_bias=True, sr_ratio=2, attn_type=attn_type, topk=64)).float()
    with torch.no_grad():  # smaller weights keep the attention soft, so bf16 rounding cannot flip a selection
        for p in m.parameters():
            p.mul_(0.3)
    x = torch.randn(2, 8, 8, 32)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("attn_type,levels", [("A", 3), ("B", 3), ("A", 1)])
def test_every_parameter_gets_a_gradient(attn_type, levels):
    torch.manual_seed(0)
    m = QuadTreeAttention(16, 2, qkv_bias=True, sr_ratio=levels, attn_type=attn_type, topk=2).train()
    m(torch.randn(2, 8, 8, 16)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_single_level_b_weight_gets_a_zero_gradient_by_design():
    # softmax over one level weight is the constant 1: the parameter exists only for checkpoint compatibility
    m = QuadTreeAttention(16, 2, qkv_bias=True, sr_ratio=1, attn_type="B").train()
    m(torch.randn(2, 5, 6, 16)).sum().backward()
    assert torch.equal(m.py_att.weight.grad, torch.zeros(1))
    for name, p in m.named_parameters():
        if name != "py_att.weight":
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compile_fullgraph_matches_eager():
    """Type A here; type B (the default) compiles in tests/blocks/test_mixers.py::test_compile_fullgraph."""
    torch.manual_seed(0)
    m = QuadTreeAttention(16, 2, qkv_bias=True, sr_ratio=3, attn_type="A", topk=2).eval()
    x = torch.randn(2, 8, 12, 16)
    # dynamic=False: after test_mixers compiled type B at another size, dynamo would trace this one with symbolic
    # shapes (44 s instead of 3 s in the suite); dynamic shapes are not what this test is about
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"dim": 30, "num_heads": 4}, ValueError, "dim .30. must be divisible by num_heads .4."),
        ({"sr_ratio": 0}, ValueError, "sr_ratio must be >= 1"),
        ({"sr_ratio": 2.0}, TypeError, "sr_ratio must be an int"),
        ({"topk": 0}, ValueError, "topk must be >= 1"),
        ({"attn_type": "C"}, ValueError, r"attn_type must be one of \('A', 'B'\)"),
        ({"attn_type": None}, ValueError, "attn_type must be one of"),
        ({"qk_scale": 0.0}, ValueError, "qk_scale must be > 0"),
        ({"proj_drop": -0.1}, ValueError, "proj_drop must lie in"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = {"dim": 16, "num_heads": 2, **kwargs}
    with pytest.raises(error, match=match):
        QuadTreeAttention(**args)


def test_bad_inputs_are_rejected():
    m = QuadTreeAttention(16, 2, sr_ratio=3)
    with pytest.raises(AssertionError, match=r"divisible by 2\*\*\(sr_ratio-1\) = 4"):
        m(torch.randn(1, 8, 6, 16))
    with pytest.raises(AssertionError, match=r"channels-last map \(B, H, W, C\)"):
        m(torch.randn(2, 64, 16))
    with pytest.raises(AssertionError, match="dim=16"):
        m(torch.randn(1, 8, 8, 4))
