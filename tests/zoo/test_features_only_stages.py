"""``features_only`` at any stage count: the default ``out_indices`` come from the stages a model is built with.

Every registered model is built on the meta device (no memory, no init cost worth the name); the reduced
variants of every hierarchical family at 2, 3 and 4 stages run a forward at 64 px (2 px maps at stride 32).
"""

import pytest
import timm
import torch

import attnzoo

SIZE = 64
VIT_FAMILIES = ("agent_deit_", "sparsifiner_")


@pytest.mark.parametrize("name", attnzoo.list_models())
def test_every_registered_model_defaults_to_every_stage(name):
    with torch.device("meta"):
        features = timm.create_model(name, features_only=True)
    info = features.feature_info
    total = len(info.info)  # the model's whole feature_info, of which out_indices picks
    if name.startswith(VIT_FAMILIES):  # plain ViTs: timm's default, the last three blocks
        assert tuple(info.out_indices) == tuple(range(total - 3, total))
    else:
        assert tuple(info.out_indices) == tuple(range(total)) and total == 4
        assert info.reduction() == [4, 8, 16, 32]


def _reduced(family: str, stages: int) -> tuple[str, dict]:
    """The smallest model of ``family`` with ``stages`` stages of one block each, for 64 px inputs."""
    heads = [1, 2, 4, 8][:stages]
    depths = [1] * stages
    if family == "nat":
        return "nat_mini", dict(embed_dim=16, depths=depths, num_heads=heads, kernel_size=3)
    if family == "dinat":
        return "dinat_mini", dict(embed_dim=16, depths=depths, num_heads=heads, kernel_size=3, dilations=[[1]] * stages)
    if family == "litv2":
        has_msa = [0] * (stages - 1) + [1]
        return "litv2_small", dict(embed_dim=16, depths=depths, num_heads=heads, has_msa=has_msa, local_ws=1)
    if family == "quadtree":
        dims = [16, 32, 64, 128][:stages]
        return "quadtree_b0", dict(
            embed_dims=dims, depths=depths, num_heads=heads, mlp_ratios=2, levels=[2, 2, 1, 1][:stages]
        )
    if family == "agent_pvt":
        dims = [16, 32, 64, 128][:stages]
        return "agent_pvt_tiny", dict(
            img_size=SIZE,
            embed_dims=dims,
            depths=depths,
            num_heads=heads,
            mlp_ratios=[2] * stages,
            attn_type="A" * stages,
            agent_num=4,
            sr_ratios=[1] * stages,
        )
    if family == "agent_swin":
        return "agent_swin_tiny", dict(
            img_size=SIZE,
            embed_dim=16,
            depths=depths,
            num_heads=heads,
            window_size=2,
            agent_window_size=SIZE // 4,
            attn_type="A" * stages,
            agent_num=4,
        )
    raise AssertionError(family)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("family", ["nat", "dinat", "litv2", "quadtree", "agent_pvt", "agent_swin"])
def test_reduced_variants_give_one_map_per_stage(family, stages):
    name, kwargs = _reduced(family, stages)
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True, **kwargs).eval()
    info = features.feature_info
    assert tuple(info.out_indices) == tuple(range(stages))
    assert info.reduction() == [4 * 2**i for i in range(stages)]
    with torch.no_grad():
        maps = features(torch.randn(2, 3, SIZE, SIZE))
    assert len(maps) == stages
    nhwc = getattr(features, "output_fmt", "NCHW") == "NHWC"  # timm's Swin taps its layers channels-last
    for fmap, channels, reduction in zip(maps, info.channels(), info.reduction(), strict=True):
        fmap = fmap.permute(0, 3, 1, 2) if nhwc else fmap
        assert fmap.shape == (2, channels, SIZE // reduction, SIZE // reduction)


def test_the_digits_demo_model_has_three_maps():
    """The demo's own (3-stage) NAT, the model of the issue."""
    kwargs = dict(embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8], mlp_ratio=2.0, kernel_size=3)
    features = timm.create_model("nat_mini", features_only=True, **kwargs).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 32, 32))
    assert [m.shape[1:] for m in maps] == [(32, 8, 8), (64, 4, 4), (128, 2, 2)]


@pytest.mark.parametrize("name", ["agent_deit_tiny"])
def test_shallow_vit_defaults_to_its_blocks(name):
    """A ViT with fewer than three blocks takes all of them (timm's default of three would be out of range)."""
    kwargs = dict(embed_dim=16, depth=2, num_heads=1, agent_num=4, agent_layer=2)
    with torch.device("meta"):
        features = timm.create_model(name, features_only=True, **kwargs)
    assert tuple(features.feature_info.out_indices) == (0, 1)
