"""Contract tests every mixer must pass: create_mixer, shapes on odd/non-square maps, dtypes, gradients, compile."""

import pytest
import torch

from attnzoo.blocks import MIXERS, MixerBlock, create_mixer

DIM, HEADS = 16, 2


def mixer_kwargs(name: str, height: int, width: int) -> dict:
    """Settings that make ``name`` valid for a ``height x width`` map (some mixers are built for one size)."""
    return {
        "neighborhood": dict(kernel_size=3, dilation=2),
        "hilo": dict(window_size=2, alpha=0.5),
        "quadtree": dict(sr_ratio=2 if height % 2 == 0 and width % 2 == 0 else 1, topk=2),
        "dual": dict(attention="spatial", window_size=4),
        "agent": dict(agent_num=4, window_size=(height, width)),
        "focal": dict(focal_level=2, focal_window=3),
        "sparsifiner": dict(num_tokens=height * width, keep_ratio=0.5),
    }[name]


# (height, width) per mixer: odd, non-square and 1x1 where the mechanism allows them
SIZES = {name: [(15, 17), (7, 9), (1, 1)] for name in MIXERS}
SIZES["quadtree"] = [(16, 12), (7, 9), (1, 1)]  # levels need even maps; odd maps run with one level
CASES = [(name, size) for name in sorted(MIXERS) for size in SIZES[name]]


def build(name, height, width):
    torch.manual_seed(0)
    return create_mixer(name, dim=DIM, num_heads=HEADS, **mixer_kwargs(name, height, width))


@pytest.mark.quick
def test_all_seven_mechanisms_are_registered():
    assert set(MIXERS) == {"neighborhood", "hilo", "quadtree", "dual", "agent", "focal", "sparsifiner"}


@pytest.mark.quick
@pytest.mark.parametrize("name,size", CASES)
def test_shape_dtype_and_gradients(name, size):
    mixer = build(name, *size).train()
    x = torch.randn(2, *size, DIM, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in mixer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    if name == "sparsifiner":  # the connectivity predictor learns only through its distillation loss
        assert all(n.startswith("mask_predictor.") for n in no_grad)
    else:
        assert no_grad == []


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_bfloat16_autocast(name):
    mixer = build(name, 7, 9).eval()
    x = torch.randn(2, 7, 9, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), mixer(x), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_compile_fullgraph(name):
    mixer = build(name, 8, 8).eval()
    x = torch.randn(1, 8, 8, DIM)
    # dynamic=False: static shapes whatever ran before (after another compile of the class at other shapes,
    # dynamo's automatic dynamic shapes would trace symbolically here, several times slower)
    compiled = torch.compile(mixer, fullgraph=True, backend="aot_eager", dynamic=False)
    torch.testing.assert_close(compiled(x), mixer(x))


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_inside_a_mixer_block(name):
    block = MixerBlock(DIM, name, num_heads=HEADS, mixer_kwargs=mixer_kwargs(name, 8, 8), layer_scale=1e-5)
    x = torch.randn(2, 8, 8, DIM)
    assert block(x).shape == x.shape


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_wrong_rank_is_rejected(name):
    mixer = build(name, 8, 8)
    with pytest.raises((AssertionError, ValueError), match="x must be"):
        mixer(torch.randn(8, 8, DIM))
