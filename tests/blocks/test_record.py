"""record_attention: NA, HiLo, DaViT and FocalNet records recompute their mixer's output, and the weights are
the mechanism's (rows sum to 1 over the keys it allows, zero elsewhere, the allowed set rebuilt here)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.blocks import (
    ChannelGroupAttention,
    FocalModulation,
    HiLo,
    MixerBlock,
    NeighborhoodAttention2D,
    SpatialWindowAttention,
)
from attnzoo.blocks.record import attend_listed, record_attention, recordable_modules, scatter_to_grid
from attnzoo.kernels import use_backend
from tests.kernels.reference import nearest_same_residue


def _record_one(mixer: nn.Module, x: torch.Tensor):
    """Forward with and without recording: equal outputs, one record, no recorder left behind."""
    plain = mixer(x)
    with record_attention(mixer) as records:
        recorded = mixer(x)
    assert torch.equal(plain, recorded)
    assert list(records) == [""] and len(records[""]) == 1
    assert not mixer.recording
    return plain, records[""][0]


def _dense(attn: torch.Tensor, keys: torch.Tensor, size) -> torch.Tensor:
    """(B, heads, H, W, K) weights over raster keys -> (B, heads, H*W, keys' H*W) dense rows."""
    grid = scatter_to_grid(attn, keys, size)
    return grid.flatten(2, 3).flatten(-2)


def _window_mask(height: int, width: int, window: int) -> torch.Tensor:
    """(H*W, H*W): key in the query's non-overlapping window, by comparing window coordinates."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    window_id = (r // window * width + c // window).flatten()
    return window_id[:, None] == window_id[None, :]


@pytest.mark.parametrize(
    "size,kernel,dilation,backend,dtype",
    [
        ((9, 11), 3, 2, "torch", torch.float64),
        ((5, 4), 5, 1, "torch", torch.float64),
        ((12, 12), 3, 3, "flex", torch.float32),  # another kernel ran the forward: the record still matches it
        ((8, 10), 5, 1, "auto", torch.float32),
    ],
)
def test_neighborhood_record_recomputes_the_output(size, kernel, dilation, backend, dtype):
    torch.manual_seed(0)
    mixer = NeighborhoodAttention2D(32, 2, kernel_size=kernel, dilation=dilation).to(dtype).eval()
    x = torch.randn(2, *size, 32, dtype=dtype)
    with use_backend(backend), torch.no_grad():
        out, record = _record_one(mixer, x)
    padded = record.padded_size
    assert record.map_size == size and padded == tuple(max(s, kernel * dilation) for s in size)
    recomputed = attend_listed(record.attn, record.keys, record.v).flatten(-2)[:, : size[0], : size[1]]
    torch.testing.assert_close(mixer.proj(recomputed), out, atol=1e-5, rtol=0)

    dense = _dense(record.attn, record.keys, padded)  # (B, heads, N, N)
    torch.testing.assert_close(dense.sum(-1), torch.ones(dense.shape[:-1], dtype=dense.dtype))
    rows = nearest_same_residue(padded[0], kernel, dilation)
    cols = nearest_same_residue(padded[1], kernel, dilation)
    allowed = torch.zeros(padded[0], padded[1], padded[0], padded[1], dtype=torch.bool)
    for i in range(padded[0]):
        for j in range(padded[1]):
            allowed[i, j, torch.tensor(rows[i])[:, None], torch.tensor(cols[j])[None, :]] = True
    allowed = allowed.reshape(padded[0] * padded[1], -1)
    assert (dense[..., ~allowed] == 0).all() and (dense[..., allowed] > 0).all()

    (picture,) = record.query_maps(size[0] - 1, 0)
    assert picture.values.shape == size and picture.marker == (size[0] - 1, 0)
    with pytest.raises(ValueError, match="outside"):
        record.query_maps(size[0], 0)


@pytest.mark.parametrize("size,window,alpha", [((8, 12), 2, 0.5), ((7, 9), 2, 0.5), ((6, 6), 3, 0.0), ((6, 8), 1, 0.5)])
def test_hilo_record_recomputes_both_branches(size, window, alpha):
    torch.manual_seed(1)
    mixer = HiLo(32, num_heads=4, window_size=window, alpha=alpha).double().eval()
    x = torch.randn(2, *size, 32, dtype=torch.float64)
    out, record = _record_one(mixer, x)
    height, width = size
    padded = record.padded_size
    outs = []
    if mixer.h_heads:
        hifi = attend_listed(record.hifi_attn, record.hifi_keys, record.hifi_v).flatten(-2)
        outs.append(mixer.h_proj(hifi)[:, :height, :width])
        dense = _dense(record.hifi_attn, record.hifi_keys, padded)
        allowed = _window_mask(*padded, window)
        torch.testing.assert_close(dense.sum(-1), torch.ones(dense.shape[:-1], dtype=dense.dtype))
        assert (dense[..., ~allowed] == 0).all() and (dense[..., allowed] > 0).all()
    else:
        assert record.hifi_attn is None
    if mixer.l_heads:
        lofi_v = record.lofi_v.flatten(1, 2).transpose(1, 2)  # (B, heads, Np, d)
        lofi = (record.lofi_attn.flatten(2, 3) @ lofi_v).transpose(1, 2).reshape(2, *padded, mixer.l_dim)
        outs.append(mixer.l_proj(lofi)[:, :height, :width])
        sums = record.lofi_attn.sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert record.lofi_attn.shape[-1] == record.pooled_size[0] * record.pooled_size[1]
    torch.testing.assert_close(torch.cat(outs, -1), out, atol=1e-5, rtol=0)

    maps = record.query_maps(height - 1, width - 1)
    assert len(maps) == (mixer.h_heads > 0) + (mixer.l_heads > 0)
    for picture in maps:
        assert picture.values.sum().item() == pytest.approx(1.0, abs=1e-9) or record.padded_size != size


@pytest.mark.parametrize("size,window", [((14, 14), 7), ((9, 11), 4)])
def test_davit_spatial_record_recomputes_the_output(size, window):
    torch.manual_seed(2)
    mixer = SpatialWindowAttention(16, 2, window_size=window).double().eval()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    out, record = _record_one(mixer, x)
    recomputed = attend_listed(record.attn, record.keys, record.v).flatten(-2)[:, : size[0], : size[1]]
    torch.testing.assert_close(mixer.proj(recomputed), out, atol=1e-5, rtol=0)
    dense = _dense(record.attn, record.keys, record.padded_size)
    allowed = _window_mask(*record.padded_size, window)
    torch.testing.assert_close(dense.sum(-1), torch.ones(dense.shape[:-1], dtype=dense.dtype))
    assert (dense[..., ~allowed] == 0).all() and (dense[..., allowed] > 0).all()
    (picture,) = record.query_maps(0, size[1] - 1)
    assert picture.values.shape == size


def test_davit_channel_record_recomputes_the_output():
    torch.manual_seed(3)
    mixer = ChannelGroupAttention(24, 3).double().eval()
    x = torch.randn(2, 5, 6, 24, dtype=torch.float64)
    out, record = _record_one(mixer, x)
    assert record.attn.shape == (2, 3, 8, 8)
    recomputed = torch.einsum("bhij,bxyhj->bxyhi", record.attn, record.q).flatten(-2)
    torch.testing.assert_close(mixer.proj(recomputed), out, atol=1e-5, rtol=0)
    torch.testing.assert_close(record.attn.sum(-1), torch.ones(2, 3, 8, dtype=torch.float64))
    (picture,) = record.query_maps(0, 0)
    assert picture.over == "matrix" and picture.values.shape == (24, 24)
    assert (picture.values[:8, 8:] == 0).all()  # channels mix within their head only


@pytest.mark.parametrize("postln,normalize", [(False, False), (True, True)])
def test_focal_record_recomputes_the_modulation(postln, normalize):
    torch.manual_seed(4)
    mixer = (
        FocalModulation(16, focal_level=3, use_postln_in_modulation=postln, normalize_modulator=normalize)
        .double()
        .eval()
    )
    x = torch.randn(2, 7, 9, 16, dtype=torch.float64)
    out, record = _record_one(mixer, x)
    assert record.contexts.shape == (4, 2, 7, 9, 16) and record.gates.shape == (2, 7, 9, 4)
    context = (record.contexts * record.gates.permute(3, 0, 1, 2)[..., None]).sum(0)
    if normalize:
        context = context / 4
    modulator = F.linear(context, mixer.h.weight.flatten(1), mixer.h.bias)
    torch.testing.assert_close(modulator, record.modulator, atol=1e-5, rtol=0)
    modulated = record.q * record.modulator
    if postln:
        modulated = mixer.ln(modulated)
    torch.testing.assert_close(mixer.proj(modulated), out, atol=1e-5, rtol=0)
    maps = record.query_maps(3, 4)
    assert [m.values.shape for m in maps] == [(7, 9)] * 5


def test_recording_a_block_stack_names_every_mixer_and_detaches_after_errors():
    blocks = nn.Sequential(
        MixerBlock(16, "neighborhood", 2, mixer_kwargs=dict(kernel_size=3)),
        MixerBlock(16, "hilo", 2, mixer_kwargs=dict(window_size=2)),
    ).eval()
    names = [name for name, _ in recordable_modules(blocks)]
    assert names == ["0.mixer", "1.mixer"]
    x = torch.randn(1, 6, 6, 16)
    with record_attention(blocks) as records:
        blocks(x)
        blocks(x)
    assert {name: len(calls) for name, calls in records.items()} == {"0.mixer": 2, "1.mixer": 2}
    assert set(records.last()) == set(names)
    with pytest.raises(RuntimeError, match="boom"), record_attention(blocks):
        raise RuntimeError("boom")
    assert not any(module.recording for _, module in recordable_modules(blocks))
    with pytest.raises(ValueError, match="no attnzoo mixer"), record_attention(nn.Linear(2, 2)):
        pass
