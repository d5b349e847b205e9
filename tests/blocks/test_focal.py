"""FocalModulation: weight-for-weight parity with timm's FocalNet module, the math by hand, errors."""

import itertools
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from timm.models import focalnet as timm_focalnet

from attnzoo.blocks.focal import FocalModulation

SIZES = [(15, 17), (7, 9), (1, 1), (16, 16)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module, seed=0):
    """Random weights everywhere (biases and LayerNorm affine too) at a fan-in scale, so that activations
    stay O(1) through four levels of wide depthwise kernels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 11.0
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)
    return module


def _timm_module(dim, level, window, normalize, post_norm, seed=0):
    """timm's module as FocalNet builds it (LayerNorm2d with eps 1e-5, the official nn.LayerNorm's eps)."""
    ref = timm_focalnet.FocalModulation(
        dim,
        focal_window=window,
        focal_level=level,
        normalize_modulator=normalize,
        use_post_norm=post_norm,
        norm_layer=partial(LayerNorm2d, eps=1e-5),
    )
    return _randomize(ref, seed).eval()


def _load_from_timm(module, ref):
    """timm uses 1x1 convs for f/proj (ours: Linear) and calls the post-norm ``norm`` (official: ``ln``)."""
    state = {}
    for key, value in ref.state_dict().items():
        if key in ("f.weight", "proj.weight"):
            value = value.flatten(1)
        state[key.replace("norm.", "ln.")] = value
    module.load_state_dict(state, strict=True)
    return module


def _timm_forward(ref, x):
    return ref(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)


def test_parameter_names_and_shapes_match_official_checkpoints():
    shapes = {k: tuple(v.shape) for k, v in FocalModulation(16, 4, focal_window=3, focal_level=2).state_dict().items()}
    assert shapes == {
        "f.weight": (35, 16),
        "f.bias": (35,),
        "h.weight": (16, 16, 1, 1),
        "h.bias": (16,),
        "proj.weight": (16, 16),
        "proj.bias": (16,),
        "focal_layers.0.0.weight": (16, 1, 3, 3),
        "focal_layers.1.0.weight": (16, 1, 5, 5),
    }
    with_ln = FocalModulation(16, 4, focal_level=1, focal_window=5, use_postln_in_modulation=True, bias=False)
    assert sorted(with_ln.state_dict()) == [
        "f.weight",
        "focal_layers.0.0.weight",
        "h.weight",
        "ln.bias",
        "ln.weight",
        "proj.bias",
        "proj.weight",
    ]
    assert FocalModulation(8, 1, focal_window=5, focal_level=4, focal_factor=4).kernel_sizes == [5, 9, 13, 17]


CASES = list(itertools.product([1, 2, 3, 4], [3, 5], [False, True], [False, True]))


@pytest.mark.parametrize("level,window,normalize,post_norm", CASES)
def test_matches_timm(level, window, normalize, post_norm):
    ref = _timm_module(16, level, window, normalize, post_norm)
    mixer = FocalModulation(
        16, 2, focal_window=window, focal_level=level, normalize_modulator=normalize, use_postln_in_modulation=post_norm
    ).eval()
    _load_from_timm(mixer, ref)
    height, width = SIZES[CASES.index((level, window, normalize, post_norm)) % len(SIZES)]
    x = torch.randn(2, height, width, 16)
    torch.testing.assert_close(mixer(x), _timm_forward(ref, x), atol=1e-5, rtol=1e-5)


@pytest.mark.quick
def test_matches_timm_in_float64():
    ref = _timm_module(12, 3, 3, True, True, seed=1).double()
    mixer = FocalModulation(12, 3, focal_level=3, normalize_modulator=True, use_postln_in_modulation=True).double()
    _load_from_timm(mixer.eval(), ref)
    x = torch.randn(2, 15, 17, 12, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _timm_forward(ref, x), atol=1e-10, rtol=1e-10)


def _by_hand(mixer, x):
    """The paper's equations with explicit unfold-based depthwise convolutions, channels-last, float64."""
    batch, height, width, dim = x.shape
    levels = mixer.focal_level
    projected = x @ mixer.f.weight.T + mixer.f.bias
    q, ctx, gates = projected[..., :dim], projected[..., dim : 2 * dim], projected[..., 2 * dim :]
    total = torch.zeros_like(q)
    for level, k in enumerate(mixer.kernel_sizes):
        kernel = mixer.focal_layers[level][0].weight.reshape(dim, k * k)  # (C, k*k)
        patches = F.unfold(ctx.permute(0, 3, 1, 2), k, padding=k // 2).view(batch, dim, k * k, height * width)
        ctx = F.gelu(torch.einsum("bckn,ck->bnc", patches, kernel)).reshape(batch, height, width, dim)
        total = total + gates[..., level, None] * ctx
    total = total + gates[..., levels, None] * F.gelu(ctx.reshape(batch, -1, dim).mean(1))[:, None, None, :]
    if mixer.normalize_modulator:
        total = total / (levels + 1)
    out = q * (total @ mixer.h.weight[:, :, 0, 0].T + mixer.h.bias)
    if mixer.use_postln_in_modulation:
        out = F.layer_norm(out, (dim,), mixer.ln.weight, mixer.ln.bias)
    return out @ mixer.proj.weight.T + mixer.proj.bias


@pytest.mark.parametrize("height,width", [(15, 17), (7, 9), (1, 1)])
@pytest.mark.parametrize("normalize,post_norm", [(False, False), (True, True)])
def test_paper_equations_by_hand(height, width, normalize, post_norm):
    mixer = FocalModulation(
        12, 3, focal_level=3, focal_window=3, normalize_modulator=normalize, use_postln_in_modulation=post_norm
    )
    mixer = _randomize(mixer, seed=2).double().eval()
    x = torch.randn(2, height, width, 12, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), _by_hand(mixer, x), atol=1e-10, rtol=1e-10)


def test_num_heads_is_ignored():
    torch.manual_seed(0)
    a = FocalModulation(16, 4, focal_level=3)
    torch.manual_seed(0)
    b = FocalModulation(16, focal_level=3)  # default num_heads=1
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.randn(1, 5, 6, 16)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


def test_proj_dropout_only_in_training():
    mixer = FocalModulation(8, 2, proj_drop=0.5)
    x = torch.randn(1, 6, 6, 8)
    mixer.eval()
    torch.testing.assert_close(mixer(x), mixer(x))
    mixer.train()
    assert not torch.allclose(mixer(x), mixer(x))


def test_bf16_autocast():
    mixer = _randomize(FocalModulation(32, 4, focal_level=3, use_postln_in_modulation=True), seed=3).eval()
    x = torch.randn(2, 15, 17, 32)
    ref = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize("post_norm", [False, True])
def test_every_parameter_gets_a_gradient(post_norm):
    mixer = FocalModulation(16, 2, focal_level=3, use_postln_in_modulation=post_norm, proj_drop=0.1).train()
    mixer(torch.randn(2, 7, 9, 16)).sum().backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("height,width", [(7, 9), (15, 17), (1, 1)])
def test_shapes(height, width):
    x = torch.randn(2, height, width, 16)
    assert FocalModulation(16, 2, focal_level=4, focal_window=5)(x).shape == x.shape


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_matches_eager(dynamic):
    mixer = FocalModulation(16, 2, focal_level=3, normalize_modulator=True, use_postln_in_modulation=True).eval()
    compiled = torch.compile(mixer, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for shape in [(2, 9, 11, 16), (2, 6, 13, 16)]:
        x = torch.randn(shape)
        torch.testing.assert_close(compiled(x), mixer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(focal_level=0), ValueError, "focal_level must be >= 1, got 0"),
        (dict(focal_window=0), ValueError, "focal_window must be >= 1, got 0"),
        (dict(focal_window=4), ValueError, "focal_window must be odd, got 4"),
        (dict(focal_factor=3), ValueError, "focal_factor must be a non-negative even int, got 3"),
        (dict(focal_factor=2.0), TypeError, "focal_factor must be an int"),
        (dict(proj_drop=1.5), ValueError, r"proj_drop must lie in \[0.0, 1.0\], got 1.5"),
        (dict(num_heads=0), ValueError, "num_heads must be >= 1, got 0"),
        (dict(num_heads=None), TypeError, "num_heads must be an int"),
        (dict(dim=0), ValueError, "dim must be >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = {"dim": 16, "num_heads": 2, **kwargs}
    with pytest.raises(error, match=message):
        FocalModulation(**kwargs)


def test_bad_input():
    mixer = FocalModulation(8, 2)
    with pytest.raises(AssertionError, match=r"x must be a channels-last map \(B, H, W, C\)"):
        mixer(torch.randn(1, 16, 8))
    with pytest.raises(AssertionError, match="x has the wrong number of channels for dim=8"):
        mixer(torch.randn(1, 4, 4, 4))
