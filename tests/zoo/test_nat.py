"""NAT / DiNAT against the authors' code: parity fixtures, release key maps, parameter counts and GMACs."""

import json
import math

import pytest
import timm
import torch

import attnzoo
from attnzoo.tools.macs import count_macs
from tests.fixtures import FIXTURES

RELEASE = json.loads((FIXTURES / "nat_dinat_release_shapes.json").read_text())

# Paper numbers (the NAT paper's ImageNet table, as the authors' classification/NAT.md prints them): params (M, as
# printed) and GMACs at the variant's resolution.
PAPER_GMACS = {
    "nat_mini": 2.7,
    "nat_tiny": 4.3,
    "nat_small": 7.8,
    "nat_base": 13.7,
    "dinat_mini": 2.7,
    "dinat_tiny": 4.3,
    "dinat_small": 7.8,
    "dinat_base": 13.7,
    "dinat_large": 30.6,
    "dinat_large_384": 89.7,
    "dinat_large_384_11x11": 92.4,
}


@pytest.fixture(scope="module", params=sorted(PAPER_GMACS))
def variant(request):
    """(name, eval model on the meta device): shapes and FLOPs without allocating or computing anything."""
    with torch.device("meta"):
        return request.param, timm.create_model(request.param).eval()


def release_shapes(name, model):
    """The authors' key -> shape map; the 384 variants reuse dinat_large's with their own bias-table size."""
    if name in RELEASE:
        return RELEASE[name]
    table = 2 * model.stages[0].blocks[0].mixer.kernel_size - 1
    return {
        key: shape[:1] + [table, table] if key.endswith(".rpb") else shape
        for key, shape in RELEASE["dinat_large"].items()
    }


def load_fixture(name):
    return torch.load(FIXTURES / name, weights_only=True)


@pytest.mark.quick
@pytest.mark.parametrize("fixture", ["nat_reduced.pt", "nat_reduced_ls_k5.pt", "dinat_reduced.pt"])
def test_reproduces_the_authors_logits(fixture):
    fx = load_fixture(fixture)
    model = attnzoo.from_official(fx["entrypoint"], fx["config"], fx["state_dict"])
    assert not model.training
    with torch.no_grad():
        features = model.forward_features(fx["input"])
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(fx["input"])
    torch.testing.assert_close(pre_logits, fx["pre_logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, fx["logits"], atol=1e-4, rtol=1e-4)


def test_fixture_is_sensitive_to_a_transposed_bias_table():
    """The parity test above could fail: transposing one rpb table moves the logits far beyond tolerance."""
    fx = load_fixture("nat_reduced.pt")
    state_dict = dict(fx["state_dict"])
    state_dict["levels.0.blocks.0.attn.rpb"] = state_dict["levels.0.blocks.0.attn.rpb"].transpose(-1, -2)
    model = attnzoo.from_official(fx["entrypoint"], fx["config"], state_dict)
    with torch.no_grad():
        assert (model(fx["input"]) - fx["logits"]).abs().max() > 1e-3


def test_release_checkpoint_maps_onto_the_registered_variant(variant):
    name, model = variant
    shapes = release_shapes(name, model)
    zeros = {key: torch.zeros(shape, device="meta") for key, shape in shapes.items()}
    converted = attnzoo.nat.checkpoint_filter_fn(zeros, model)
    ours = model.state_dict()
    assert sorted(converted) == sorted(ours), set(converted) ^ set(ours)
    for key, value in converted.items():
        assert value.shape == ours[key].shape, key
    authors_count = sum(math.prod(shape) for shape in shapes.values())
    assert sum(p.numel() for p in model.parameters()) == authors_count
    attnzoo.load_official_state_dict(model, zeros)  # strict: raises on any missing or unexpected key


def test_gmacs_match_the_paper(variant):
    name, model = variant
    size = model.pretrained_cfg["input_size"]
    gmacs = count_macs(model, torch.randn(1, *size, device="meta")) / 1e9
    assert gmacs == pytest.approx(PAPER_GMACS[name], rel=0.02)


def test_dinat_small_has_no_layer_scale_unlike_nat_small():
    with torch.device("meta"):
        assert "stages.0.blocks.0.ls1.gamma" in timm.create_model("nat_small").state_dict()
        assert "stages.0.blocks.0.ls1.gamma" not in timm.create_model("dinat_small").state_dict()


def test_from_official_rejects_unknown_and_missing_arguments():
    fx = load_fixture("nat_reduced.pt")
    with pytest.raises(ValueError, match="unsupported authors' constructor argument.*window_size"):
        attnzoo.from_official("nat_mini", {**fx["config"], "window_size": 7})
    config = dict(fx["config"])
    del config["depths"]
    with pytest.raises(ValueError, match="required argument.*depths"):
        attnzoo.from_official("nat_mini", config)
    with pytest.raises(ValueError, match="no authors' format"):
        attnzoo.from_official("resnet18", {})
    for depths in ([3, -4, 6, 5], [3, 0, 6, 5]):
        with pytest.raises(ValueError, match=r"config\['depths'\] must hold integers >= 1"):
            attnzoo.from_official("nat_mini", {**fx["config"], "depths": depths})


def test_from_official_uses_the_authors_defaults_not_the_variants():
    """nat_small's variant has layer scale; the authors' class default (none) applies when config omits it."""
    config = dict(embed_dim=32, mlp_ratio=2, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], num_classes=3)
    model = attnzoo.from_official("nat_small", config)
    assert not any(name.endswith("gamma") for name in model.state_dict())
    assert model.stages[0].blocks[0].mixer.kernel_size == 7


def test_a_wrong_checkpoint_fails_loudly():
    fx = load_fixture("nat_reduced.pt")
    state_dict = dict(fx["state_dict"])
    state_dict.pop("levels.0.blocks.0.attn.rpb")
    with pytest.raises(RuntimeError, match="rpb"):
        attnzoo.from_official(fx["entrypoint"], fx["config"], state_dict)
