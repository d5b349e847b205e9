"""timm's per-model checks (its tests/test_models.py), rewritten for every model attnzoo registers.

Each model is built once (module-scoped fixture, so pytest runs all checks of one model together);
checks that change the model work on a deep copy. Sizes follow timm's tests: 128 px for forward and
backward, 96 px for features, the pretrained config's size for the pooled-shape checks.
"""

import copy
import fnmatch
import math
import re

import pytest
import timm
import torch
from timm.models import GraphExtractNet, get_pretrained_cfg_value
from timm.models._features_fx import get_graph_node_names
from timm.optim import param_groups_layer_decay

import attnzoo

# Like timm's CI (EXCLUDE_FILTERS), the >100M-parameter variants and the higher-resolution siblings run
# these checks only with `-m slow`: on 2 CPU cores one backward of dinat_large_384_11x11 takes minutes.
# Their parity, key maps, parameter counts and GMACs are checked by default in the family tests.
LARGE = ("*large*", "*_288", "*_384*", "*_448")  # >100M params, or a sibling's code at a larger input
MODELS = [
    pytest.param(name, marks=pytest.mark.slow) if any(fnmatch.fnmatch(name, p) for p in LARGE) else name
    for name in attnzoo.list_models()
]
# timm's own rule: models built for one input size (ViT/Swin grafts) are only run at that size
FLEXIBLE = [m for m in MODELS if not get_pretrained_cfg_value(getattr(m, "values", [m])[0], "fixed_input_size")]
FWD_SIZE, BWD_SIZE, FEAT_SIZE = 128, 128, 96
CFG_FIELDS = ("license", "paper_ids", "origin_url", "input_size", "crop_pct", "mean", "std", "first_conv")
# QuadTree's coarse-to-fine pyramid halves the stage-1 map three times: sides must be multiples of 32
SIZE_MULTIPLE = {"quadtree_*": 32}
# Parameters that are frozen when a model is built, because logits cannot reach them: Sparsifiner's
# connectivity predictor only picks the keys (an integer top-k) and learns from the attention-reconstruction
# loss of phase 1 (set_training_phase turns it on). timm's own test_model_backward asks for a gradient on
# every parameter (no timm model has frozen ones); here it is asked of every parameter that requires grad.
FROZEN_WHEN_BUILT = ("*.mask_predictor.*",)


@pytest.fixture(scope="module", params=MODELS)
def built(request):
    torch.manual_seed(0)
    return request.param, timm.create_model(request.param).eval()


def image(size, batch=1, width=None):
    return torch.randn(batch, 3, size, width or size, generator=torch.Generator().manual_seed(1))


def input_size(model, target):
    """``target`` px, or the model's own size when it is built for one (timm's fixed_input_size)."""
    return model.pretrained_cfg["input_size"][-1] if model.pretrained_cfg.get("fixed_input_size") else target


def output_fmt(model):
    """How forward_features lays out its output: NHWC/NCHW maps, or NLC tokens for ViT-style models."""
    if model.pretrained_cfg.get("pool_size") is None:
        return "NLC"
    return getattr(model, "output_fmt", "NCHW")


def first_block(model):
    return next(m for name, m in model.named_modules() if re.search(r"(^|\.)blocks\.0$", name))


@pytest.mark.quick
def test_every_family_is_registered():
    for name in ("nat_mini", "nat_base", "dinat_large_384", "dinat_large_384_11x11"):
        assert name in attnzoo.list_models()


def test_forward(built):
    name, model = built
    with torch.no_grad():
        out = model(image(input_size(model, FWD_SIZE)))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", FLEXIBLE)
@pytest.mark.parametrize("height,width", [(32, 32), (40, 72), (57, 33)])
def test_any_input_of_at_least_32_pixels(name, height, width):
    multiple = next((m for pattern, m in SIZE_MULTIPLE.items() if fnmatch.fnmatch(name, pattern)), 1)
    height, width = (-(-side // multiple) * multiple for side in (height, width))
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(image(height, width=width)).shape == (1, model.num_classes)


def test_backward_reaches_every_parameter(built):
    name, model = built
    model = copy.deepcopy(model).train()
    model.reset_classifier(42)
    out = model(image(input_size(model, BWD_SIZE), batch=2))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(any(fnmatch.fnmatch(n, pattern) for pattern in FROZEN_WHEN_BUILT) for n in frozen), frozen
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_default_cfg_and_pooled_shapes(built):
    name, model = built
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    for field in CFG_FIELDS:
        assert cfg.get(field), f"pretrained_cfg lacks {field}"
    assert cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("notes"), "weights location, or a note why none"
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    classifier = model.get_classifier()  # timm's Swin returns head.fc of its ClassifierHead
    assert isinstance(classifier, torch.nn.Linear) and classifier.out_features == model.num_classes

    x = image(cfg["input_size"][-1])
    fmt = output_fmt(model)
    with torch.no_grad():
        features = model.forward_features(x)
        if fmt == "NLC":
            assert features.dim() == 3 and features.shape[-1] == model.num_features
        else:
            pool = tuple(cfg["pool_size"])
            expected = (1, *pool, model.num_features) if fmt == "NHWC" else (1, model.num_features, *pool)
            assert features.shape == expected
        assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features)
        headless = copy.deepcopy(model)
        headless.reset_classifier(0)
        assert headless(x).shape == (1, model.num_features)
        if fmt != "NLC":  # timm's ViT keeps its token pooling when global_pool is ''
            headless.reset_classifier(0, "")
            torch.testing.assert_close(headless(x), features)


def test_forward_intermediates(built):
    name, model = built
    size = input_size(model, FEAT_SIZE)
    x = image(size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == len(model.feature_info)
        for info, feature in zip(model.feature_info, intermediates, strict=True):
            side = math.ceil(size / info["reduction"])
            assert feature.shape == (1, info["num_chs"], side, side)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2
        torch.testing.assert_close(last_two[-1], intermediates[-1])
        if output_fmt(model) == "NHWC":  # the final norm applies to the last map
            normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)[0]
            torch.testing.assert_close(normed, final.permute(0, 3, 1, 2))
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[1], intermediates[1])


def test_prune_intermediate_layers(built):
    name, model = built
    x = image(input_size(model, FEAT_SIZE))
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
        assert pruned.num_classes == 0
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters()) / 2
        kept = pruned.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for a, b in zip(kept, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_features_only(built):
    name, model = built
    torch.manual_seed(0)  # the same initial weights as the fixture's model
    features = timm.create_model(name, features_only=True).eval()
    indices = list(features.feature_info.out_indices)
    assert features.feature_info.reduction() == [model.feature_info[i]["reduction"] for i in indices]
    assert features.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in indices]
    if output_fmt(model) != "NLC":
        assert features.feature_info.reduction() == [4, 8, 16, 32]
    size = input_size(model, FEAT_SIZE)
    x = image(size, width=size if model.pretrained_cfg.get("fixed_input_size") else size + 32)
    with torch.no_grad():
        maps = features(x)
        expected = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    if getattr(features, "output_fmt", "NCHW") == "NHWC":  # timm's Swin taps its layers channels-last
        maps = [m.permute(0, 3, 1, 2) for m in maps]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients(built):
    name, model = built
    x = image(input_size(model, 64))
    plain = copy.deepcopy(model)
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    calls = []
    first_block(checkpointed).register_forward_pre_hook(lambda *args: calls.append(1))  # recompute stops early
    outputs = []
    for net in (plain, checkpointed):
        out = net(x)
        out.square().mean().backward()
        outputs.append((out, {n: p.grad for n, p in net.named_parameters()}))
    assert len(calls) == 2, "checkpointing should re-run the block during backward"
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    for key, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][key], grad, atol=1e-6, rtol=1e-5, msg=key)


def test_layer_decay_groups_and_no_weight_decay(built):
    name, model = built
    groups = param_groups_layer_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay())
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}  # timm leaves frozen ones out
    scales = {g["lr_scale"] for g in groups}
    assert len(scales) >= 4 and min(scales) < 0.25 and max(scales) == 1.0, "the stem must get a smaller lr"
    names = dict(model.named_parameters())
    for nwd in model.no_weight_decay():  # full names, or timm's patterns / leaf names (Swin, ViT)
        matching = [n for n in names if n == nwd or fnmatch.fnmatch(n, nwd) or n.endswith("." + nwd)]
        for n in matching:  # (timm's ViT also lists tokens a given model lacks, e.g. reg_token)
            decayed = [g for g in groups if any(p is names[n] for p in g["params"])]
            assert decayed[0]["weight_decay"] == 0.0, n
    if any(n.endswith(".rpb") for n in names):
        assert {n for n in names if n.endswith(".rpb")} <= model.no_weight_decay()


@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing the model in eval mode")
def test_fx_feature_extraction(built):
    name, model = built
    _, eval_nodes = get_graph_node_names(model)
    x = image(input_size(model, 64))
    first, last = model.feature_info[0], model.feature_info[-1]
    # one extractor for the first and last feature modules and the graph's output node: each build traces the
    # model twice (train and eval graphs), seconds for the deep variants
    extractor = GraphExtractNet(model, [first["module"], last["module"], eval_nodes[-1]])
    with torch.no_grad():
        graph_features = extractor(x)
        torch.testing.assert_close(graph_features[-1], model(x))
    assert len(graph_features) == 3
