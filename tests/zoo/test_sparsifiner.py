"""Sparsifiner-DeiT (attnzoo.sparsifiner): sparse inference, DeiT-S weights, attention FLOPs, features; and the
two-phase recipe (attnzoo.sparsifiner_distillation)."""

import math
from unittest import mock

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import attnzoo
import attnzoo.blocks.sparsifiner as sparsifiner_block
from attnzoo.kernels import torch_backend
from attnzoo.sparsifiner import MissingPredictorWarning
from attnzoo.sparsifiner_distillation import (
    SparsifinerLoss,
    attn_recon_loss,
    record_aux,
    set_training_phase,
    sparsifiner_mixers,
    student_forward,
    teacher_forward,
)

TINY = dict(embed_dim=48, depth=2, num_heads=6)  # DeiT-S's layout at 224 (197 tokens), narrow and shallow


def image(batch=2, seed=0):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def perturb(model, seed=0):
    """O(1) weights (instead of the 0.02 init) so that attention is peaky and every block matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "mask_predictor" not in name:
                p.normal_(0.0, 1.5 / math.sqrt(p.shape[-1] if p.dim() == 2 else p[0].numel()))
            elif "mask_predictor.proj" in name and p.dim() == 2 and "proj_c" not in name:
                p.normal_(0.0, 0.05)  # wider than the 0.02 init, so the basis threshold bites
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def tiny_deit(seed=0):
    return perturb(timm.create_model("deit_small_patch16_224", **TINY), seed).eval()


def tiny_student_from(deit, **kwargs):
    """A Sparsifiner built, like the authors' student, from the teacher's DeiT weights (carried over by graft)."""
    model = timm.create_model("sparsifiner_deit_small", **TINY, **kwargs)
    with pytest.warns(MissingPredictorWarning):
        model.load_state_dict(attnzoo.sparsifiner.checkpoint_filter_fn(deit.state_dict(), model))
    return model


# --- inference --------------------------------------------------------------------------------------------
def test_inference_runs_gather_attention_and_equals_the_masked_dense_computation():
    model = perturb(timm.create_model("sparsifiner_deit_small", **TINY)).eval()
    calls, real = [], sparsifiner_block.gather_attention

    def counting(q, k, v, index, **kwargs):
        calls.append(index.shape)
        return real(q, k, v, index, **kwargs)

    with torch.no_grad(), mock.patch.object(sparsifiner_block, "gather_attention", counting):
        sparse = model(image())
    # every block ran the gather path over ceil(0.25 * 197) = 50 keys for each of the 196 patch queries
    assert calls == [torch.Size([2, 6, 196, 50])] * 2
    for mixer in sparsifiner_mixers(model):
        mixer.sparse_impl = "masked"  # the authors' computation: dense logits, -inf outside the mask, softmax
    with torch.no_grad():
        masked = model(image())
    torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=1e-5)
    for mixer in sparsifiner_mixers(model):
        mixer.attn_budget = mixer.num_tokens  # dense: the sparsity really changes the output
    with torch.no_grad():
        assert (model(image()) - sparse).abs().max() > 1e-2


# --- DeiT-S weights -----------------------------------------------------------------------------------------
def test_default_cfg_points_at_timms_deit_small_weights():
    ours = timm.models.get_pretrained_cfg("sparsifiner_deit_small")
    deit = timm.models.get_pretrained_cfg("deit_small_patch16_224")
    assert (ours.url, ours.hf_hub_id) == (deit.url, deit.hf_hub_id)
    assert ours.url == "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"
    assert ours.license == "apache-2.0" and ours.paper_ids == "arXiv:2303.13755"
    assert ours.origin_url == "https://github.com/lim142857/Sparsifiner"


@pytest.mark.quick
def test_pretrained_loads_a_deit_small_checkpoint_and_reports_the_untrained_predictor(tmp_path):
    deit = tiny_deit()
    path = tmp_path / "deit_small_patch16_224-cd65a155.pth"
    torch.save({"model": deit.state_dict()}, path)  # the layout of DeiT's released file
    with pytest.warns(MissingPredictorWarning, match=r"12 tensors in 2 blocks"):
        model = timm.create_model(
            "sparsifiner_deit_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **TINY
        ).eval()
    ours = model.state_dict()
    for key, value in deit.state_dict().items():
        torch.testing.assert_close(ours[key.replace(".attn.", ".attn.mixer.")], value, rtol=0, atol=0)
    predictor = [k for k in ours if "mask_predictor" in k]
    assert len(predictor) == 12 and len(ours) == len(deit.state_dict()) + 12
    # with every key kept the grafted model is DeiT itself; at 25% it is not
    for mixer in sparsifiner_mixers(model):
        mixer.attn_budget = mixer.num_tokens
    with torch.no_grad():
        torch.testing.assert_close(model(image()), deit(image()), atol=1e-4, rtol=1e-4)


def test_a_sparsifiner_checkpoint_loads_strictly_and_silently():
    model = perturb(timm.create_model("sparsifiner_deit_small", **TINY))
    other = timm.create_model("sparsifiner_deit_small", **TINY)
    with mock.patch("warnings.warn") as warn:
        other.load_state_dict(attnzoo.sparsifiner.checkpoint_filter_fn(model.state_dict(), other))
    warn.assert_not_called()
    # the authors' own key names (no graft adapter) load through from_official
    authors = {k.replace(".attn.mixer.", ".attn."): v for k, v in model.state_dict().items()}
    config = dict(
        patch_size=16, embed_dim=48, depth=2, num_heads=6, mlp_ratio=4, qkv_bias=True, distill=True,
        attn_keep_rate_list=[0.25, 0.25], token_keep_rate_list=[1.0, 1.0], token_pruning_loc_indicator=[False, False],
        reduce_n_factor=6, reduce_c_factor=2, share_inout_proj=False,
    )  # fmt: skip
    loaded = attnzoo.from_official("sparsifiner_deit_small", config, authors)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image()), model.eval()(image()))


def test_from_official_refuses_what_is_not_ported():
    base = dict(embed_dim=48, depth=2, num_heads=6, attn_keep_rate_list=[0.25, 0.25])
    with pytest.raises(ValueError, match="token pruning"):
        attnzoo.from_official("sparsifiner_deit_small", {**base, "token_pruning_loc_indicator": [True, False]})
    with pytest.raises(ValueError, match="attn_keep_rate_list"):
        attnzoo.from_official("sparsifiner_deit_small", {k: v for k, v in base.items() if k != "attn_keep_rate_list"})
    with pytest.raises(ValueError, match="unsupported authors' constructor argument.*window_size"):
        attnzoo.from_official("sparsifiner_deit_small", {**base, "window_size": 7})
    model = attnzoo.from_official("sparsifiner_deit_small", {**base, "attn_keep_rate_list": [0.5, 0.1]})
    assert [m.attn_budget for m in sparsifiner_mixers(model)] == [99, 20]
    assert sparsifiner_mixers(model)[0].mask_predictor.reduced_n == 197 // 8  # the class default, not the yaml's


# --- attention FLOPs ------------------------------------------------------------------------------------------
def cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    """FlopCounterMode has no formula for CPU's fused SDPA kernel: count it as the math (QK^T and AV matmuls)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def zero_model(name):
    """The full-size model with zero weights: FLOPs depend on shapes only (Sparsifiner keeps 50 keys whatever
    the scores), and skipping the random init of 2 x 22M parameters saves seconds."""
    with torch.device("meta"):
        model = timm.create_model(name)
    model.to_empty(device="cpu")
    for tensor in model.state_dict().values():
        tensor.zero_()
    return model


def attention_macs(model) -> dict:
    """Per-part MACs of all attention modules at 224 (batch 1): projections, attention core, predictor."""
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}
    )
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    counts = {
        name.split(".", 1)[1]: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items() if "." in name
    }
    parts = dict(linear=0, core=0, predictor=0)
    for i in range(len(model.blocks)):
        attn = f"blocks.{i}.attn" + (".mixer" if f"blocks.{i}.attn.mixer" in counts else "")
        linear = counts[f"{attn}.qkv"] + counts[f"{attn}.proj"]
        predictor = counts.get(f"{attn}.mask_predictor", 0)
        parts["linear"] += linear
        parts["predictor"] += predictor
        parts["core"] += counts[attn] - linear - predictor
    return parts


def test_attention_flops_of_sparsifiner_deit_small_against_deit_small():
    """Measured at 224 by FlopCounterMode (gather_attention's matmuls are counted; CPU SDPA by its formula).

    Per layer, DeiT-S's attention core (QK^T and AV) is 2 * 197^2 * 384 MACs. Sparsifiner keeps 50 of 197
    keys for the 196 patch queries (the cls query keeps all): 2 * (196 * 50 + 197) * 384, -74.2%. Its
    predictor (reduced q/k projections, Linformer compression, rank-32 expansion back to 197 keys, computed
    as dense matmuls) costs 14.7M MACs per layer, so core + predictor is -25.1%. The paper's 48-69% lies
    between the two: its accounting counts the predictor's expansion as the sparse product it is (top-8 of 32
    coefficients, thresholded basis), which would bring ours to about -44%. Projections (qkv, proj) are
    untouched, so the whole MHSA drops by 5.1% and the model by 2%.

    These are the mechanism's MACs, counted on the torch backend's gather path. Its cost rule runs this shape on
    the dense path instead (a GEMM multiply-add costs ~1/32 of a gathered slot on the CPU: faster, with 4x the
    core MACs), which the last lines count.
    """
    deit_model, sparse_model = zero_model("deit_small_patch16_224"), zero_model("sparsifiner_deit_small")
    n, c, depth, kept = 197, 384, 12, math.ceil(0.25 * 197)
    # the authors' parameters: DeiT-S + per block proj_c_q, proj_c_k (64 -> 32), proj_n, proj_back_n (197 x 32)
    added = depth * (2 * (64 * 32 + 32) + 2 * n * 32)
    assert sum(p.numel() for p in sparse_model.parameters()) == sum(p.numel() for p in deit_model.parameters()) + added
    deit = attention_macs(deit_model)
    with mock.patch.object(torch_backend, "DENSE_KEYS_PER_LISTED", 0):  # force the gather path
        sparse = attention_macs(sparse_model)
    assert deit["core"] == 2 * n * n * c * depth and deit["predictor"] == 0
    assert sparse["core"] == 2 * ((n - 1) * kept + n) * c * depth
    assert sparse["linear"] == deit["linear"]
    heads, d, r, low = 6, 64, 197 // 6, 32  # N_r = 32 compressed keys, c' = d // 2 = 32
    predictor = heads * ((n - 1) * d * low + n * d * low + low * n * r + (n - 1) * low * r + (n - 1) * r * n)
    assert sparse["predictor"] == predictor * depth
    core_reduction = 1 - sparse["core"] / deit["core"]
    with_predictor = 1 - (sparse["core"] + sparse["predictor"]) / deit["core"]
    mhsa = 1 - sum(sparse.values()) / sum(deit.values())
    assert 0.74 < core_reduction < 0.745
    assert 0.25 < with_predictor < 0.255
    assert 0.05 < mhsa < 0.055
    # as it runs: the cost rule's dense path scores every key, then takes the 50 listed ones
    as_run = attention_macs(sparse_model)
    assert as_run["core"] == 2 * n * n * c * depth and as_run["predictor"] == sparse["predictor"]


# --- features_only and gradients ------------------------------------------------------------------------------
def test_features_only_at_224_and_gradients():
    """The predictors pick keys by top-k (no gradient through the indices): even when trainable (phase 1; they are
    built frozen) the features give them none, and only the reconstruction loss reaches them."""
    model = timm.create_model("sparsifiner_deit_small", features_only=True)
    assert model.feature_info.reduction() == [16, 16, 16] and model.feature_info.channels() == [384] * 3
    predictor = [p for n, p in model.named_parameters() if ".mask_predictor." in n]
    assert len(predictor) == 12 * 6 and not any(p.requires_grad for p in predictor)
    for p in predictor:
        p.requires_grad_(True)
    with record_aux(model) as aux:
        features = model(image(batch=1))
    assert [tuple(f.shape) for f in features] == [(1, 384, 14, 14)] * 3
    assert len(aux) == 12 and aux[0]["approx_attn"].shape == (1, 6, 196, 197)
    feature_loss = sum(f.square().mean() for f in features)
    # the features do not depend on the predictors differentiably (autograd finds no path; nothing is computed)
    assert all(g is None for g in torch.autograd.grad(feature_loss, predictor, allow_unused=True, retain_graph=True))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in sparsifiner_mixers(model))  # hooks removed
    (feature_loss + attn_recon_loss(aux)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_predictors_are_frozen_until_phase_one_and_still_saved_and_loaded():
    """Built (and so at inference and in phase 2) with frozen predictors; phase 1 trains only them, phase 2 all
    but them. They stay parameters: checkpoints carry them, and loading one leaves ``requires_grad`` alone."""
    model = timm.create_model("sparsifiner_deit_small", **TINY)
    predictor = {n for n, _ in model.named_parameters() if ".mask_predictor." in n}

    def trainable():
        return {n for n, p in model.named_parameters() if p.requires_grad}

    everything = {n for n, _ in model.named_parameters()}
    assert predictor and trainable() == everything - predictor
    assert not any(m.attn_recon for m in sparsifiner_mixers(model))
    set_training_phase(model, "attn_recon")
    assert trainable() == predictor
    set_training_phase(model, "cls_distill")
    assert trainable() == everything - predictor

    source = perturb(timm.create_model("sparsifiner_deit_small", **TINY), seed=3)
    assert predictor <= set(source.state_dict())
    model.load_state_dict(source.state_dict())
    assert trainable() == everything - predictor
    for name in predictor:
        torch.testing.assert_close(model.get_parameter(name), source.get_parameter(name), rtol=0, atol=0)


# --- the two-phase recipe -------------------------------------------------------------------------------------
def test_phase_one_trains_only_the_predictors_against_the_teachers_attention():
    deit = tiny_deit()
    student = tiny_student_from(deit)
    trainable = set_training_phase(student, "attn_recon")
    predictor = [p for n, p in student.named_parameters() if ".mask_predictor." in n]
    assert {id(p) for p in trainable} == {id(p) for p in predictor}
    student.train()
    x = image()
    out = student_forward(student, x)
    teacher = teacher_forward(deit, x, return_attn=True)
    # phase 1 attention is dense: the student (teacher's backbone) reproduces the teacher
    torch.testing.assert_close(out["logits"], teacher["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["aux"][1]["attn"], teacher["attn"][1][:, :, 1:], atol=1e-5, rtol=1e-4)
    loss_fn = SparsifinerLoss("attn_recon")
    loss, parts = loss_fn(out, teacher, None)
    own_target, _ = loss_fn(out)  # the student's own dense attention: the same target in phase 1
    torch.testing.assert_close(loss, own_target)
    by_hand = (
        0.01
        * sum((a["approx_attn"] - t[:, :, 1:]).square().sum() for a, t in zip(out["aux"], teacher["attn"], strict=True))
        / 2
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor)
    assert all(p.grad is None for n, p in student.named_parameters() if ".mask_predictor." not in n)


@pytest.mark.parametrize("soft", [False, True])
def test_phase_two_loss_is_the_authors_ce_plus_logit_and_token_distillation(soft):
    deit = tiny_deit()
    student = tiny_student_from(deit)
    perturb(student, seed=1)  # a student that has drifted from its teacher
    trainable = set_training_phase(student, "cls_distill")
    assert all(".mask_predictor." not in n for n, p in student.named_parameters() if p.requires_grad)
    assert len(trainable) == sum(1 for n, _ in student.named_parameters() if ".mask_predictor." not in n)
    assert not any(m.attn_recon for m in sparsifiner_mixers(student))
    student.train()
    x = image()
    target = torch.tensor([3, 7])
    if soft:
        target = F.one_hot(target, 1000).float() * 0.9 + 0.1 / 1000
    out = student_forward(student, x)
    teacher = teacher_forward(deit, x)
    loss_fn = SparsifinerLoss()
    assert (loss_fn.cls_weight, loss_fn.cls_distill_weight, loss_fn.token_distill_weight) == (1.0, 0.5, 0.5)
    loss, parts = loss_fn(out, teacher, target)
    log_p, log_q = teacher["logits"].log_softmax(-1), out["logits"].log_softmax(-1)
    if soft:
        cls = -(target * log_q).sum(-1).mean()
    else:  # label smoothing 0.1, as the authors' LabelSmoothingCrossEntropy
        cls = (0.9 * -log_q.gather(1, target[:, None]).squeeze(1) + 0.1 * -log_q.mean(-1)).mean()
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # KL(teacher || student), batch mean
    tokens = (out["tokens"] - teacher["tokens"]).square().mean()
    torch.testing.assert_close(parts["cls_loss"], cls)
    torch.testing.assert_close(parts["cls_distill_loss"], 0.5 * kl)
    torch.testing.assert_close(parts["token_distill_loss"], 0.5 * tokens)
    torch.testing.assert_close(loss, cls + 0.5 * kl + 0.5 * tokens)
    assert out["tokens"].shape == (2, 196, 48) and kl > 0 and tokens > 0
    loss.backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for n, p in student.named_parameters() if ".mask_predictor." in n)


def test_recipe_errors():
    student = timm.create_model("sparsifiner_deit_small", **TINY)
    with pytest.raises(ValueError, match="phase"):
        set_training_phase(student, "joint")
    with pytest.raises(ValueError, match="teacher"):
        SparsifinerLoss()({"logits": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="no Sparsifiner"):
        set_training_phase(timm.create_model("deit_tiny_patch16_224", depth=1), "attn_recon")
    student.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="checkpointing"), record_aux(student):
        pass


def test_attn_recon_loss_is_the_authors_weighted_layer_mean_of_summed_squares():
    a = [{"approx_attn": torch.rand(2, 2, 3, 4), "attn": torch.rand(2, 2, 3, 4)} for _ in range(3)]
    expected = 0.01 * sum(((d["approx_attn"] - d["attn"]) ** 2).sum() for d in a) / 3
    torch.testing.assert_close(attn_recon_loss(a), expected)
    with pytest.raises(ValueError, match="aux_per_layer must hold at least one"):
        attn_recon_loss([])
