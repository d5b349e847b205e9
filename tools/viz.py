"""``attnzoo viz``: what each stage's mixer did for one query pixel, drawn over the image the model saw.

One forward under :func:`~attnzoo.blocks.record.record_attention`; every record is read only through its
interface (``map_size``, ``query_maps``), so each mixer is drawn as soon as it records::

    attnzoo viz dinat_mini --pretrained --image cat.jpg --query 112,80 --out cat.png
    attnzoo viz --checkpoint run.ckpt --image cat.jpg --grid --out grid.png

Each map is stretched (nearest neighbour) over the image, zeros transparent, so a neighbourhood is a square, a
dilated one a dotted grid, a pooled map a coarse mosaic; a record's map covers the mixer's whole input map (the
window-attention hosts that graft puts our mixers in restate their records so), hence the image. Figures are
drawn on a plain :class:`matplotlib.figure.Figure` (Agg, no pyplot), so no display is needed and a notebook's
backend is left alone.

Each row is one mixer, labelled by its place and kind ("stage 2 · block 3 · neighbourhood (k=7, dilation 2)"),
with one colour scale for its maps and a colour bar that shows it; the title says which weights drew the picture
(a checkpoint, released weights, a file, or random initialisation, which also prints a warning). ``--out``'s
suffix picks the format: PNG, SVG or PDF.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from attnzoo._names import unknown_model_message
from attnzoo.blocks.record import AttentionRecord, record_attention, recordable_modules

from . import png

__all__ = [
    "FORMATS",
    "Panel",
    "VizError",
    "command",
    "describe_mixer",
    "load_model",
    "mixer_label",
    "mixer_place",
    "query_panels",
    "read_image",
    "render",
    "select_mixers",
    "visualize",
    "weights_source",
]

DPI = 100
PANEL_INCHES = 2.6
FONT_PT = 8.0  # every label, title and tick of the figure; the title is larger
FORMATS = png.FORMATS  # --out's suffix picks one
UNTRAINED = "random initialisation (untrained: the maps show no learned attention)"
SPACED_BLOCKS = 4  # a single-stage model (ViT) shows this many evenly spaced blocks by default
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class VizError(ValueError):
    """Why the picture cannot be drawn, in one line (the CLI prints it as a parser error, exit status 2)."""


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- the model and the image ------------------------------------------------------------------------------------


def _create(name: str, kwargs: dict, **options) -> nn.Module:
    try:
        return timm.create_model(name, **options, **kwargs)
    except (TypeError, ValueError, RuntimeError, OSError) as error:  # bad kwargs, weights that do not fit, no file
        raise VizError(f"{name}: {_one_line(error)}") from None


def _file_classes(name: str, path: Path) -> int | None:
    """The head size of a weights file, so that timm loads it whole (an exported 10-class model); ``None``: unknown.

    Only a peek: any problem with the file is timm's to report when it loads it.
    """
    try:
        classifier = timm.models.get_pretrained_cfg(name).classifier
        classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
        weight = timm.models.load_state_dict(str(path)).get(f"{classifier}.weight")
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def load_model(
    name: str | None = None,
    *,
    checkpoint: str | Path | None = None,
    ema: bool = False,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    model_kwargs: dict | None = None,
) -> tuple[nn.Module, str, dict]:
    """``(model in eval mode, its name, data-config entries)`` from a timm name or an attnzoo-train checkpoint.

    The data-config entries are the checkpoint's preprocessing (what the weights were trained with); ``{}``
    otherwise. ``name`` may be omitted with ``checkpoint`` and must then match it.
    """
    kwargs = dict(model_kwargs or {})
    if checkpoint is not None:
        from attnzoo.train.checkpoint import read_checkpoint

        try:
            contents = read_checkpoint(checkpoint, ema=ema)
        except (FileNotFoundError, ValueError) as error:
            raise VizError(_one_line(error)) from None
        if name is not None and name.partition(".")[0] != contents.model:
            raise VizError(
                f"{checkpoint} holds a {contents.model} model, not {name}: name {contents.model} or no MODEL"
            )
        model = _create(contents.model, {**contents.model_kwargs, **kwargs}, num_classes=contents.num_classes)
        try:
            model.load_state_dict(contents.state_dict, strict=True)
        except RuntimeError as error:
            raise VizError(f"{checkpoint}: {_one_line(error)}") from None
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in contents.data_config.items() if k in _DATA_KEYS}
        return model.eval(), contents.model, config
    if name is None:
        raise VizError("name a MODEL, or give --checkpoint CKPT")
    # timm's sources by prefix (an exported model: `local-dir:DIR`, or `hf-hub:ORG/NAME`) are timm's to resolve
    message = None if name.startswith(("hf-hub:", "local-dir:")) else unknown_model_message(name.partition(".")[0])
    if message is not None:
        raise VizError(message)
    if pretrained_file is None:
        return _create(name, kwargs, pretrained=pretrained).eval(), name, {}
    path = Path(pretrained_file)
    if not path.is_file():
        raise VizError(f"--pretrained-file: no such file {str(path)!r}")
    overlay = dict(file=str(path))
    classes = kwargs.get("num_classes", _file_classes(name, path))
    if classes is not None:
        kwargs["num_classes"] = overlay["num_classes"] = classes
    return _create(name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay).eval(), name, {}


def data_config(model: nn.Module, size: int | None = None, overrides: dict | None = None) -> dict:
    """timm's eval preprocessing of ``model`` (then ``overrides``), at ``size x size`` when given."""
    config = timm.data.resolve_model_data_config(model)
    config.update(overrides or {})
    if size is not None:
        config["input_size"] = (config["input_size"][0], size, size)
    return config


def read_image(path: str | Path):
    """The file as an RGB PIL image (read before the model is built: a bad file fails at once)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise VizError(f"--image: no such file {str(path)!r}")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise VizError(f"--image: {str(path)!r} is not an image PIL can read ({_one_line(error)})") from None


def load_image(image, config: dict):
    """``(input (1, 3, H, W), shown (H, W, 3) in [0, 1])`` of a path or PIL image: the model's input and the same
    pixels un-normalised."""
    image = image if hasattr(image, "convert") else read_image(image)
    x = timm.data.create_transform(**config, is_training=False)(image.convert("RGB"))
    mean = torch.tensor(config["mean"], dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(config["std"], dtype=x.dtype).view(-1, 1, 1)
    shown = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return x.unsqueeze(0), shown


def with_recordable_mixers(model: nn.Module) -> nn.Module:
    """timm's own DaViT and FocalNet hold timm's modules: graft ours (same weights, carried over) to record them."""
    if recordable_modules(model):
        return model
    from timm.models import davit, focalnet

    from attnzoo import graft

    if isinstance(model, davit.DaVit):
        return graft(model, "dual")
    if isinstance(model, focalnet.FocalNet):
        return graft(model, "focal")
    return model


def run_recorded(model: nn.Module, x: torch.Tensor, name: str) -> dict[str, AttentionRecord]:
    """One eval forward under ``record_attention``: each mixer's last record, in call order."""
    try:
        with torch.no_grad(), record_attention(model) as records:
            try:
                model(x)
            except (RuntimeError, AssertionError, ValueError) as error:
                height, width = x.shape[-2:]
                raise VizError(
                    f"{name} cannot run on a {height}x{width} input ({_one_line(error)}); fixed-size models "
                    "(agent_deit_*, sparsifiner_*) take only the size they were built for: see --size and img_size"
                ) from None
    except VizError:
        raise
    except ValueError as error:  # record_attention: no attnzoo mixer in the model
        raise VizError(f"{name}: {_one_line(error)}") from None
    if not records:
        raise VizError(f"{name}: no attnzoo mixer ran in its forward, so there is nothing to draw")
    return records.last()


# --- which mixers, and where their maps lie on the image ---------------------------------------------------------


def block_of(name: str) -> tuple[str, int]:
    """``(stage, block index)`` of a mixer's module name: the index is the last number that follows a word.

    ``stages.2.blocks.1.mixer`` -> ``("stages.2.blocks", 1)``; ``blocks.5.attn.mixer`` -> ``("blocks", 5)``;
    DaViT's ``stages.0.blocks.1.0.attn.mixer`` -> ``("stages.0.blocks", 1)`` (both attentions of block 1).
    """
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit() and (i == 0 or not parts[i - 1].isdigit()):
            return ".".join(parts[:i]), int(parts[i])
    return name, 0


def select_mixers(names: list[str], layers: str | None = "last") -> list[str]:
    """The mixers to draw, in call order: ``"all"``; ``"last"`` (each stage's last block, or ``SPACED_BLOCKS``
    evenly spaced blocks of a single-stage model such as a ViT); or comma-separated globs over module names."""
    if layers == "all":
        return list(names)
    if layers in (None, "last"):
        stages: dict[str, list[int]] = {}
        for name in names:
            stage, block = block_of(name)
            stages.setdefault(stage, []).append(block)
        keep = {}
        for stage, blocks in stages.items():
            blocks = sorted(set(blocks))
            if len(stages) > 1:
                keep[stage] = {blocks[-1]}
            else:  # one stage (a ViT): a few evenly spaced blocks, the first and the last among them
                count = min(SPACED_BLOCKS, len(blocks))
                keep[stage] = {blocks[round(i * (len(blocks) - 1) / max(count - 1, 1))] for i in range(count)}
        return [name for name in names if block_of(name)[1] in keep[block_of(name)[0]]]
    patterns = [p.strip() for p in layers.split(",") if p.strip()]
    chosen = [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise VizError(f"--layers {layers!r} matches no mixer; this model's are named like {shown}")
    return chosen


_STAGE_WORDS = {"stages", "stage", "layers", "layer", "levels"}
_BLOCK_WORDS = {"blocks", "block"}


def mixer_place(name: str) -> str:
    """Where a mixer sits, in words, from its module name (numbers from 1): NAT/DiNAT, LITv2, PVTv2-style
    ``stages.i.blocks.j...`` and timm Swin/FocalNet ``layers.i.blocks.j...`` -> "stage i+1 · block j+1"; ViT/DeiT
    ``blocks.j...`` -> "block j+1"; other names -> their last word before a number and that number + 1."""
    parts = name.split(".")
    stage = block = None
    for word, following in zip(parts[:-1], parts[1:], strict=True):
        if following.isdigit():
            if word in _STAGE_WORDS and stage is None:
                stage = int(following)
            elif word in _BLOCK_WORDS and block is None:
                block = int(following)
    if stage is None and block is None:
        prefix, index = block_of(name)
        words = [part for part in prefix.split(".") if part and not part.isdigit()]
        return f"{words[-1] if words else 'mixer'} {index + 1}"
    return " · ".join(
        f"{word} {index + 1}" for word, index in (("stage", stage), ("block", block)) if index is not None
    )


def describe_mixer(module: nn.Module | None) -> str:
    """The mixer's kind and its defining arguments, e.g. "neighbourhood (k=7, dilation 2)"."""
    kind = type(module).__name__
    get = lambda attribute, default=None: getattr(module, attribute, default)  # noqa: E731
    if kind == "NeighborhoodAttention2D":
        dilation = get("dilation", 1) or 1
        return f"neighbourhood (k={get('kernel_size')}" + (f", dilation {dilation})" if dilation > 1 else ")")
    if kind == "HiLo":
        return f"HiLo (window {get('ws')}, alpha {get('alpha')})"
    if kind == "QuadTreeAttention":
        return f"QuadTree-{get('attn_type')} (top-{get('topk')})"
    if kind == "SpatialWindowAttention":
        return f"spatial window attention ({get('window_size')}x{get('window_size')})"
    if kind == "ChannelGroupAttention":
        return "channel group attention"
    if kind == "AgentAttention":
        return f"agent attention ({get('agent_num')} agents)"
    if kind == "FocalModulation":
        return f"focal modulation ({get('focal_level')} levels)"
    if kind == "SparsifinerAttention":
        return f"Sparsifiner (keeps {get('keep_ratio')} of the keys)"
    return "mixer" if module is None else kind


def mixer_label(name: str, module: nn.Module | None = None) -> str:
    """A row's label: "stage 2 · block 3 · neighbourhood (k=7, dilation 2)" (no module path)."""
    return f"{mixer_place(name)} · {describe_mixer(module)}" if module is not None else mixer_place(name)


def colorbar_label(module: nn.Module | None) -> str:
    """What a row's colour scale measures."""
    if type(module).__name__ == "FocalModulation":
        return "modulator norm, gate value"
    return "attention weight (mean of heads)"


@dataclass
class Panel:
    """One map of one mixer for one query. ``values`` cover the whole input image (``over == "image"``) or are a
    matrix; ``marker`` ``(top, left, bottom, right)``: the image pixels of the query's cell, when the map names one.
    """

    module: str
    title: str
    values: torch.Tensor
    over: str
    query: tuple[int, int]
    marker: tuple[float, float, float, float] | None = None
    label: str = ""  # the row's label (:func:`mixer_label`); empty: made from ``module``
    quantity: str = "attention weight (mean of heads)"  # the colour bar's label


def query_panels(name: str, record: AttentionRecord, query: tuple[int, int], image_hw: tuple[int, int]) -> list[Panel]:
    """Every map of ``record`` for the image pixel ``query`` ``(Y, X)``: the record's map covers the image, so
    the query's cell is ``(floor(Y * H / image_h), floor(X * W / image_w))``."""
    (height, width), (image_h, image_w), (y, x) = record.map_size, image_hw, query
    panels = []
    for qmap in record.query_maps(y * height // image_h, x * width // image_w):
        values = qmap.values.detach().float().cpu()
        marker = None
        if qmap.over == "image" and qmap.marker is not None:
            step_h, step_w = image_h / values.shape[0], image_w / values.shape[1]
            r, c = qmap.marker
            marker = (r * step_h, c * step_w, (r + 1) * step_h, (c + 1) * step_w)
        panels.append(Panel(name, qmap.title, values, qmap.over, query, marker))
    return panels


# --- the figure ------------------------------------------------------------------------------------------------


def _pyplot_free():
    """matplotlib's Figure and Rectangle (no pyplot: no backend, no display); a one-line error without it."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        from attnzoo_cli import install_hint

        raise VizError(f"needs matplotlib (the [viz] extra): {install_hint('viz')}") from None
    return Figure, Rectangle


def _row_scale(row: list[Panel]) -> tuple[str, float, float]:
    """``(colour map, low, high)`` shared by a row's maps: weights and magnitudes from 0 to their maximum, a signed
    row (FocalNet's gates) symmetric around 0 on a diverging map. Zeros of image maps are cells not used: not
    counted (they stay transparent)."""
    import numpy as np

    shown = []
    for panel in row:
        values = panel.values.numpy()
        used = np.isfinite(values) & ((values != 0) if panel.over == "image" else True)
        shown.append(values[used].ravel())
    values = np.concatenate(shown) if shown else np.zeros(0)
    if values.size == 0:
        return "inferno", 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if low < 0:
        bound = max(-low, high) or 1.0
        return "coolwarm", -bound, bound
    return "inferno", 0.0, high or 1.0


def _draw_panel(ax, panel: Panel, shown, rectangle, scale: tuple[str, float, float]) -> None:
    import numpy as np

    cmap, low, high = scale
    ax.set_xticks([])
    ax.set_yticks([])
    if panel.over == "matrix":
        ax.imshow(panel.values.numpy(), cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        return
    image_h, image_w = shown.shape[:2]
    ax.imshow(shown, extent=(0, image_w, image_h, 0))
    values = panel.values.numpy()
    masked = np.ma.masked_where(~np.isfinite(values) | (values == 0), values)
    if masked.count():
        ax.imshow(
            masked,
            extent=(0, image_w, image_h, 0),
            cmap=cmap,
            vmin=low,
            vmax=high,
            alpha=0.7,
            interpolation="nearest",
        )
    if panel.marker is not None:
        top, left, bottom, right = panel.marker
        ax.add_patch(rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="cyan", linewidth=1))
    y, x = panel.query
    for color, width in (("black", 3.0), ("white", 1.2)):  # a cross that shows on light and dark pixels
        ax.plot([x + 0.5], [y + 0.5], marker="+", markersize=FONT_PT * 1.6, markeredgewidth=width, color=color)
    ax.set_xlim(0, image_w)
    ax.set_ylim(image_h, 0)


def _wrap(text: str, points: float, fontsize: float) -> str:
    """``text`` wrapped to lines of about ``points`` typographic points at ``fontsize``."""
    width = max(12, int(points / (fontsize * 0.55)))
    return textwrap.fill(text, width, break_on_hyphens=False, break_long_words=False)  # paths stay whole


def draw(
    rows: list[list[Panel]],
    shown,
    title: str,
    size_px: tuple[int, int] | None = None,
    grid: bool = False,
    subtitle: str | None = None,
):
    """A figure with one row per mixer: its maps (or, ``grid``, one query per column) on one colour scale, the
    row's label above and its colour bar on the right; exactly ``size_px`` if given. ``subtitle`` (e.g. the
    weights' source) is the title's second line. Text is at least ``FONT_PT`` (8 pt)."""
    figure_cls, rectangle = _pyplot_free()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    columns = max(len(row) for row in rows)
    aspect = shown.shape[0] / shown.shape[1]
    if size_px is None:  # room for each row's heading, the maps' titles and the colour bars; two title lines
        figsize = (columns * PANEL_INCHES + 1.1, len(rows) * (PANEL_INCHES * aspect + 0.75) + 0.7)
    else:
        figsize = (size_px[0] / DPI, size_px[1] / DPI)
    figure = figure_cls(figsize=figsize, dpi=DPI, layout="constrained")
    width_pt = figsize[0] * 72
    heading = _wrap(title, width_pt, FONT_PT + 1)
    if subtitle:
        heading += "\n" + _wrap(subtitle, width_pt, FONT_PT + 1)
    figure.suptitle(heading, fontsize=FONT_PT + 1)
    column_pt = max(36.0, (width_pt - 70) / columns)
    for i, (row, sub) in enumerate(zip(rows, figure.subfigures(len(rows), 1, squeeze=False)[:, 0], strict=True)):
        scale = _row_scale(row)
        label = row[0].label or mixer_label(row[0].module)
        sub.suptitle(_wrap(label, width_pt - 40, FONT_PT), fontsize=FONT_PT, fontweight="bold")
        axes = sub.subplots(1, columns, squeeze=False)[0]
        for j, ax in enumerate(axes):
            if j >= len(row):
                ax.set_axis_off()
                continue
            panel = row[j]
            _draw_panel(ax, panel, shown, rectangle, scale)
            if not grid:
                ax.set_title(_wrap(panel.title, column_pt, FONT_PT), fontsize=FONT_PT)
            elif i == 0:
                ax.set_title(f"query {panel.query[0]},{panel.query[1]}", fontsize=FONT_PT)
        cmap, low, high = scale
        bar = sub.colorbar(ScalarMappable(Normalize(low, high), cmap), ax=list(axes[: len(row)]), aspect=15)
        bar.set_label(row[0].quantity, fontsize=FONT_PT)
        bar.ax.tick_params(labelsize=FONT_PT)
    return figure


def check_out(out: str | Path, force: bool) -> Path:
    """``--out`` as a path the figure may be written to: .png, .svg or .pdf, not an existing file unless ``force``
    (checked before the model is built)."""
    return png.check_out(out, force, VizError, "attention.png", formats=FORMATS)


def write_figure(figure, out: str | Path, force: bool = False) -> Path:
    """The figure into ``out`` in the format of its suffix, whole or not at all, never over an existing file
    without ``force``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a --size-px too small for the layout: drawn as it fits
        return png.write_figure(figure, out, force, DPI, VizError, "attention.png", FORMATS)


write_png = write_figure  # the name before SVG and PDF


# --- the whole picture -----------------------------------------------------------------------------------------


def default_queries(image_hw: tuple[int, int], grid: bool) -> list[tuple[int, int]]:
    """The image's centre; for ``grid``, the centres of a 3x3 lattice of cells."""
    height, width = image_hw
    if not grid:
        return [(height // 2, width // 2)]
    return [(height * (2 * i + 1) // 6, width * (2 * j + 1) // 6) for i in range(3) for j in range(3)]


def render(
    model: nn.Module,
    image,
    *,
    queries: list[tuple[int, int]] | None = None,
    grid: bool = False,
    layers: str | None = None,
    size: int | None = None,
    size_px: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    model_name: str | None = None,
    data_overrides: dict | None = None,
    weights: str | None = None,
):
    """The figure :func:`visualize` writes (a :class:`matplotlib.figure.Figure`), not written anywhere."""
    name = model_name or getattr(model, "default_cfg", {}).get("architecture") or type(model).__name__
    model = with_recordable_mixers(model).eval()
    config = data_config(model, size, data_overrides)
    x, shown = load_image(image, config)
    image_hw = tuple(shown.shape[:2])
    queries = list(queries) if queries else default_queries(image_hw, grid)
    if not grid and len(queries) > 1:
        raise VizError(f"{len(queries)} queries given: several queries are drawn with --grid")
    for y, x_ in queries:
        if not (0 <= y < image_hw[0] and 0 <= x_ < image_hw[1]):
            raise VizError(
                f"--query {y},{x_} is outside the {image_hw[0]}x{image_hw[1]} input "
                f"(Y in 0..{image_hw[0] - 1}, X in 0..{image_hw[1] - 1})"
            )
    if device is not None:
        model, x = model.to(device), x.to(device)
    records = run_recorded(model, x, name)
    chosen = select_mixers(list(records), layers or ("all" if grid else "last"))
    rows = []
    for module in chosen:
        first = query_panels(module, records[module], queries[0], image_hw)
        row = first
        if grid:
            row = [first[0], *(query_panels(module, records[module], q, image_hw)[0] for q in queries[1:])]
        try:
            mixer = model.get_submodule(module)
        except AttributeError:
            mixer = None
        label = mixer_label(module, mixer)
        if grid and len(first) > 1:  # --grid draws a mixer's first map: say which, when it has several
            label += f": {first[0].title}"
        for panel in row:
            panel.label, panel.quantity = label, colorbar_label(mixer)
        rows.append(row)
    where = f"{len(queries)} queries" if grid else f"query {queries[0][0]},{queries[0][1]}"
    subtitle = f"weights: {weights}" if weights else None
    return draw(rows, shown, f"{name}: {image_hw[0]}x{image_hw[1]} input, {where}", size_px, grid, subtitle)


def visualize(
    model: nn.Module,
    image,
    out: str | Path,
    *,
    queries: list[tuple[int, int]] | None = None,
    grid: bool = False,
    layers: str | None = None,
    size: int | None = None,
    size_px: tuple[int, int] | None = None,
    force: bool = False,
    device: torch.device | str | None = None,
    model_name: str | None = None,
    data_overrides: dict | None = None,
    weights: str | None = None,
) -> Path:
    """Draw what ``model``'s mixers did for ``queries`` (``(Y, X)`` pixels of the model's input) on ``image``
    (a path or a PIL image) into ``out`` (.png, .svg or .pdf, by its suffix).

    Without ``grid``: one row per mixer (``layers``: default each stage's last block), one column per map of
    the first query. With ``grid``: one row per mixer (default all), one column per query, each mixer's main map.
    ``weights`` says where the weights came from (:func:`weights_source`); the title shows it.
    """
    out = check_out(out, force)
    figure = render(
        model,
        image,
        queries=queries,
        grid=grid,
        layers=layers,
        size=size,
        size_px=size_px,
        device=device,
        model_name=model_name,
        data_overrides=data_overrides,
        weights=weights,
    )
    return write_figure(figure, out, force)


def weights_source(args: argparse.Namespace, model: nn.Module | None = None) -> str:
    """Where ``attnzoo viz``'s weights came from, for the figure: "checkpoint PATH", "pretrained: NAME.TAG",
    "weights file PATH" or :data:`UNTRAINED` (no --checkpoint, --pretrained or --pretrained-file)."""
    if args.checkpoint is not None:
        return f"checkpoint {args.checkpoint}" + (" (EMA weights)" if args.ema else "")
    if args.pretrained_file is not None:
        return f"weights file {args.pretrained_file}"
    if args.pretrained:
        name = str(args.model)
        tag = getattr(model, "pretrained_cfg", {}).get("tag") if model is not None else None
        if tag and "." not in name and ":" not in name:
            name = f"{name}.{tag}"
        return f"pretrained: {name}"
    return UNTRAINED


def command(args: argparse.Namespace, device: torch.device | None = None) -> Path:
    """``attnzoo viz`` with parsed arguments (see ``attnzoo_cli``)."""
    check_out(args.out, args.force)
    _pyplot_free()  # before minutes of model building
    if args.ema and args.checkpoint is None:
        raise VizError("--ema picks a checkpoint's EMA weights: give --checkpoint CKPT")
    image = read_image(args.image)
    kwargs = dict(args.model_kwargs or [])
    model, name, overrides = load_model(
        args.model,
        checkpoint=args.checkpoint,
        ema=args.ema,
        pretrained=args.pretrained,
        pretrained_file=args.pretrained_file,
        model_kwargs=kwargs,
    )
    weights = weights_source(args, model)
    size = args.size
    if size is None and isinstance(kwargs.get("img_size"), int):  # a ViT built for another size: feed it that size
        size = kwargs["img_size"]
    queries = [q for group in args.query or [] for q in group]
    path = visualize(
        model,
        image,
        args.out,
        queries=queries,
        grid=args.grid,
        layers=args.layers,
        size=size,
        size_px=args.size_px,
        force=args.force,
        device=device,
        model_name=name,
        data_overrides=overrides,
        weights=weights,
    )
    if weights == UNTRAINED:  # after the picture, so that an error stays the only line on stderr
        print(
            f"attnzoo viz: warning: {name} has random weights (no --checkpoint, --pretrained or --pretrained-file): "
            "the picture shows no learned attention",
            file=sys.stderr,
        )
    return path
