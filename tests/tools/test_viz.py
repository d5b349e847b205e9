"""``attnzoo viz``: a PNG (SVG, PDF) of the asked size with the maps on the image, a colour bar and a readable label
per mixer row and the weights' source, on tiny models, and one-line errors."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from attnzoo import graft
from attnzoo.tools import cli
from attnzoo.tools import viz as drawing
from attnzoo_cli import install_hint

pytest.importorskip("matplotlib")

# 4 stages of one block, 3x3 neighbourhoods: milliseconds per forward at 64 px
TINY_NAT = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "kernel_size": 3}
TINY_DINAT = {**TINY_NAT, "dilations": [[2], [2], [1], [1]]}  # dilation 2 on the 16x16 and 8x8 maps of 64 px


def _kwargs(kwargs: dict) -> list[str]:
    return ["--model-kwargs", *(f"{key}={json.dumps(value)}" for key, value in kwargs.items())]


@pytest.fixture(scope="module")
def gradient(tmp_path_factory):
    """A 64x64 colour gradient: every pixel differs, so a drawn image has many colours."""
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack([ramp[:, None].repeat(64, 1), ramp[None, :].repeat(64, 0), 255 - ramp[:, None].repeat(64, 1)], -1)
    path = tmp_path_factory.mktemp("images") / "gradient.png"
    Image.fromarray(image.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """scikit-learn's sample photo (427x640 JPEG): resized and cropped by the model's transform."""
    datasets = pytest.importorskip("sklearn.datasets")
    path = tmp_path_factory.mktemp("images") / "china.jpg"
    Image.fromarray(datasets.load_sample_image("china.jpg")).save(path)
    return path


def _png(path, size) -> Image.Image:
    """The written PNG, checked: the asked size, and a picture (many colours), not a blank canvas."""
    image = Image.open(path).convert("RGB")
    assert image.size == size
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200, len(colours or [])
    return image


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo viz: error: ") and err.count("\n") == 1, err
    return err


def _records(model, image, size=64):
    """``(records, image_hw)`` of one recorded forward, as ``visualize`` makes them."""
    model = drawing.with_recordable_mixers(model).eval()
    x, shown = drawing.load_image(image, drawing.data_config(model, size))
    return drawing.run_recorded(model, x, "model"), tuple(shown.shape[:2])


# --- pictures ---------------------------------------------------------------------------------------------------


def test_nat_picture_has_the_asked_size_and_shows_the_image(gradient, tmp_path, capsys):
    out = tmp_path / "nat.png"
    argv = ["viz", "nat_mini", "--image", str(gradient), "--query", "20,40", "--out", str(out), *_kwargs(TINY_NAT)]
    cli.main([*argv, "--size-px", "333x777", "--size", "64", "--device", "cpu"])
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out}"
    _png(out, (333, 777))
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was moved in


def test_dinat_on_a_photo_draws_the_dilated_window_as_a_dotted_grid(photo, tmp_path):
    out = tmp_path / "dinat.png"
    cli.main(
        ["viz", "dinat_mini", "--image", str(photo), "--size", "64", "--out", str(out), "--size-px", "500x900"]
        + _kwargs(TINY_DINAT)
    )
    _png(out, (500, 900))
    model = timm.create_model("dinat_mini", **TINY_DINAT)
    records, image_hw = _records(model, photo)
    assert drawing.select_mixers(list(records)) == [f"stages.{i}.blocks.0.mixer" for i in range(4)]
    (panel,) = drawing.query_panels("stages.0.blocks.0.mixer", records["stages.0.blocks.0.mixer"], (21, 30), image_hw)
    assert panel.values.shape == (16, 16)  # the 16x16 map, stretched over the 64x64 input
    assert panel.marker == (20.0, 28.0, 24.0, 32.0)  # the query's cell: floor(21 * 16 / 64), floor(30 * 16 / 64)
    rows, cols = panel.values.nonzero(as_tuple=True)
    assert sorted(set(rows.tolist())) == [3, 5, 7] and sorted(set(cols.tolist())) == [5, 7, 9]  # every 2nd cell


def test_grid_draws_every_mixer_for_each_query(gradient, tmp_path):
    out = tmp_path / "grid.png"
    argv = ["viz", "nat_mini", "--image", str(gradient), "--grid", "--out", str(out), "--size-px", "640x480"]
    cli.main([*argv, "--query", "5,5;60,60", "--query", "32,10", *_kwargs(TINY_NAT)])
    _png(out, (640, 480))
    cli.main([*argv, "--force", "--layers", "stages.1.*,stages.3.*", *_kwargs(TINY_NAT)])  # default: 3x3 lattice
    _png(out, (640, 480))
    assert drawing.default_queries((64, 96), grid=True)[4] == (32, 48)


def test_selection_last_block_per_stage_or_spaced_blocks_of_a_vit():
    nat = [f"stages.{s}.blocks.{b}.mixer" for s in range(2) for b in range(3)]
    assert drawing.select_mixers(nat) == ["stages.0.blocks.2.mixer", "stages.1.blocks.2.mixer"]
    vit = [f"blocks.{b}.attn.mixer" for b in range(12)]
    assert drawing.select_mixers(vit) == [f"blocks.{b}.attn.mixer" for b in (0, 4, 7, 11)]
    davit = [f"stages.{s}.blocks.{b}.{k}.attn.mixer" for s in range(2) for b in range(2) for k in range(2)]
    assert drawing.select_mixers(davit) == davit[2:4] + davit[6:]  # both attentions of each stage's last block
    assert drawing.select_mixers(nat, "all") == nat
    assert drawing.block_of("layers.2.blocks.4.modulation.mixer") == ("layers.2.blocks", 4)


def test_a_fixed_size_vit_says_so_in_one_line(gradient, tmp_path):
    """A ViT (one stage: 4 spaced blocks drawn) with neighbourhood attention grafted, built for 64 px."""
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=64, depth=5, embed_dim=24, num_heads=2, class_token=False, global_pool="avg"
    )
    vit = graft(vit, "neighborhood", kernel_size=3)
    out = drawing.visualize(vit, gradient, tmp_path / "vit.png", size=64, size_px=(400, 900))
    _png(out, (400, 900))
    with pytest.raises(drawing.VizError, match=r"cannot run on a 96x96 input .*fixed-size") as error:
        drawing.visualize(vit, gradient, tmp_path / "vit96.png", size=96)
    assert "\n" not in str(error.value)


# --- weights: checkpoint, file, registered ----------------------------------------------------------------------


def test_checkpoint_names_the_model_and_must_agree_with_model(gradient, tmp_path, capsys):
    model = timm.create_model("nat_mini", num_classes=3, **TINY_NAT)
    checkpoint = tmp_path / "run.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hparams = {"model": "nat_mini", "model_kwargs": TINY_NAT, "num_classes": 3}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": state, "data_config": {"input_size": [3, 48, 48]}}, checkpoint
    )
    out = tmp_path / "ckpt.png"
    cli.main(["viz", "--checkpoint", str(checkpoint), "--image", str(gradient), "--query", "47,0", "--out", str(out)])
    _png(out, Image.open(out).size)
    loaded, name, config = drawing.load_model(checkpoint=checkpoint)
    assert name == "nat_mini" and config == {"input_size": (3, 48, 48)}  # the input size the run trained at
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    argv = ["viz", "dinat_mini", "--checkpoint", str(checkpoint), "--image", str(gradient), "--out", str(out)]
    assert "holds a nat_mini model, not dinat_mini" in _one_line_error(capsys, [*argv, "--force"])
    assert "no such file" in _one_line_error(capsys, [*argv[:3], str(tmp_path / "none.ckpt"), *argv[4:], "--force"])


def test_pretrained_file_loads_a_head_of_any_size(gradient, tmp_path):
    model = timm.create_model("nat_mini", num_classes=10, **TINY_NAT)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    loaded, _, _ = drawing.load_model("nat_mini", pretrained_file=tmp_path / "model.safetensors", model_kwargs=TINY_NAT)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    out = tmp_path / "file.png"
    cli.main(
        [
            "viz",
            "nat_mini",
            "--pretrained-file",
            str(tmp_path / "model.safetensors"),
            "--image",
            str(gradient),
            "--out",
            str(out),
            "--size",
            "64",
            *_kwargs(TINY_NAT),
        ]
    )
    _png(out, Image.open(out).size)


def test_an_exported_model_folder_is_drawn_through_local_dir(gradient, tmp_path, capsys):
    """`attnzoo export` writes timm's Hub layout; `local-dir:DIR` (or `hf-hub:ORG/NAME`) is timm's to resolve."""
    model = timm.create_model("nat_mini", num_classes=10, **TINY_NAT)
    timm.models.save_for_hf(model, str(tmp_path / "export"), model_args=TINY_NAT, safe_serialization=True)
    loaded, _, _ = drawing.load_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    out = tmp_path / "exported.png"
    argv = ["viz", "--image", str(gradient), "--size", "64", "--pretrained", "--out", str(out)]
    cli.main([argv[0], f"local-dir:{tmp_path / 'export'}", *argv[1:]])
    _png(out, Image.open(out).size)
    error = _one_line_error(
        capsys, [argv[0], f"local-dir:{tmp_path / 'missing'}", *argv[1:-1], str(tmp_path / "x.png")]
    )
    assert "config.json" in error


def test_pretrained_asks_timm_for_the_registered_weights(gradient, tmp_path, monkeypatch):
    """No network here: the flag's wiring only (timm.create_model gets pretrained=True)."""
    create, calls = timm.create_model, []

    def fake(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake)
    out = tmp_path / "pretrained.png"
    cli.main(
        [
            "viz",
            "nat_mini.in1k",
            "--pretrained",
            "--image",
            str(gradient),
            "--out",
            str(out),
            "--size",
            "64",
            *_kwargs(TINY_NAT),
        ]
    )
    assert calls == [("nat_mini.in1k", True)] and out.is_file()


# --- one-line errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--query", "300,10"], "--query 300,10 is outside the 64x64 input (Y in 0..63, X in 0..63)"),
        (["--query", "10,-1"], "--query 10,-1 is outside the 64x64 input"),
        (["--query", "10;20"], "argument --query: expected Y,X pixels such as 112,80"),
        (["--query", "1,2,3"], "argument --query: expected Y,X pixels"),
        (["--query", "a,b"], "argument --query: expected Y,X pixels"),
        (["--query", "1,2;3,4"], "2 queries given: several queries are drawn with --grid"),
        (["--layers", "stages.9.*"], "--layers 'stages.9.*' matches no mixer"),
        (["--size-px", "12x12"], "at least 32 pixels"),
        (["--model-kwargs", "depths"], "expected KEY=VALUE"),
        (["--ema"], "--ema picks a checkpoint's EMA weights: give --checkpoint CKPT"),
    ],
)
def test_bad_arguments_are_one_line_errors(gradient, tmp_path, capsys, extra, message):
    argv = ["viz", "nat_mini", "--image", str(gradient), "--out", str(tmp_path / "x.png"), "--size", "64"]
    if extra[0] != "--model-kwargs":
        extra = [*extra, *_kwargs(TINY_NAT)]
    assert message in _one_line_error(capsys, [*argv, *extra])
    assert not (tmp_path / "x.png").exists()


def test_unknown_model_and_bad_images_are_one_line_errors(gradient, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    err = _one_line_error(capsys, ["viz", "dinat_minni", "--image", str(gradient), "--out", out])
    assert "unknown model 'dinat_minni'; close matches: dinat_mini" in err
    text = tmp_path / "text.png"
    text.write_text("not a picture\n")
    err = _one_line_error(capsys, ["viz", "nat_mini", "--image", str(text), "--out", out])
    assert f"--image: '{text}' is not an image PIL can read (cannot identify image file" in err
    err = _one_line_error(capsys, ["viz", "nat_mini", "--image", str(tmp_path / "none.jpg"), "--out", out])
    assert f"--image: no such file '{tmp_path / 'none.jpg'}'" in err
    assert "name a MODEL, or give --checkpoint" in _one_line_error(
        capsys, ["viz", "--image", str(gradient), "--out", out]
    )
    err = _one_line_error(capsys, ["viz", "resnet18", "--image", str(gradient), "--out", out, "--size", "64"])
    assert "resnet18: ResNet holds no attnzoo mixer to record" in err


def test_out_is_never_overwritten_without_force(gradient, tmp_path, capsys):
    out = tmp_path / "sub" / "x.png"
    argv = ["viz", "nat_mini", "--image", str(gradient), "--out", str(out), "--size", "64", *_kwargs(TINY_NAT)]
    cli.main(argv)
    capsys.readouterr()  # the untrained-weights warning
    before = out.read_bytes()
    assert f"--out: {out} exists; pass --force to overwrite it" in _one_line_error(capsys, [*argv, "--query", "0,0"])
    assert out.read_bytes() == before
    cli.main([*argv, "--query", "0,0", "--force"])
    capsys.readouterr()
    assert out.read_bytes() != before
    assert "is a folder" in _one_line_error(capsys, [*argv[:5], str(tmp_path), *argv[6:]])
    figure = drawing.draw([[drawing.Panel("m", "t", torch.ones(2, 2), "matrix", (0, 0))]], np.zeros((8, 8, 3)), "t")
    with pytest.raises(drawing.VizError, match="exists"):
        drawing.write_png(figure, out)


def test_without_matplotlib_the_error_names_the_extra(gradient, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    err = _one_line_error(capsys, ["viz", "nat_mini", "--image", str(gradient), "--out", str(tmp_path / "x.png")])
    assert f"needs matplotlib (the [viz] extra): {install_hint('viz')}" in err


# --- every mixer: these pass once its recording has landed ------------------------------------------------------


def test_timm_davit_is_grafted_and_its_windows_placed_on_the_map(gradient, tmp_path):
    kwargs = {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 64, 128], "num_heads": [1, 1, 2, 4]}
    out = tmp_path / "davit.png"
    cli.main(
        [
            "viz",
            "davit_tiny",
            "--image",
            str(gradient),
            "--out",
            str(out),
            "--size",
            "64",
            "--query",
            "60,50",
            "--size-px",
            "300x1200",
            *_kwargs(kwargs),
        ]
    )
    _png(out, (300, 1200))
    records, image_hw = _records(timm.create_model("davit_tiny", **kwargs), gradient)
    name = "stages.0.blocks.0.0.attn.mixer"  # 16x16 map padded to 21x21: 3x3 windows of 7x7
    (panel,) = drawing.query_panels(name, records[name], (60, 50), image_hw)
    rows, cols = panel.values.nonzero(as_tuple=True)  # the query's window: rows 14-20 (cropped), columns 7-13
    assert sorted(set(rows.tolist())) == [14, 15] and sorted(set(cols.tolist())) == list(range(7, 14))
    assert panel.marker == (60.0, 48.0, 64.0, 52.0)
    name = "stages.3.blocks.0.0.attn.mixer"  # a 2x2 map in one 7x7 window
    (panel,) = drawing.query_panels(name, records[name], (60, 50), image_hw)
    assert panel.values.count_nonzero() == 4 and panel.marker == (32.0, 32.0, 64.0, 64.0)
    name = "stages.3.blocks.0.1.attn.mixer"  # channel attention: a C x C matrix, not a map
    assert drawing.query_panels(name, records[name], (60, 50), image_hw)[0].over == "matrix"


def test_timm_focalnet_is_grafted_and_its_modulator_drawn(photo, tmp_path):
    model = timm.models.focalnet.FocalNet(depths=(1, 1, 1, 1), embed_dim=16)  # its entrypoints fix the depths
    out = drawing.visualize(model, photo, tmp_path / "focal.png", size=64, size_px=(800, 700))
    _png(out, (800, 700))
    records, _ = _records(model, photo)
    assert [r.kind for r in records.values()] == ["focal_modulation"] * 4


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("litv2_small", {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "alpha": 0.5}),
        ("quadtree_b0", {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4]}),
        (
            "agent_pvt_tiny",
            {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "img_size": 64},
        ),
        (
            "agent_deit_tiny",
            {"embed_dim": 24, "depth": 2, "num_heads": 2, "img_size": 64, "agent_layer": 2, "agent_num": 4},
        ),
        ("sparsifiner_deit_small", {"embed_dim": 24, "depth": 2, "num_heads": 2, "img_size": 64}),
    ],
)
def test_every_family_is_drawn(gradient, tmp_path, name, kwargs):
    out = tmp_path / f"{name}.png"
    argv = ["viz", name, "--image", str(gradient), "--size", "64", "--size-px", "600x600", *_kwargs(kwargs)]
    cli.main([*argv, "--out", str(out)])
    _png(out, (600, 600))
    out = tmp_path / f"{name}-grid.png"
    cli.main([*argv, "--out", str(out), "--grid", "--query", "8,8;40,56"])
    _png(out, (600, 600))


# --- readable figures: colour bars, labels, fonts, formats, the weights' source ----------------------------------

_MODULE_PATH = re.compile(r"\b[A-Za-z_]\w*\.\d+\b")  # stages.0, blocks.3, layers.2: a module path's pieces


def _texts(figure) -> list:
    """Every non-empty text of the figure (titles, row headings, colour-bar labels and ticks)."""
    from matplotlib.text import Text

    return [t for t in figure.findobj(Text) if t.get_text().strip()]


def _colorbars(figure) -> list:
    return [ax for ax in figure.get_axes() if ax.get_label() == "<colorbar>"]


def _row_headings(figure) -> list[str]:
    return [sub._suptitle.get_text() for sub in figure.subfigs]


@pytest.mark.parametrize("grid", [False, True])
def test_each_mixer_row_has_a_colour_bar_a_readable_label_and_8pt_text(gradient, grid):
    model = timm.create_model(
        "dinat_mini", **{**TINY_DINAT, "depths": [1, 2, 1, 1], "dilations": [[2], [1, 2], [1], [1]]}
    )
    queries = [(5, 5), (40, 20)] if grid else None
    figure = drawing.render(model, gradient, size=64, grid=grid, queries=queries, weights="checkpoint runs/x/best.ckpt")
    rows = 5 if grid else 4  # --grid: every block; else each stage's last block
    assert len(_colorbars(figure)) == rows
    assert [bar.get_ylabel() for bar in _colorbars(figure)] == ["attention weight (mean of heads)"] * rows
    headings = [heading.split(":")[0] for heading in _row_headings(figure)]
    expected = ["stage 1 · block 1 · neighbourhood (k=3, dilation 2)"]
    expected += ["stage 2 · block 1 · neighbourhood (k=3)"] if grid else []
    expected += ["stage 2 · block 2 · neighbourhood (k=3, dilation 2)", "stage 3 · block 1 · neighbourhood (k=3)"]
    assert headings == [*expected, "stage 4 · block 1 · neighbourhood (k=3)"]
    texts = _texts(figure)
    assert not [t.get_text() for t in texts if _MODULE_PATH.search(t.get_text()) or ".mixer" in t.get_text()]
    assert min(t.get_fontsize() for t in texts) >= 8
    assert "weights: checkpoint runs/x/best.ckpt" in figure._suptitle.get_text()


def test_a_row_shares_one_colour_scale_signed_for_focalnet_gates(photo):
    model = timm.models.focalnet.FocalNet(depths=(1, 1, 1, 1), embed_dim=16)
    figure = drawing.render(model, photo, size=64)
    bars = _colorbars(figure)
    assert len(bars) == 4 and {bar.get_ylabel() for bar in bars} == {"modulator norm, gate value"}
    assert _row_headings(figure)[0] == "stage 1 · block 1 · focal modulation (2 levels)"
    for sub, bar in zip(figure.subfigs, bars, strict=True):
        low, high = bar.get_ylim()
        assert low == pytest.approx(-high)  # the gates are signed: one diverging scale around 0 for the row
        images = [image for ax in sub.get_axes() if ax not in bars for image in ax.get_images()[1:]]
        assert images and all(image.get_clim() == (low, high) for image in images)
    grid = drawing.render(model, photo, size=64, grid=True, queries=[(5, 5), (30, 40)])
    assert _row_headings(grid)[0] == "stage 1 · block 1 · focal modulation (2 levels): modulator |h(z)| per pixel"


def test_mixer_labels_from_every_familys_module_names():
    assert drawing.mixer_place("stages.2.blocks.0.mixer") == "stage 3 · block 1"  # NAT, DiNAT, LITv2, Agent-PVT
    assert drawing.mixer_place("stages.1.blocks.0.attn.mixer") == "stage 2 · block 1"  # PVTv2 (QuadTree)
    assert drawing.mixer_place("layers.2.blocks.4.attn.mixer") == "stage 3 · block 5"  # timm Swin (Agent-Swin)
    assert drawing.mixer_place("layers.1.blocks.0.modulation.mixer") == "stage 2 · block 1"  # timm FocalNet
    assert drawing.mixer_place("stages.0.blocks.1.0.attn.mixer") == "stage 1 · block 2"  # timm DaViT
    assert drawing.mixer_place("blocks.5.attn.mixer") == "block 6"  # ViT/DeiT (Agent-DeiT, Sparsifiner)
    assert drawing.mixer_place("features.3.mixer") == "features 4"
    from attnzoo.blocks import create_mixer

    assert drawing.describe_mixer(create_mixer("neighborhood", dim=16, num_heads=2, kernel_size=7)) == (
        "neighbourhood (k=7)"
    )
    assert drawing.describe_mixer(create_mixer("hilo", dim=16, num_heads=2, alpha=0.5)) == "HiLo (window 2, alpha 0.5)"
    assert drawing.describe_mixer(create_mixer("dual", dim=16, num_heads=2, attention="channel")) == (
        "channel group attention"
    )


@pytest.mark.parametrize(("suffix", "magic"), [(".svg", b"<svg"), (".pdf", b"%PDF"), (".Svg", b"<svg")])
def test_out_suffix_picks_png_svg_or_pdf(gradient, tmp_path, suffix, magic):
    out = tmp_path / f"figure{suffix}"
    cli.main(["viz", "nat_mini", "--image", str(gradient), "--out", str(out), "--size", "64", *_kwargs(TINY_NAT)])
    data = out.read_bytes()
    assert magic in data[:1024] and (suffix != ".pdf" or data.startswith(b"%PDF"))
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["figure.jpg", "figure", "figure.png.txt"])
def test_another_out_suffix_is_a_one_line_error(gradient, tmp_path, capsys, name):
    out = tmp_path / name
    argv = ["viz", "nat_mini", "--image", str(gradient), "--out", str(out), "--size", "64", *_kwargs(TINY_NAT)]
    err = _one_line_error(capsys, argv)
    assert f"--out: {out} " in err and "give a .png, .svg or .pdf path" in err
    assert not out.exists()


def test_untrained_weights_are_a_warning_and_the_title_names_the_weights(gradient, tmp_path, capsys, monkeypatch):
    drawn = []
    write = drawing.write_figure

    def keep(figure, out, force=False):
        drawn.append(" ".join(figure._suptitle.get_text().split()))  # as one line: long paths wrap
        return write(figure, out, force)

    monkeypatch.setattr(drawing, "write_figure", keep)
    argv = ["viz", "--image", str(gradient), "--size", "64"]
    cli.main(["viz", "nat_mini", *argv[1:], "--out", str(tmp_path / "random.png"), *_kwargs(TINY_NAT)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnzoo viz: warning: nat_mini has random weights")
    assert "random initialisation (untrained" in drawn[-1]

    model = timm.create_model("nat_mini", num_classes=3, **TINY_NAT)
    checkpoint = tmp_path / "run.ckpt"
    hparams = {"model": "nat_mini", "model_kwargs": TINY_NAT, "num_classes": 3}
    torch.save(
        {"hyper_parameters": hparams, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        checkpoint,
    )
    cli.main([*argv, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "trained.png")])
    assert capsys.readouterr().err == ""
    assert f"weights: checkpoint {checkpoint}" in drawn[-1] and "random" not in drawn[-1]
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    cli.main(
        ["viz", "nat_mini", *argv[1:], "--pretrained-file", str(tmp_path / "model.safetensors"), *_kwargs(TINY_NAT)]
        + ["--out", str(tmp_path / "file.png")]
    )
    assert capsys.readouterr().err == "" and f"weights: weights file {tmp_path / 'model.safetensors'}" in drawn[-1]
