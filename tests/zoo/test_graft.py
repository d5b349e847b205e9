"""attnzoo.graft: any mixer inside timm's Swin, PVTv2, ViT/DeiT, DaViT and FocalNet models."""

import copy

import pytest
import timm
import torch

import attnzoo
from attnzoo.graft import find_sites


def image(size=224, batch=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name,mixer", [("davit_tiny", "dual"), ("focalnet_tiny_srf", "focal")])
def test_our_blocks_reproduce_timms_davit_and_focalnet(name, mixer):
    """Weights carried over, blocks/dual.py and blocks/focal.py give timm's logits (timm's are the released models)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    for p in model.parameters():  # O(1) weights so that every block matters
        p.data.add_(torch.randn_like(p) * 0.05)
    grafted = attnzoo.graft(copy.deepcopy(model), mixer)
    assert all(hasattr(getattr(s.block, s.attribute), "mixer") for s in find_sites(grafted))
    with torch.no_grad():
        expected, got = model(image()), grafted(image())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 0.1  # the logits are not trivially constant


def test_larger_focal_windows_start_from_centre_padded_kernels():
    """FocalNet's dense fine-tuning (focal window 9): the 3/5 kernels zero-padded to 9/11 compute the same logits."""
    torch.manual_seed(0)
    model = timm.create_model("focalnet_tiny_srf", num_classes=10).eval()
    for p in model.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    grafted = attnzoo.graft(copy.deepcopy(model), "focal", focal_window=9)
    old = dict(model.named_parameters())["layers.0.blocks.0.modulation.focal_layers.1.0.weight"]
    new = dict(grafted.named_parameters())["layers.0.blocks.0.modulation.mixer.focal_layers.1.0.weight"]
    assert old.shape[-1] == 5 and new.shape[-1] == 11
    assert torch.equal(new[..., 3:8, 3:8], old)
    ring = new.detach().clone()
    ring[..., 3:8, 3:8] = 0
    assert not ring.any()  # zeros around the centre
    with torch.no_grad():
        torch.testing.assert_close(grafted(image()), model(image()), atol=1e-4, rtol=1e-4)
    smaller = attnzoo.graft(copy.deepcopy(model), "focal", focal_window=1)  # kernels 1 and 3: centre crops
    cropped = dict(smaller.named_parameters())["layers.0.blocks.0.modulation.mixer.focal_layers.1.0.weight"]
    assert torch.equal(cropped, old[..., 1:4, 1:4])


def test_without_carry_over_the_logits_differ():
    torch.manual_seed(0)
    model = timm.create_model("davit_tiny", num_classes=10).eval()
    fresh = attnzoo.graft(copy.deepcopy(model), "dual", carry_over=False)
    with torch.no_grad():
        assert (fresh(image()) - model(image())).abs().max() > 1e-3


@pytest.mark.parametrize(
    "name,mixer,kwargs",
    [
        ("swin_tiny_patch4_window7_224", "agent", dict(agent_num=9)),
        ("swin_tiny_patch4_window7_224", "neighborhood", dict(kernel_size=5)),
        ("pvt_v2_b0", "quadtree", dict(sr_ratio=2)),
        ("pvt_v2_b0", "hilo", {}),
        ("deit_tiny_patch16_224", "agent", {}),
        ("deit_tiny_patch16_224", "sparsifiner", {}),
    ],
)
def test_grafted_models_train(name, mixer, kwargs):
    model = timm.create_model(name, num_classes=5)
    attnzoo.graft(model, mixer, stages=[0] if "deit" not in name else None, **kwargs)
    out = model(image(batch=2))
    out.mean().backward()
    assert out.shape == (2, 5)
    assert all(p.grad is not None for n, p in model.named_parameters() if ".attn.mixer." in n and "predictor" not in n)


def test_only_the_chosen_stages_and_blocks_change_and_the_rest_keeps_its_weights():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224")
    before = copy.deepcopy(model.state_dict())
    attnzoo.graft(model, "agent", stages=[1], blocks=[0], agent_num=16)
    changed = {s.stage: s.index for s in find_sites(model) if hasattr(getattr(s.block, s.attribute), "mixer")}
    assert changed == {1: 0}
    after = model.state_dict()
    untouched = [k for k in before if not k.startswith("layers.1.blocks.0.attn.")]
    assert all(torch.equal(before[k], after[k]) for k in untouched)
    # qkv and proj are shared by name and shape: carried over
    assert torch.equal(after["layers.1.blocks.0.attn.mixer.qkv.weight"], before["layers.1.blocks.0.attn.qkv.weight"])


def test_features_only_models_and_grad_checkpointing_keep_working():
    model = timm.create_model("pvt_v2_b0", features_only=True, out_indices=(1, 2, 3))
    attnzoo.graft(model, "neighborhood", stages=[0, 1])
    maps = model(image(160))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()
    swin = attnzoo.graft(timm.create_model("swin_tiny_patch4_window7_224", num_classes=3), "hilo", stages=[2])
    swin.set_grad_checkpointing(True)
    swin(image(batch=2)).sum().backward()


def test_clear_errors_for_what_cannot_be_grafted():
    with pytest.raises(ValueError, match="graft supports timm's swin_.*pvt_v2_.*vit_.*davit_.*focalnet_"):
        attnzoo.graft(timm.create_model("resnet18"), "agent")
    with pytest.raises(ValueError, match=r"stages \[7\] do not exist in this model; its stages are \[0, 1, 2, 3\]"):
        attnzoo.graft(timm.create_model("pvt_v2_b0"), "hilo", stages=[7])
    with pytest.raises(ValueError, match=r"blocks \[5\] do not exist in stage 0, which has 2 blocks"):
        attnzoo.graft(timm.create_model("pvt_v2_b0"), "hilo", stages=[0], blocks=[5])
    with pytest.raises(ValueError, match="cannot take this ViT's 1 prefix .* use one of \\['agent', 'sparsifiner'\\]"):
        attnzoo.graft(timm.create_model("deit_tiny_patch16_224"), "neighborhood")
    with pytest.raises(ValueError, match="unknown mixer 'swin'"):
        attnzoo.graft(timm.create_model("deit_tiny_patch16_224"), "swin")


def test_sparsifiner_takes_swin_windows_and_map_mixers_refuse_dynamic_size_vits():
    """Both used to graft without complaint and fail on the first forward."""
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=3).eval()
    attnzoo.graft(swin, "sparsifiner", stages=3)
    assert swin(torch.randn(1, 3, 224, 224)).shape == (1, 3)  # built for the 7x7 windows' 49 tokens
    vit = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="dynamic_img_size=True does not tell its blocks the patch grid"):
        attnzoo.graft(vit, "neighborhood", kernel_size=3)


def test_a_vit_without_class_token_hosts_map_mixers():
    model = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", num_classes=4)
    attnzoo.graft(model, "neighborhood", kernel_size=7)
    assert model(image()).shape == (1, 4)
