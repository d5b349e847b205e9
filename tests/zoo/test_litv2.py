"""LITv2 against the authors' code: parity fixture, release key maps, parameter counts, GMACs, any input size."""

import json
import math

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import attnzoo
from attnzoo.litv2 import DeformableTokenMerging
from tests.fixtures import FIXTURES

RELEASE = json.loads((FIXTURES / "litv2_release_shapes.json").read_text())

# The authors' README "FLOPs" (MACs by the usual convention; the LITv2 paper's ImageNet table) at the variant's
# resolution.
PAPER_GMACS = {"litv2_small": 3.7, "litv2_medium": 7.5, "litv2_base": 13.2, "litv2_base_384": 39.7}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURES / "litv2_reduced.pt", weights_only=True)


@pytest.fixture(scope="module")
def official(fixture):
    """Our model built from the fixture's authors' config and weights (eval mode)."""
    return attnzoo.from_official(fixture["entrypoint"], fixture["config"], fixture["state_dict"])


@pytest.fixture(scope="module", params=sorted(PAPER_GMACS))
def variant(request):
    """(name, eval model on the meta device): shapes and FLOPs without allocating or computing anything."""
    with torch.device("meta"):
        return request.param, timm.create_model(request.param).eval()


def release_shapes(name):
    """The authors' key -> shape map; the 384 fine-tune has LITv2-B's keys and shapes (no position tables)."""
    return RELEASE[name.removesuffix("_384")]


@pytest.mark.quick
def test_reproduces_the_authors_logits(fixture, official):
    fx, model = fixture, official
    assert not model.training
    with torch.no_grad():
        features = model.forward_features(fx["input"])
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(fx["input"])
    torch.testing.assert_close(pre_logits, fx["pre_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)


def test_reproduces_the_authors_stage_outputs(fixture, official):
    """The authors' ``layers[i]`` end with the merge that starts our ``stages[i + 1]``; tokens are (B, N, C)."""
    fx, model = fixture, official
    last = len(model.stages) - 1
    with torch.no_grad():
        x = model.patch_embed(fx["input"])
        for i, stage in enumerate(model.stages):
            x = stage(x)
            out = model.stages[i + 1].downsample(x) if i < last else x
            torch.testing.assert_close(out.flatten(1, 2), fx["stage_outputs"][i], atol=1e-4, rtol=1e-4)


def test_fixture_is_sensitive_to_swapped_offset_axes(fixture):
    """The parity test could fail: reading the DTM offsets as (dx, dy) instead of (dy, dx) moves the logits."""
    state_dict = dict(fixture["state_dict"])
    swap = torch.arange(8).view(4, 2).flip(1).flatten()
    for i in range(3):
        for leaf in ("weight", "bias"):
            key = f"layers.{i}.downsample.dconv.conv_offset.{leaf}"
            state_dict[key] = state_dict[key][swap]
    model = attnzoo.from_official(fixture["entrypoint"], fixture["config"], state_dict)
    with torch.no_grad():
        assert (model(fixture["input"]) - fixture["logits"]).abs().max() > 1e-3


def test_release_checkpoint_maps_onto_the_registered_variant(variant):
    name, model = variant
    shapes = release_shapes(name)
    zeros = {key: torch.zeros(shape, device="meta") for key, shape in shapes.items()}
    converted = attnzoo.litv2.checkpoint_filter_fn(zeros, model)
    ours = model.state_dict()
    assert sorted(converted) == sorted(ours), set(converted) ^ set(ours)
    for key, value in converted.items():
        assert value.shape == ours[key].shape, key
    authors_count = sum(math.prod(shape) for key, shape in shapes.items() if not key.endswith(BN_BUFFERS))
    assert sum(p.numel() for p in model.parameters()) == authors_count
    attnzoo.load_official_state_dict(model, zeros)  # strict: raises on any missing or unexpected key


def test_gmacs_match_the_paper(variant):
    name, model = variant
    _, height, width = model.pretrained_cfg["input_size"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, height, width, device="meta"))
    macs = counter.get_total_flops() / 2
    # FlopCounterMode does not count torchvision::deform_conv2d: add each merge's MACs by the conv
    # formula (out * in * 2 * 2 per output position; the bilinear sampling is not counted, as in the paper)
    height, width = height // 4, width // 4
    for stage in list(model.stages)[1:]:
        height, width = (height + 1) // 2, (width + 1) // 2
        dconv = stage.downsample.dconv
        macs += dconv.out_channels * dconv.in_channels * 4 * height * width
    assert macs / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.02)


def test_stage_layout_of_the_release():
    """ConvFFN-only stages 1-2; HiLo with 10 Lo-Fi + 2 Hi-Fi heads (2x2 windows) in stage 3, global MSA in 4."""
    with torch.device("meta"):
        model = timm.create_model("litv2_small")
    assert not hasattr(model.stages[1].blocks[0], "mixer")
    hilo = model.stages[2].blocks[0].mixer
    assert (hilo.ws, hilo.l_heads, hilo.h_heads) == (2, 10, 2)
    msa = model.stages[3].blocks[0].mixer
    assert (msa.ws, msa.l_heads, msa.h_heads) == (1, 24, 0)
    assert model.stages[1].downsample.conv_offset.lr_scale == 0.01
    assert model.no_weight_decay() == set()  # no position tables


def test_any_input_size_forward_and_backward():
    """Odd, non-square and tiny inputs work (zero-padded where a map must be even or window-divisible).

    A reduced width keeps this quick; the released widths run the same code. Batch 2: BatchNorm in the
    merges cannot normalise a single 1x1 map in training mode (nor can the authors').
    """
    model = timm.create_model("litv2_small", num_classes=10, embed_dim=24, depths=(1, 1, 2, 1))
    for size in ((250, 330), (32, 32), (33, 47)):  # 224 x 224: the parity tests
        x = torch.randn(2, 3, *size, requires_grad=True)
        logits = model(x)
        assert logits.shape == (2, 10)
        logits.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_features_only_gives_four_nchw_maps():
    model = timm.create_model("litv2_small", features_only=True, embed_dim=24, depths=(1, 1, 2, 1)).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 224, 224))
        assert [tuple(m.shape) for m in maps] == [(1, 24, 56, 56), (1, 48, 28, 28), (1, 96, 14, 14), (1, 192, 7, 7)]
        maps = model(torch.randn(1, 3, 250, 330))  # 63 x 83 tokens, each merge rounding up
        assert [tuple(m.shape[2:]) for m in maps] == [(63, 83), (32, 42), (16, 21), (8, 11)]


def test_from_official_rejects_unknown_and_missing_arguments(fixture):
    with pytest.raises(ValueError, match="unsupported authors' constructor argument.*window_size"):
        attnzoo.from_official("litv2_small", {**fixture["config"], "window_size": 7})
    config = dict(fixture["config"])
    del config["local_ws"]
    with pytest.raises(ValueError, match="required argument.*local_ws"):
        attnzoo.from_official("litv2_small", config)
    with pytest.raises(ValueError, match="patch_size"):
        attnzoo.from_official("litv2_small", {**fixture["config"], "patch_size": 8})


def test_from_official_uses_the_authors_defaults_not_the_variants():
    """The variant has alpha 0.9; the authors' class default (0.5) applies when config omits it."""
    config = dict(embed_dim=24, depths=[1, 1, 1, 1], num_classes=3, local_ws=[0, 0, 2, 1])
    model = attnzoo.from_official("litv2_small", config)
    hilo = model.stages[2].blocks[0].mixer
    assert (hilo.l_heads, hilo.h_heads) == (6, 6)
    assert model.stages[3].blocks[0].drop_path1.drop_prob == pytest.approx(0.1)


def test_a_wrong_checkpoint_fails_loudly(fixture):
    state_dict = dict(fixture["state_dict"])
    state_dict.pop("layers.0.downsample.norm_layer.running_mean")
    with pytest.raises(RuntimeError, match="running_mean"):
        attnzoo.from_official(fixture["entrypoint"], fixture["config"], state_dict)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_trains_under_cpu_autocast(dtype):
    """torchvision's deformable conv has no half CPU kernel: the merge runs in float32 under autocast."""
    model = timm.create_model("litv2_small", num_classes=10)
    with torch.autocast("cpu", dtype=dtype):
        out = model(torch.randn(2, 3, 64, 64))
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_deformable_merge_clamps_offsets_exactly():
    """Offsets far outside the map read zeros whether clamped or not; non-finite ones give NaN outputs."""
    merge = DeformableTokenMerging(8, 16).eval()
    x = torch.randn(1, 8, 6, 6)
    far = torch.full((1, 8, 3, 3), 50.0)
    with torch.no_grad():
        torch.testing.assert_close(merge._deform(x, far), merge._deform(x, far * 1e20))
        offset = torch.zeros(1, 8, 3, 3)
        offset[0, 0, 1, 2] = float("nan")
        out = merge._deform(x, offset)
    assert torch.isnan(out[0, :, 1, 2]).all() and torch.isfinite(out[0, :, 0]).all()
