"""Graph capture of every registered model: ``torch.export``, ``torch.jit.trace`` and ONNX (dynamo) + onnxruntime.

Each name is built by its own entrypoint with only depth and width cut down (``REDUCE``, per family): kernel
sizes, dilations, layer scale, agent and window settings, attention types and the input size stay the
variant's, so the captured graph walks that variant's code paths at a fraction of the cost. ``torch.export``
runs non-strict (its default since torch 2.9) with a dynamic batch, as timm's ``onnx_export(use_dynamo=True)``
exports; ONNX is ``torch.onnx.export(program, dynamo=True)`` of that program, run in onnxruntime.
``torch.jit.script`` is not supported (TorchScript is deprecated upstream); ``torch.jit.trace`` is.
"""

import sys
from unittest import mock

import onnxruntime
import pytest
import timm
import torch
from timm.models import get_pretrained_cfg_value, model_entrypoint

import attnzoo

FLEXIBLE_SIZE = 64  # QuadTree needs a multiple of 32; dilated NA pads the smaller maps, 7x7 NA the last one


def _nat(kw):
    """One block per stage; DiNAT keeps each stage's largest dilation (the last stage's is 1)."""
    out = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
    if kw.get("dilations"):
        out["dilations"] = [[max(stage)] for stage in kw["dilations"]]
    return out


def _agent_swin(kw):
    """One block per stage, two where the variant mixes agent and Swin blocks ('M'): one of each."""
    letters = kw["attn_type"][: len(kw["depths"])]
    depths = tuple(2 if c == "M" else 1 for c in letters)
    attn_type = letters + ("1" if "M" in letters else "")
    return dict(embed_dim=16, num_heads=(1, 1, 2, 2), depths=depths, attn_type=attn_type)


def _agent_deit(kw):
    """Two blocks: both agent blocks, or one agent and one plain DeiT block where the variant has both."""
    return dict(embed_dim=48, depth=2, agent_layer=2 if kw["agent_layer"] >= kw["depth"] else 1)


PVT_WIDTHS = dict(embed_dims=(8, 16, 40, 64), depths=(1, 1, 1, 1))  # heads (1, 2, 5, 8): head dim 8
REDUCE = {  # entrypoint module -> the variant's own kwargs -> the overrides that shrink it
    "attnzoo.nat": _nat,
    "attnzoo.litv2": lambda kw: dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),  # Hi-Fi + Lo-Fi
    "attnzoo.quadtree": lambda kw: PVT_WIDTHS,
    "attnzoo.agent_pvt": lambda kw: PVT_WIDTHS,
    "attnzoo.agent_swin": _agent_swin,
    "attnzoo.agent_deit": _agent_deit,
    "attnzoo.sparsifiner": lambda kw: dict(embed_dim=48, depth=1),
    "attnzoo.arena": lambda kw: dict(embed_dim=16, depths=(1, 1, 1, 1)),
}
# One name per family for the default run, chosen so that its reduced build has all the family's code paths
# (DiNAT-B: dilations and layer scale; Agent-Swin-B: agent, mixed and Swin stages; Agent-DeiT-B: agent and
# plain blocks); every other name runs with -m slow. ONNX export costs 2-20 s per family even reduced (it
# decomposes the program again): by default it runs for the agent and Sparsifiner code (the agent block's
# head merge once failed there; Sparsifiner's top-k and gather), every name with -m slow.
EXPORT_DEFAULT = {
    "dinat_base",
    "litv2_small",
    "quadtree_b0",
    "quadtree_a_b0",
    "agent_deit_base",
    "agent_pvt_tiny",
    "agent_swin_base",
    "sparsifiner_deit_small",
    "arena_tiny",
}
ONNX_DEFAULT = {"agent_deit_base", "sparsifiner_deit_small"}


def names(default: set[str]) -> list:
    return [name if name in default else pytest.param(name, marks=pytest.mark.slow) for name in attnzoo.list_models()]


def variant_kwargs(name: str) -> dict:
    """The keyword arguments ``name``'s entrypoint gives its family's ``_create`` (nothing is built)."""
    entrypoint = model_entrypoint(name)
    module = sys.modules[entrypoint.__module__]
    with mock.patch.object(module, "_create", lambda variant, pretrained=False, **kwargs: kwargs):
        return entrypoint()


def reduced(name: str) -> tuple[torch.nn.Module, int]:
    """``name`` at reduced depth and width, in eval mode, and the image side to run it at."""
    module = model_entrypoint(name).__module__
    torch.manual_seed(0)
    model = timm.create_model(name, **REDUCE[module](variant_kwargs(name))).eval()
    fixed = get_pretrained_cfg_value(name, "fixed_input_size")
    return model, model.pretrained_cfg["input_size"][-1] if fixed else FLEXIBLE_SIZE


def images(batch: int, side: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_every_family_has_a_reduction_and_runs_by_default():
    families = {model_entrypoint(name).__module__ for name in attnzoo.list_models()}
    assert families == set(REDUCE)
    assert {model_entrypoint(name).__module__ for name in EXPORT_DEFAULT} == families
    assert ONNX_DEFAULT <= EXPORT_DEFAULT <= set(attnzoo.list_models())


def test_reduction_keeps_the_variants_own_configuration():
    """Only depth and width change: a reduced DiNAT-L/384 11x11 keeps its 11x11 kernel and (largest) dilations,
    a reduced Agent-Swin-S/288 its windows and input size, a reduced Agent-Swin-B a mixed stage."""
    dinat, side = reduced("dinat_large_384_11x11")
    mixers = [b.mixer for s in dinat.stages for b in s.blocks]
    assert [m.kernel_size for m in mixers] == [11] * 4 and [m.dilation for m in mixers] == [8, 4, 2, 1]
    assert side == FLEXIBLE_SIZE and sum(p.numel() for p in dinat.parameters()) < 200_000
    swin, side = reduced("agent_swin_small_288")
    assert side == 288 and swin.layers[0].blocks[0].attn.mixer.window_size == (72, 72)
    assert [len(stage.blocks) for stage in swin.layers] == [1, 1, 1, 1]
    base = reduced("agent_swin_base")[0].layers[2].blocks
    assert hasattr(base[0].attn, "mixer") and not hasattr(base[1].attn, "mixer")


def dynamic_batch_export(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Non-strict ``torch.export`` with the batch dimension dynamic (as timm's ``onnx_export`` makes it)."""
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))


@pytest.mark.parametrize("name", names(EXPORT_DEFAULT))
def test_torch_export_and_jit_trace_match_eager(name):
    """Each capture is compared with eager on an input it was not made from (another batch size for the
    dynamic batch of export), so that values or shapes baked into the graph would show."""
    model, side = reduced(name)
    example, other, same_shape = images(2, side, seed=1), images(3, side, seed=2), images(2, side, seed=3)
    with torch.no_grad():
        program = dynamic_batch_export(model, example)
        torch.testing.assert_close(program.module()(other), model(other), atol=1e-6, rtol=1e-5)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.testing.assert_close(traced(same_shape), model(same_shape), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", names(ONNX_DEFAULT))
def test_onnx_dynamo_export_matches_eager_in_onnxruntime(name, tmp_path):
    model, side = reduced(name)
    example, other = images(2, side, seed=1), images(3, side, seed=2)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(dynamic_batch_export(model, example), (example,), str(path), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(other), atol=1e-5, rtol=1e-4)
