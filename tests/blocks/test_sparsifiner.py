"""SparsifinerAttention: predictor math, top-k connectivity, sparse == masked-dense, cls row, grads, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnzoo.blocks.sparsifiner import SparsifinerAttention

DIM, HEADS = 16, 2


def make(num_tokens, seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    module = SparsifinerAttention(DIM, HEADS, num_tokens=num_tokens, **kwargs).to(dtype)
    with torch.no_grad():  # wider low-rank projections than the 0.02 init, so the 0.02 basis threshold bites
        module.mask_predictor.proj_n.normal_(0.0, 0.05)
        module.mask_predictor.proj_back_n.normal_(0.0, 0.05)
    return module.eval()


def split_heads(module, tokens):
    """q, k, v as (B, heads, N, d), written with einsum instead of the module's view/permute."""
    b, n, _ = tokens.shape
    qkv = torch.einsum("bnc,oc->bno", tokens, module.qkv.weight) + module.qkv.bias
    q, k, v = qkv.reshape(b, n, 3, HEADS, DIM // HEADS).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def predictor_by_hand(module, q, k, prefix, recon):
    mp = module.mask_predictor
    q_c = torch.einsum("bhnd,cd->bhnc", q[:, :, prefix:], mp.proj_c_q.weight) + mp.proj_c_q.bias
    k_c = torch.einsum("bhnd,cd->bhnc", k, mp.proj_c_k.weight) + mp.proj_c_k.bias
    k_r = torch.einsum("bhnc,nr->bhcr", k_c, mp.proj_n)
    logits = torch.einsum("bhnc,bhcr->bhnr", q_c, k_r) / math.sqrt(HEADS)
    coef = torch.exp(logits - logits.amax(-1, keepdim=True))
    coef = coef / coef.sum(-1, keepdim=True)
    basis = mp.proj_back_n.T
    if not recon:
        basis = torch.where(basis.abs() > 0.02, basis.abs(), torch.zeros_like(basis))
        kth = coef.sort(dim=-1, descending=True).values[..., min(8, coef.shape[-1]) - 1 : min(8, coef.shape[-1])]
        coef = torch.where(coef >= kth, coef, torch.zeros_like(coef))
    return coef, torch.einsum("bhnr,rm->bhnm", coef, basis)


def attention_by_hand(module, q, k, v, keep):
    """Softmax over the kept keys only (keep: bool (B, h, N, N)), then proj; as the authors mask with -inf."""
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * (DIM // HEADS) ** -0.5
    weights = torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", weights, v)
    b, _, n, _ = out.shape
    return F.linear(out.permute(0, 2, 1, 3).reshape(b, n, DIM), module.proj.weight, module.proj.bias)


def test_parameter_names_and_shapes_match_the_authors_keys():
    shapes = {k: tuple(v.shape) for k, v in SparsifinerAttention(384, 6).state_dict().items()}
    assert shapes == {
        "qkv.weight": (1152, 384),
        "qkv.bias": (1152,),
        "proj.weight": (384, 384),
        "proj.bias": (384,),
        "mask_predictor.proj_c_q.weight": (32, 64),
        "mask_predictor.proj_c_q.bias": (32,),
        "mask_predictor.proj_c_k.weight": (32, 64),
        "mask_predictor.proj_c_k.bias": (32,),
        "mask_predictor.proj_n": (197, 32),
        "mask_predictor.proj_back_n": (197, 32),
    }
    module = SparsifinerAttention(384, 6)
    assert module.attn_budget == 50  # ceil(0.25 * 197)
    shared = SparsifinerAttention(32, 4, num_tokens=50, reduce_n_factor=8, share_inout_proj=True)
    assert shared.mask_predictor.proj_back_n is shared.mask_predictor.proj_n
    assert shared.mask_predictor.proj_n.shape == (50, 6)


@pytest.mark.parametrize("recon", [False, True])
@pytest.mark.parametrize("prefix", [0, 1])
def test_predictor_and_target_by_hand(recon, prefix):
    n = prefix + 5 * 7
    module = make(n, keep_ratio=0.3, reduce_n_factor=3, attn_recon=recon).train()  # N_r = n // 3 > 8 coefficients
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    _, aux = module(x, grid_size=(5, 7), num_prefix_tokens=prefix, return_aux=True)
    q, k, _ = split_heads(module, x)
    coef, approx = predictor_by_hand(module, q, k, prefix, recon)
    assert aux["basis_coef"].shape == (2, HEADS, n - prefix, n // 3) and aux["approx_attn"].shape == (
        2,
        HEADS,
        n - prefix,
        n,
    )
    torch.testing.assert_close(aux["basis_coef"], coef, rtol=0, atol=1e-12)
    torch.testing.assert_close(aux["approx_attn"], approx, rtol=0, atol=1e-12)
    if not recon:
        assert ((aux["basis_coef"] > 0).sum(-1) == 8).all()
    target = torch.softmax(torch.einsum("bhid,bhjd->bhij", q[:, :, prefix:], k) / math.sqrt(DIM // HEADS), -1)
    torch.testing.assert_close(aux["attn"], target, rtol=0, atol=1e-12)
    assert not aux["attn"].requires_grad


@pytest.mark.parametrize("keep_ratio", [0.3, 0.5, 0.77])
def test_topk_mask_keeps_the_k_best_keys_per_query(keep_ratio):
    n = 1 + 6 * 6
    module = make(n, keep_ratio=keep_ratio)
    x = torch.randn(3, n, DIM, dtype=torch.float64)
    _, aux = module(x, grid_size=(6, 6), num_prefix_tokens=1, return_aux=True)
    index, approx = aux["index"], aux["approx_attn"]
    k = math.ceil(keep_ratio * n)
    assert index.shape == (3, HEADS, n - 1, k) and index.dtype == torch.int64
    keep = torch.zeros_like(approx, dtype=torch.bool).scatter(-1, index, True)
    assert (keep.sum(-1) == k).all()  # k distinct keys per query
    kept_min = approx.masked_fill(~keep, float("inf")).amin(-1)
    dropped_max = approx.masked_fill(keep, float("-inf")).amax(-1)
    assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("prefix,grid", [(1, (5, 6)), (0, (7, 3)), (2, (4, 4))])
@pytest.mark.parametrize("keep_ratio", [0.2, 0.5, 0.9])
def test_gather_path_equals_masked_dense_path_and_the_authors_masked_softmax(prefix, grid, keep_ratio):
    n = prefix + grid[0] * grid[1]
    gather = make(n, keep_ratio=keep_ratio, sparse_impl="gather")
    masked = make(n, keep_ratio=keep_ratio, sparse_impl="masked")
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    out, aux = gather(x, grid_size=grid, num_prefix_tokens=prefix, return_aux=True)
    torch.testing.assert_close(out, masked(x, grid_size=grid, num_prefix_tokens=prefix), rtol=0, atol=1e-10)
    keep = torch.zeros(2, HEADS, n, n, dtype=torch.bool)
    keep[:, :, :prefix] = True  # the cls/prefix rows attend to every token
    keep[:, :, prefix:] = keep[:, :, prefix:].scatter(-1, aux["index"], True)
    expected = attention_by_hand(gather, *split_heads(gather, x), keep)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    dense = attention_by_hand(gather, *split_heads(gather, x), torch.ones_like(keep))
    assert (out[:, prefix:] - dense[:, prefix:]).abs().max() > 1e-6  # the sparsity is real


def test_cls_query_attends_to_every_token():
    n = 1 + 4 * 5
    module = make(n, keep_ratio=0.2)
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    out = module(x, grid_size=(4, 5), num_prefix_tokens=1)
    q, k, v = split_heads(module, x)
    weights = torch.softmax(torch.einsum("bhd,bhjd->bhj", q[:, :, 0], k) * (DIM // HEADS) ** -0.5, -1)
    cls = torch.einsum("bhj,bhjd->bhd", weights, v).reshape(2, DIM)
    torch.testing.assert_close(out[:, 0], F.linear(cls, module.proj.weight, module.proj.bias), rtol=0, atol=1e-10)


@pytest.mark.parametrize("sparse_impl", ["gather", "masked"])
def test_keep_ratio_one_is_dense_attention(sparse_impl):
    module = make(1 + 3 * 5, keep_ratio=1.0, sparse_impl=sparse_impl)
    assert module.attn_budget == 16
    x = torch.randn(2, 16, DIM, dtype=torch.float64)
    q, k, v = split_heads(module, x)
    dense = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 16, DIM)
    expected = F.linear(dense, module.proj.weight, module.proj.bias)
    torch.testing.assert_close(module(x, grid_size=(3, 5), num_prefix_tokens=1), expected, rtol=0, atol=1e-12)
    out, aux = module(x, grid_size=(3, 5), num_prefix_tokens=1, return_aux=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert aux["index"].shape == (2, HEADS, 15, 16)


def test_attn_recon_training_is_dense_and_eval_is_sparse():
    n = 1 + 4 * 4
    module = make(n, keep_ratio=0.25, attn_recon=True)
    x = torch.randn(1, n, DIM, dtype=torch.float64)
    dense = attention_by_hand(module, *split_heads(module, x), torch.ones(1, HEADS, n, n, dtype=torch.bool))
    torch.testing.assert_close(module.train()(x, grid_size=(4, 4), num_prefix_tokens=1), dense, rtol=0, atol=1e-10)
    assert (module.eval()(x, grid_size=(4, 4), num_prefix_tokens=1) - dense).abs().max() > 1e-6


@pytest.mark.parametrize("grid", [(7, 9), (3, 5), (1, 1), (8, 8)])
def test_map_and_sequence_shapes(grid):
    h, w = grid
    module = make(h * w, dtype=torch.float32, keep_ratio=0.4, reduce_n_factor=4)
    x = torch.randn(2, h, w, DIM)
    out = module(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the map is the sequence in row-major order
    torch.testing.assert_close(out.reshape(2, h * w, DIM), module(x.reshape(2, h * w, DIM), grid_size=grid))
    with_cls = make(1 + h * w, dtype=torch.float32, keep_ratio=0.4, reduce_n_factor=4)
    seq = torch.randn(2, 1 + h * w, DIM)
    out, aux = with_cls(seq, grid_size=grid, num_prefix_tokens=1, return_aux=True)
    assert out.shape == seq.shape and aux["approx_attn"].shape == (2, HEADS, h * w, 1 + h * w)


def test_bfloat16_autocast_matches_float32():
    module = make(1 + 7 * 9, dtype=torch.float32, keep_ratio=0.5)
    x = torch.randn(2, 1 + 7 * 9, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = module(x, grid_size=(7, 9), num_prefix_tokens=1, return_aux=True)
    assert out.dtype == torch.bfloat16 and aux["approx_attn"].dtype == torch.float32
    reference = module(x, grid_size=(7, 9), num_prefix_tokens=1)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)


def test_predictor_is_frozen_by_default_and_trains_only_on_the_distillation_loss():
    n = 1 + 5 * 5
    module = make(n, dtype=torch.float32, keep_ratio=0.3).train()
    x = torch.randn(2, n, DIM, requires_grad=True)
    # default (inference, phase 2): timm's rule holds, every parameter that requires grad gets one from the output
    assert not any(p.requires_grad for p in module.mask_predictor.parameters())
    module(x, grid_size=(5, 5), num_prefix_tokens=1).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, p in module.named_parameters():
        assert (p.grad is not None) == p.requires_grad == (not name.startswith("mask_predictor.")), name
    assert all(p.requires_grad for p in make(n, attn_recon=True).mask_predictor.parameters())

    module.zero_grad(set_to_none=True)
    module.mask_predictor.requires_grad_(True)  # phase 1: the predictor learns, but never from the output
    out, aux = module(x, grid_size=(5, 5), num_prefix_tokens=1, return_aux=True)
    out.sum().backward(retain_graph=True)
    grads = {name: p.grad for name, p in module.named_parameters()}
    for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None for name, g in grads.items() if name.startswith("mask_predictor."))

    module.zero_grad(set_to_none=True)
    F.mse_loss(aux["approx_attn"], aux["attn"], reduction="sum").backward()  # the recipe's reconstruction loss
    for name, p in module.mask_predictor.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert module.proj.weight.grad is None  # the loss never sees the output projection


@pytest.mark.parametrize("sparse_impl", ["gather", "masked"])
def test_compile_fullgraph(sparse_impl):
    n = 1 + 8 * 8
    module = make(n, dtype=torch.float32, keep_ratio=0.25, sparse_impl=sparse_impl)
    x = torch.randn(1, n, DIM)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out, aux = compiled(x, grid_size=(8, 8), num_prefix_tokens=1, return_aux=True)
    ref, ref_aux = module(x, grid_size=(8, 8), num_prefix_tokens=1, return_aux=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(aux["approx_attn"], ref_aux["approx_attn"])
    assert torch.equal(aux["index"].sort(-1).values, ref_aux["index"].sort(-1).values)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(keep_ratio=0.0), ValueError, r"keep_ratio must lie in \(0.0, 1.0\], got 0.0"),
        (dict(keep_ratio=1.5), ValueError, r"keep_ratio must lie in \(0.0, 1.0\], got 1.5"),
        (dict(keep_ratio="half"), TypeError, "keep_ratio must be a real number"),
        (dict(dim=30, num_heads=4), ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (dict(num_tokens=0), ValueError, "num_tokens must be >= 1, got 0"),
        (dict(reduce_c_factor=16), ValueError, r"reduce_c_factor \(16\) must not exceed the head dimension"),
        (dict(reduce_n_factor=0), ValueError, "reduce_n_factor must be >= 1, got 0"),
        (dict(basis_coef_topk=0), ValueError, "basis_coef_topk must be >= 1, got 0"),
        (dict(basis_threshold=-1.0), ValueError, r"basis_threshold must lie in \[0.0, inf\], got -1.0"),
        (dict(qk_scale=-0.5), ValueError, r"qk_scale must be > 0 \(or None\), got -0.5"),
        (dict(attn_drop=0.1), ValueError, "attn_drop must be 0 for Sparsifiner"),
        (dict(sparse_impl="csr"), ValueError, r"sparse_impl must be one of \('gather', 'masked'\), got 'csr'"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    kwargs = {"dim": 32, "num_heads": 4, "num_tokens": 17, **kwargs}
    with pytest.raises(error, match=message):
        SparsifinerAttention(**kwargs)


def test_bad_inputs():
    """Forward checks are cheap asserts (timm's ``_assert``), each naming what is wrong."""
    module = SparsifinerAttention(DIM, HEADS, num_tokens=1 + 4 * 4)
    map_or_sequence = r"x must be a channels-last map \(B, H, W, C\), or a token sequence \(B, N, C\) given with grid"
    with pytest.raises(AssertionError, match=map_or_sequence):
        module(torch.randn(17, DIM))
    with pytest.raises(AssertionError, match=map_or_sequence):
        module(torch.randn(1, 2, 4, 4, DIM))
    with pytest.raises(AssertionError, match=map_or_sequence):
        module(torch.randn(2, 17, DIM))  # a sequence without grid_size
    with pytest.raises(AssertionError, match="x must hold the module's num_tokens=17 tokens"):
        module(torch.randn(2, 4, 4, DIM))
    with pytest.raises(AssertionError, match="x must hold the module's num_tokens=17 tokens"):
        module(torch.randn(2, 26, DIM), grid_size=(5, 5), num_prefix_tokens=1)
    with pytest.raises(AssertionError, match=r"a token sequence holds num_prefix_tokens \+ H\*W tokens"):
        module(torch.randn(2, 17, DIM), grid_size=(4, 4))
    with pytest.raises(AssertionError, match="a .* map has no prefix tokens"):
        module(torch.randn(2, 4, 4, DIM), num_prefix_tokens=1)
    with pytest.raises(AssertionError, match=r"grid_size must be the map's \(H, W\)"):
        module(torch.randn(2, 4, 4, DIM), grid_size=(2, 8))
    with pytest.raises(RuntimeError):  # a wrong channel count: the qkv projection refuses it
        module(torch.randn(2, 17, 8), grid_size=(4, 4), num_prefix_tokens=1)


# --- what the forward builds and keeps (issue 27) --------------------------------------------------------------
class SoftmaxWidths(torch.utils._python_dispatch.TorchDispatchMode):
    """The row length of every softmax the forward runs."""

    def __init__(self):
        super().__init__()
        self.widths = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._softmax.default:
            self.widths.append(args[0].shape[args[1]])
        return func(*args, **(kwargs or {}))


def test_the_dense_target_is_built_only_when_read():
    """Phase 2 records aux but never reads ``attn``: no dense N-wide softmax; phase 1 reads it and gets it."""
    n = 1 + 6 * 6
    module = make(n, keep_ratio=0.25).train()
    x = torch.randn(2, n, DIM, dtype=torch.float64)
    with SoftmaxWidths() as mode:
        _, aux = module(x, grid_size=(6, 6), num_prefix_tokens=1, return_aux=True)
    assert "attn" not in aux and n not in mode.widths  # the predictor's softmax is N_r wide, the cls row is SDPA
    with SoftmaxWidths() as mode:
        target = aux["attn"]
    assert mode.widths == [n] and aux["attn"] is target and not target.requires_grad
    q, k, _ = split_heads(module, x)
    expected = torch.softmax(torch.einsum("bhid,bhjd->bhij", q[:, :, 1:], k) / math.sqrt(DIM // HEADS), -1)
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-12)
    with pytest.raises(KeyError):
        aux["missing"]


@pytest.mark.parametrize("training", [False, True])
def test_backward_keeps_no_token_by_token_matrix_and_nothing_of_the_predictor(training):
    """Without aux only the integer top-k leaves the predictor: autograd saves none of its tensors, and nothing
    of size (B, heads, N, N) or (B, heads, N, K, head_dim) (the gathered copy of before)."""
    n, prefix = 1 + 8 * 8, 1
    module = make(n, dtype=torch.float32, keep_ratio=0.25).train(training)
    x = torch.randn(2, n, DIM, requires_grad=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x, grid_size=(8, 8), num_prefix_tokens=prefix)
    token_matrix = 2 * HEADS * (n - prefix) * n
    assert shapes and max(math.prod(s) for s in shapes) < token_matrix
    reduced_n = module.mask_predictor.reduced_n
    assert not any(s[-1] in (reduced_n, module.mask_predictor.reduced_c) for s in shapes if len(s) == 4)
    out.sum().backward()
    assert x.grad is not None and module.qkv.weight.grad is not None
