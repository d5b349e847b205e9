"""The arena family: one backbone, only the mixer differs; the equal-compute rule; every entry trains and reloads."""

import io

import pytest
import timm
import torch

import attnzoo  # noqa: F401  (registers arena_tiny)
from attnzoo.arena import ENTRIES, HEAD_DIM, R_MAX, R_MIN, ArenaNet, check_input_size, solve_budget
from attnzoo.blocks.baselines import DenseAttention, ShiftedWindowAttention
from attnzoo.blocks.sparsifiner import SparsifinerAttention
from attnzoo.macs import count_macs

NAMES = list(ENTRIES)
# (budget in GMACs, image side): the Swin-T/NAT-T class and a small model at 224, and a budget at 384 that every
# entry reaches (dense attention and Sparsifiner only reach bands of budgets there: their stage-1 cost grows with
# the square of the 96 x 96 map, so one width step of 16 channels jumps by several GMACs)
BUDGETS = [(1.0, 224), (4.5, 224), (17.0, 384)]


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_meets_each_budget_within_two_percent(name):
    for budget, side in BUDGETS:
        solved = solve_budget(name, budget, side)
        assert solved["macs"] == pytest.approx(budget * 1e9, rel=0.02), (name, budget, side)
        assert solved["embed_dim"] % HEAD_DIM == 0 and R_MIN <= solved["mlp_ratio"] <= R_MAX
        assert solved["params"] > 0
    with torch.device("meta"):  # the number is the model's own, counted as `attnzoo info` counts
        model = timm.create_model("arena_tiny", mixer=name, budget=budget, img_size=side)
    assert count_macs(model.eval(), torch.empty(1, 3, side, side, device="meta")) == solved["macs"]
    assert sum(p.numel() for p in model.parameters()) == solved["params"]


def test_only_the_mixer_differs():
    """At one width and MLP ratio, every parameter outside the mixers has the same name and shape in every entry."""
    shapes = {}
    for name in NAMES:
        with torch.device("meta"):
            model = ArenaNet(name, embed_dim=32, mlp_ratio=2.0, img_size=64, num_classes=10)
        shapes[name] = {k: tuple(v.shape) for k, v in model.state_dict().items() if ".block.mixer." not in k}
        assert all(type(b.block.mixer).__name__ for s in model.stages for b in s.blocks)
    first = shapes[NAMES[0]]
    assert all(s == first for s in shapes.values())


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_trains_one_step_round_trips_a_checkpoint_and_transfers(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("arena_tiny", mixer=name, embed_dim=16, mlp_ratio=1.0, img_size=64, num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = timm.create_model("arena_tiny", mixer=name, embed_dim=16, mlp_ratio=1.0, img_size=64, num_classes=3)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
        again.set_input_size(96)  # each mixer's own rule for another size
        assert again(torch.randn(1, 3, 96, 96)).shape == (1, 3)


def test_sparsifiner_predictor_is_resampled_for_another_size():
    model = ArenaNet("sparsifiner", embed_dim=16, mlp_ratio=1.0, img_size=64, num_classes=3)
    first = next(m for m in model.modules() if isinstance(m, SparsifinerAttention))
    reduced = first.mask_predictor.reduced_n
    model.set_input_size(128)
    assert first.num_tokens == 32 * 32 and first.mask_predictor.proj_n.shape == (32 * 32, reduced)
    assert first.attn_budget == 256  # keep ratio 0.25


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: timm.create_model("arena_tiny", mixer="lsh"), "mixer: unknown arena entry 'lsh'"),
        (lambda: solve_budget("dense", 0.05, 224), "budget: 0.05 GMACs at 224x224 cannot be met by dense"),
        (lambda: solve_budget("hilo", -1.0, 224), "budget must be a positive number"),
        (lambda: check_input_size("hilo", 16), "img_size: 16x16 is below the arena's minimum of 32 px"),
        (lambda: check_input_size("quadtree", 200), "img_size: quadtree needs sides that are multiples of 32"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_argument(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_window_attention_is_dense_attention_on_one_window():
    """With a zero position bias, a map no larger than the window is one window: dense attention exactly."""
    torch.manual_seed(0)
    window, dense = ShiftedWindowAttention(32, 2, window_size=7, shift=True), DenseAttention(32, 2)
    dense.load_state_dict({k: v for k, v in window.state_dict().items() if "relative" not in k})
    torch.nn.init.zeros_(window.relative_position_bias_table)
    x = torch.randn(2, 7, 7, 32)
    torch.testing.assert_close(window(x), dense(x))


def test_shifted_windows_mask_across_the_wrap():
    """Shifted blocks see a different partition; a token's output depends only on its own shifted window."""
    torch.manual_seed(0)
    window = ShiftedWindowAttention(16, 1, window_size=4, shift=True).eval()
    x = torch.randn(1, 8, 8, 16)
    probe = x.clone()
    probe[0, 0, 0] += 1.0  # top-left corner: in the shifted layout it shares a window with the other corners only
    changed = (window(probe) - window(x)).abs().sum(-1)[0] > 1e-6
    assert changed[0, 0] and changed[:2, :2].sum() == 4 and changed.sum() == 4


def test_sparsifiner_predictor_counted_by_its_sparse_definition():
    """8 kept coefficients per query: the predictor's product costs ``Nq * N * 8``, not ``Nq * N * N_r``; the same
    module with thresholded coefficients (no fixed sparsity) is counted dense."""
    x = torch.randn(1, 8, 8, 32)
    kwargs = dict(num_tokens=64, keep_ratio=0.25, reduce_n_factor=2)
    sparse = SparsifinerAttention(32, 2, **kwargs).eval()
    thresholded = SparsifinerAttention(32, 2, basis_coef_topk=None, **kwargs).eval()
    saved = 1 * 2 * 64 * 64 * (sparse.mask_predictor.reduced_n - 8)  # 32 basis maps, 8 coefficients kept
    assert count_macs(sparse, x) == count_macs(thresholded, x) - saved
