"""Records of mixers grafted into window attention (timm's DaViT and Swin) are restated over the whole map."""

import pytest
import timm
import torch

import attnzoo
from attnzoo.blocks import SpatialWindowAttention, record_attention


def test_davit_windows_match_the_same_attention_run_on_the_whole_map():
    torch.manual_seed(0)
    model = timm.create_model("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 2, 4, 8))
    attnzoo.graft(model.eval(), "dual")
    block = model.stages[0].blocks[0][0]
    inputs = {}
    block.register_forward_pre_hook(lambda _, args: inputs.setdefault("x", args[0]))
    with torch.no_grad(), record_attention(model) as records:
        model(torch.randn(1, 3, 64, 80))
    windowed = records["stages.0.blocks.0.0.attn.mixer"][0]
    assert windowed.kind == "windowed" and windowed.map_size == (16, 20) and windowed.batch_size == 1

    # the same mixer on the whole (B, H, W, C) map pads and windows it itself: its record is the reference
    whole = SpatialWindowAttention(16, 1, window_size=7).eval()
    whole.load_state_dict(block.attn.mixer.state_dict())
    normed = block.norm1(block.cpe1(inputs["x"]).flatten(2).transpose(1, 2)).view(1, 16, 20, 16)
    with torch.no_grad(), record_attention(whole) as reference:
        whole(normed)
    for row, col in [(0, 0), (15, 19), (7, 13), (13, 6)]:
        (got,) = windowed.query_maps(row, col)
        (want,) = reference[""][0].query_maps(row, col)
        torch.testing.assert_close(got.values, want.values, atol=1e-6, rtol=0)
        assert got.marker == (row, col)


@pytest.mark.parametrize("block_index", [0, 1])  # block 1 is Swin's shifted block
def test_swin_windows_follow_the_cyclic_shift(block_index):
    torch.manual_seed(1)
    model = timm.create_model("swin_tiny_patch4_window7_224", depths=(2, 2), num_heads=(1, 2), embed_dim=16)
    attnzoo.graft(model.eval(), "neighborhood", kernel_size=3)
    with torch.no_grad(), record_attention(model) as records:
        model(torch.randn(1, 3, 224, 224))
    record = records[f"layers.0.blocks.{block_index}.attn.mixer"][0]
    shift = (3, 3) if block_index else (0, 0)
    assert record.map_size == (56, 56) and record.shift == shift
    # which window each position lands in after timm's roll by -shift: the query's maps stay inside its window
    rows, cols = torch.meshgrid(torch.arange(56), torch.arange(56), indexing="ij")
    window_of = ((rows - shift[0]) % 56 // 7) * 8 + (cols - shift[1]) % 56 // 7
    for row, col in [(0, 0), (55, 55), (20, 33)]:
        (picture,) = record.query_maps(row, col)
        assert picture.values.sum().item() == pytest.approx(1.0, abs=1e-5)
        inside = window_of == window_of[row, col]
        assert (picture.values[~inside] == 0).all() and picture.values[row, col] > 0
    with pytest.raises(ValueError, match="outside"):
        record.query_maps(56, 0)
