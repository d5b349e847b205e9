"""Recording QuadTree, Sparsifiner and Agent attention: each record recomputes its mixer's output, its weights
are rows of a softmax over exactly the keys the mechanism allows (rebuilt here independently, densely), and
recording leaves the forward's result untouched."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from attnzoo.blocks.agent import AgentAttention
from attnzoo.blocks.quadtree import QuadTreeAttention
from attnzoo.blocks.record import record_attention
from attnzoo.blocks.sparsifiner import SparsifinerAttention


def _randomize(m, dtype=torch.float64):
    torch.manual_seed(0)
    m = m.to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(std=0.5)
    return m


def _recorded(m, *args, **kwargs):
    """The forward's output and its one record; the recorder must be gone afterwards."""
    with record_attention(m) as records:
        out = m(*args, **kwargs)
    assert not m.recording and "_recorder" not in vars(m)
    (record,) = records[""]
    return out, record


def _densify(attn, keys, n_keys):
    """``(..., K)`` weights at key positions ``keys`` (``None``: all keys in order) -> ``(..., n_keys)``."""
    if keys is None:
        return attn
    return attn.new_zeros(*attn.shape[:-1], n_keys).scatter_add(-1, keys, attn)


def _gather(v, keys):
    """``v`` ``(B, h, N, d)`` at ``keys`` ``(B, h, Nq, K)`` -> ``(B, h, Nq, K, d)``."""
    flat = keys.flatten(2)[..., None].expand(-1, -1, -1, v.shape[-1])
    return v.gather(2, flat).view(*keys.shape, v.shape[-1])


# ----------------------------------------------------------------------------------------------------- QuadTree

QT_SIZE = (8, 12)  # three levels: 8x12, 4x6, 2x3; topk=3 < 6 coarse keys and < 12 candidates


def _quadtree(attn_type, dtype=torch.float64):
    m = _randomize(QuadTreeAttention(16, num_heads=2, sr_ratio=3, attn_type=attn_type, topk=3), dtype)
    torch.manual_seed(1)
    return m, torch.randn(2, *QT_SIZE, 16, dtype=dtype)


def _quadtree_output(m, record):
    """The module's output from the record, its ``proj`` and nothing else."""
    out = None
    for i, level in enumerate(record.levels):
        batch, heads, _, d = level.v.shape
        if level.keys is None:
            message = level.attn @ level.v
        else:
            message = torch.einsum("bhnk,bhnkd->bhnd", level.attn, _gather(level.v, level.keys))
        term = message.transpose(1, 2).reshape(batch, *level.size, heads * d)
        if record.attn_type == "B":
            term = (term + level.lepe) * record.level_weight[i]
        out = term if out is None else out.repeat_interleave(2, 1).repeat_interleave(2, 2) + term
    return m.proj(out)


def _parent_index(height, width):
    """Raster index, at the coarser level, of each position's parent at a ``height x width`` level."""
    rows, cols = torch.arange(height) // 2, torch.arange(width) // 2
    return (rows[:, None] * (width // 2) + cols[None, :]).flatten()


def _quadtree_reference(m, x):
    """Dense ``(B, heads, N_i, N_i)`` weights per level (coarsest first) and the keys each level allows,
    written from the paper with masks over all keys, not gathers."""
    b, heads, d, t = x.shape[0], m.num_heads, m.head_dim, m.topk
    q, k = [m.q_proj(x.permute(0, 3, 1, 2))], [m.k_proj(x.permute(0, 3, 1, 2))]
    for _ in range(m.sr_ratio - 1):
        q.append(F.avg_pool2d(q[-1], 2))
        k.append(F.avg_pool2d(k[-1], 2))
    weights, allowed = [], []
    selected = parent_score = None  # (B, h, N, N) dense at the level above
    for i in range(m.sr_ratio):
        ql, kl = q[m.sr_ratio - 1 - i], k[m.sr_ratio - 1 - i]
        height, width = ql.shape[-2:]
        ql, kl = (u.reshape(b, heads, d, height * width).transpose(-1, -2) for u in (ql, kl))
        logits = (ql @ kl.transpose(-1, -2)) * m.scale
        finest = i == m.sr_ratio - 1
        if i == 0:
            cand = torch.ones_like(logits, dtype=torch.bool)
        else:
            parent = _parent_index(height, width)
            cand = selected[:, :, parent][:, :, :, parent]  # key's parent selected by query's parent
        if m.attn_type == "B":
            probs = logits.masked_fill(~cand, float("-inf")).softmax(-1)
            keep = cand
            if not finest:
                selected = torch.zeros_like(cand).scatter(-1, probs.topk(t, dim=-1).indices, True)
        else:
            if i == 0:
                probs = logits.softmax(-1)
            else:  # softmax among the 4 siblings of each key, times the parent key's score
                sib = logits.view(*logits.shape[:-1], height // 2, 2, width // 2, 2)
                sib = sib.permute(0, 1, 2, 3, 5, 4, 6).flatten(-2).softmax(-1)
                sib = sib.view(*logits.shape[:-1], height // 2, width // 2, 2, 2).permute(0, 1, 2, 3, 5, 4, 6)
                probs = sib.reshape(logits.shape) * parent_score[:, :, parent][:, :, :, parent]
            keep = cand.clone()
            if not finest:
                score, top = probs.topk(t, dim=-1)
                selected = torch.zeros_like(cand).scatter(-1, top, True)
                parent_score = torch.zeros_like(probs).scatter(-1, top, score)
                probs = probs.masked_fill(selected, 0.0)  # refined below, so left out here
                keep &= ~selected
        weights.append(probs)
        allowed.append(keep)
    return weights, allowed


@pytest.mark.parametrize("attn_type", ["A", "B"])
def test_quadtree_record_recomputes_output_and_matches_dense_reference(attn_type):
    m, x = _quadtree(attn_type)
    plain = m(x)
    out, record = _recorded(m, x)
    assert torch.equal(out, plain)
    assert record.kind == "quadtree" and record.map_size == QT_SIZE and record.attn_type == attn_type
    assert [level.size for level in record.levels] == [(2, 3), (4, 6), (8, 12)]
    assert record.levels[0].keys is None and record.levels[0].attn.shape == (2, 2, 6, 6)
    assert [tuple(level.attn.shape) for level in record.levels[1:]] == [(2, 2, 24, 12), (2, 2, 96, 12)]
    torch.testing.assert_close(_quadtree_output(m, record), out, atol=1e-5, rtol=0)

    reference, allowed = _quadtree_reference(m, x)
    totals = torch.zeros(2, 2, *QT_SIZE, dtype=x.dtype)
    for i, level in enumerate(record.levels):
        n = level.size[0] * level.size[1]
        dense = _densify(level.attn, level.keys, n)
        assert torch.all(dense[~allowed[i]] == 0), f"level {i} weighs a key it may not use"
        torch.testing.assert_close(dense, reference[i], atol=1e-10, rtol=0)
        rows = dense.sum(-1).view(2, 2, *level.size)
        if attn_type == "B":
            torch.testing.assert_close(rows, torch.ones_like(rows))
        scale = 2 ** (len(record.levels) - 1 - i)
        totals += rows.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    if attn_type == "A":  # each finest query's weights over all levels (its ancestors' rows) total 1
        torch.testing.assert_close(totals, torch.ones_like(totals))
    else:
        for i, level in enumerate(record.levels):  # LePE: the level's depthwise conv of its values
            v_map = level.v.transpose(1, 2).reshape(2, *level.size, 16).permute(0, 3, 1, 2)
            torch.testing.assert_close(level.lepe, m.py_att.get_vs[i](v_map).permute(0, 2, 3, 1))
        torch.testing.assert_close(record.level_weight, m.py_att.weight.softmax(0))


@pytest.mark.parametrize("attn_type", ["A", "B"])
def test_quadtree_record_float32(attn_type):
    m, x = _quadtree(attn_type, torch.float32)
    plain = m(x)
    out, record = _recorded(m, x)
    assert torch.equal(out, plain) and record.levels[1].attn.dtype == torch.float32
    torch.testing.assert_close(_quadtree_output(m, record), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_type", ["A", "B"])
def test_quadtree_query_maps(attn_type):
    m, x = _quadtree(attn_type)
    _, record = _recorded(m, x)
    maps = record.query_maps(5, 7, batch=1)
    assert [qm.title for qm in maps] == ["level 0 (2x3): 6 keys", "level 1 (4x6): 12 keys", "level 2 (8x12): 12 keys"]
    assert [tuple(qm.values.shape) for qm in maps] == [(2, 3), (4, 6), (8, 12)]
    assert [qm.marker for qm in maps] == [(1, 1), (2, 3), (5, 7)]
    sums = torch.stack([qm.values.sum() for qm in maps])
    if attn_type == "B":
        torch.testing.assert_close(sums, torch.ones_like(sums))
    else:
        torch.testing.assert_close(sums.sum(), sums.new_tensor(1.0))
    with pytest.raises(ValueError):
        record.query_maps(8, 0)
    with pytest.raises(ValueError):
        record.query_maps(0, 0, batch=2)


# -------------------------------------------------------------------------------------------------- Sparsifiner

SPARSIFINER_CASES = {
    "map": (dict(num_tokens=36), (2, 6, 6, 16), {}),
    "prefix": (dict(num_tokens=37), (2, 37, 16), dict(grid_size=(6, 6), num_prefix_tokens=1)),
    "masked": (dict(num_tokens=37, sparse_impl="masked"), (2, 37, 16), dict(grid_size=(6, 6), num_prefix_tokens=1)),
    "dense": (dict(num_tokens=37, keep_ratio=1.0), (2, 37, 16), dict(grid_size=(6, 6), num_prefix_tokens=1)),
}


def _sparsifiner(case, dtype=torch.float64):
    kwargs, shape, call = SPARSIFINER_CASES[case]
    m = _randomize(SparsifinerAttention(16, 2, **kwargs), dtype)
    torch.manual_seed(1)
    return m, torch.randn(*shape, dtype=dtype), call


def _sparsifiner_output(m, record, shape):
    kept = torch.einsum("bhnk,bhnkd->bhnd", record.attn, _gather(record.v, record.index))
    out = torch.cat([record.prefix_attn @ record.v, kept], dim=2)
    return m.proj(out.transpose(1, 2).flatten(2)).view(shape)


@pytest.mark.parametrize("case", list(SPARSIFINER_CASES))
def test_sparsifiner_record_recomputes_output_over_the_predicted_keys(case):
    m, x, call = _sparsifiner(case)
    plain = m(x, **call)
    out, record = _recorded(m, x, **call)
    assert torch.equal(out, plain)
    prefix, n, budget = call.get("num_prefix_tokens", 0), m.num_tokens, m.attn_budget
    assert record.kind == "sparsifiner" and record.map_size == (6, 6) and record.num_prefix_tokens == prefix
    assert record.dense == (case == "dense")
    assert record.attn.shape == record.index.shape == (2, 2, n - prefix, budget)
    assert record.prefix_attn.shape == (2, 2, prefix, n)
    torch.testing.assert_close(_sparsifiner_output(m, record, x.shape), out, atol=1e-5, rtol=0)

    # the allowed keys: the predictor's top-k, recomputed here
    q, k, _ = m.qkv(x.reshape(2, n, 16)).view(2, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
    if case == "dense":
        allowed = torch.ones(2, 2, n - prefix, n, dtype=torch.bool)
    else:
        _, approx = m.mask_predictor(q, k, prefix, recon=False)
        top = approx.topk(budget, dim=-1).indices
        allowed = torch.zeros(2, 2, n - prefix, n, dtype=torch.bool).scatter(-1, top, True)
        assert torch.equal(record.index.sort(-1).values, top.sort(-1).values)
    dense = _densify(record.attn, record.index, n)
    assert torch.all(dense[~allowed] == 0)
    logits = (q @ k.transpose(-1, -2)) * m.scale
    reference = logits[:, :, prefix:].masked_fill(~allowed, float("-inf")).softmax(-1)
    torch.testing.assert_close(dense, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(record.prefix_attn, logits[:, :, :prefix].softmax(-1), atol=1e-10, rtol=0)


def test_sparsifiner_record_recon_training_is_dense_and_float32():
    m, x, call = _sparsifiner("prefix", torch.float32)
    m.train()
    m.attn_recon = True
    plain = m(x, **call)
    out, record = _recorded(m, x, **call)
    assert torch.equal(out, plain) and record.dense and record.attn.shape == (2, 2, 36, 37)
    assert torch.equal(record.index[0, 0, 5], torch.arange(37))
    torch.testing.assert_close(_sparsifiner_output(m, record, x.shape), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["map", "prefix"])
def test_sparsifiner_query_maps(case):
    m, x, call = _sparsifiner(case)
    _, record = _recorded(m, x, **call)
    (qm,) = record.query_maps(2, 4, batch=1)
    assert qm.values.shape == (6, 6) and qm.marker == (2, 4)
    row = 2 * 6 + 4
    if case == "map":
        assert qm.title == "kept 9 of 36 keys"
        torch.testing.assert_close(qm.values.sum(), qm.values.new_tensor(1.0))
    else:
        weights, keys = record.attn[1, :, row], record.index[1, :, row]
        share = (weights * (keys == 0)).sum(-1).mean()
        assert qm.title == f"kept 10 of 37 keys (cls {share.item():.2f})"
        torch.testing.assert_close(qm.values.sum() + share, share.new_tensor(1.0))
    with pytest.raises(ValueError):
        record.query_maps(6, 0)
    with pytest.raises(ValueError, match="grid"):
        dataclasses.replace(record, map_size=None).query_maps(0, 0)


# -------------------------------------------------------------------------------------------------------- Agent

AGENT_CASES = {
    "map": (dict(window_size=6), (2, 6, 6, 16), {}),
    "prefix": (dict(window_size=6, num_prefix_tokens=1), (2, 37, 16), dict(grid_size=(6, 6))),
    "sr2": (dict(window_size=6, sr_ratio=2), (2, 6, 6, 16), {}),
    "dynamic": (dict(window_size=6, dynamic_size=True, agent_grid=(2, 3)), (2, 5, 8, 16), {}),
}


def _agent(case, dtype=torch.float64):
    kwargs, shape, call = AGENT_CASES[case]
    m = AgentAttention(16, 2, agent_num=4, **kwargs)
    m = _randomize(m, dtype)
    with torch.no_grad():  # keep the logits moderate: std 0.5 everywhere makes one-hot softmaxes
        m.proj.weight.mul_(0.5)
    torch.manual_seed(1)
    return m, torch.randn(*shape, dtype=dtype), call


def _agent_output(m, record, shape):
    out = record.query_attn @ (record.agent_attn @ record.v)  # (B, h, P + H*W, d)
    out = out.transpose(1, 2).flatten(2)
    prefix = record.num_prefix_tokens
    out = torch.cat([out[:, :prefix], out[:, prefix:] + record.local.flatten(1, 2)], dim=1)
    return m.proj(out).view(shape)


@pytest.mark.parametrize("case", list(AGENT_CASES))
def test_agent_record_recomputes_output_and_rows_sum_to_one(case):
    m, x, call = _agent(case)
    plain = m(x, **call)
    out, record = _recorded(m, x, **call)
    assert torch.equal(out, plain)
    size = (5, 8) if case == "dynamic" else (6, 6)
    key_size = (3, 3) if case == "sr2" else size
    prefix = 1 if case == "prefix" else 0
    n = 6 if case == "dynamic" else 4
    assert record.kind == "agent" and record.map_size == size and record.key_size == key_size
    assert record.agent_grid == ((2, 3) if case == "dynamic" else (2, 2)) and record.num_prefix_tokens == prefix
    assert record.agent_attn.shape == (2, 2, n, prefix + key_size[0] * key_size[1])
    assert record.query_attn.shape == (2, 2, prefix + size[0] * size[1], n)
    assert record.v.shape == (2, 2, prefix + key_size[0] * key_size[1], 8)
    assert record.local.shape == (2, *size, 16)
    torch.testing.assert_close(_agent_output(m, record, x.shape), out, atol=1e-5, rtol=0)
    for attn in (record.agent_attn, record.query_attn, record.query_attn @ record.agent_attn):
        assert torch.all(attn > 0)  # every key is allowed
        torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn[..., 0]))
    # the local term is dwc of the patch values (upsampled back to the map when sr_ratio > 1)
    v_map = record.v[:, :, prefix:].transpose(1, 2).reshape(2, *key_size, 16).permute(0, 3, 1, 2)
    if key_size != size:
        v_map = F.interpolate(v_map, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(record.local, m.dwc(v_map).permute(0, 2, 3, 1))


def test_agent_record_float32():
    m, x, call = _agent("prefix", torch.float32)
    plain = m(x, **call)
    out, record = _recorded(m, x, **call)
    assert torch.equal(out, plain) and record.query_attn.dtype == torch.float32
    torch.testing.assert_close(_agent_output(m, record, x.shape), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["prefix", "sr2", "dynamic"])
def test_agent_query_maps(case):
    m, x, call = _agent(case)
    _, record = _recorded(m, x, **call)
    through, agents, strongest = record.query_maps(4, 3, batch=1)
    kh, kw = record.key_size
    gh, gw = record.agent_grid
    top = int(agents.values.flatten().argmax())
    assert strongest.title.startswith(f"agent {top // gw},{top % gw} (")
    torch.testing.assert_close(
        strongest.values.flatten(), record.agent_attn[1, :, top, record.num_prefix_tokens :].mean(0)
    )
    assert through.values.shape == record.key_size and agents.values.shape == record.agent_grid
    height, width = record.map_size
    assert through.marker == (4 * kh // height, 3 * kw // width) and agents.marker == (
        4 * gh // height,
        3 * gw // width,
    )
    assert agents.title == f"{gh}x{gw} agents"
    torch.testing.assert_close(agents.values.sum(), agents.values.new_tensor(1.0))
    query = record.num_prefix_tokens + 4 * width + 3
    effective = (record.query_attn[1, :, query, None] @ record.agent_attn[1]).squeeze(1).mean(0)
    title = f"through {gh * gw} agents: {kh}x{kw} keys"
    if case == "prefix":
        title += f" (cls {effective[0].item():.2f})"
    assert through.title == title
    torch.testing.assert_close(through.values.sum() + effective[: record.num_prefix_tokens].sum(), effective.sum())
    torch.testing.assert_close(effective.sum(), effective.new_tensor(1.0))
    with pytest.raises(ValueError):
        record.query_maps(height, 0)
    with pytest.raises(ValueError):
        record.query_maps(0, -1)
