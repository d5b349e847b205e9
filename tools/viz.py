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
"""

from __future__ import annotations

import argparse
import fnmatch
import textwrap
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from attnzoo._names import unknown_model_message
from attnzoo.blocks.record import AttentionRecord, record_attention, recordable_modules

from . import png

__all__ = ["Panel", "VizError", "command", "load_model", "query_panels", "read_image", "select_mixers", "visualize"]

DPI = 100
PANEL_INCHES = 2.6
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


def _draw_panel(ax, panel: Panel, shown, rectangle, fontsize: float) -> None:
    import numpy as np

    ax.set_xticks([])
    ax.set_yticks([])
    if panel.over == "matrix":
        ax.imshow(panel.values.numpy(), cmap="viridis", interpolation="nearest")
        return
    image_h, image_w = shown.shape[:2]
    ax.imshow(shown, extent=(0, image_w, image_h, 0))
    values = panel.values.numpy()
    masked = np.ma.masked_where(~np.isfinite(values) | (values == 0), values)
    if masked.count():
        low, high = float(masked.min()), float(masked.max())
        bound = max(abs(low), abs(high)) or 1.0
        signed = low < 0  # FocalNet's gates: a diverging map; weights and magnitudes start at zero
        ax.imshow(
            masked,
            extent=(0, image_w, image_h, 0),
            cmap="coolwarm" if signed else "inferno",
            vmin=-bound if signed else 0.0,
            vmax=bound,
            alpha=0.7,
            interpolation="nearest",
        )
    if panel.marker is not None:
        top, left, bottom, right = panel.marker
        ax.add_patch(rectangle((left, top), right - left, bottom - top, fill=False, edgecolor="cyan", linewidth=1))
    y, x = panel.query
    for color, width in (("black", 3.0), ("white", 1.2)):  # a cross that shows on light and dark pixels
        ax.plot([x + 0.5], [y + 0.5], marker="+", markersize=fontsize * 1.6, markeredgewidth=width, color=color)
    ax.set_xlim(0, image_w)
    ax.set_ylim(image_h, 0)


def draw(
    rows: list[list[Panel]],
    shown,
    title: str,
    size_px: tuple[int, int] | None = None,
    grid: bool = False,
):
    """A figure with one row per mixer: its maps (or, ``grid``, one query per column); exactly ``size_px`` if given."""
    figure_cls, rectangle = _pyplot_free()
    columns = max(len(row) for row in rows)
    aspect = shown.shape[0] / shown.shape[1]
    if size_px is None:
        figsize = (columns * PANEL_INCHES, len(rows) * (PANEL_INCHES * aspect + 0.45) + 0.35)
    else:
        figsize = (size_px[0] / DPI, size_px[1] / DPI)
    figure = figure_cls(figsize=figsize, dpi=DPI, layout="constrained")
    figure.suptitle(textwrap.fill(title, max(16, int(figsize[0] * 72 / (9 * 0.6)))), fontsize=9)
    fontsize = 6.5 if size_px is None else max(4.0, min(6.5, figsize[0] * 72 / columns / 30))
    chars = max(12, int(figsize[0] * 72 / columns / (fontsize * 0.55)))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(columns):
            ax = axes[i][j]
            if j >= len(row):
                ax.set_axis_off()
                continue
            panel = row[j]
            _draw_panel(ax, panel, shown, rectangle, fontsize)
            if grid:
                if i == 0:
                    ax.set_title(f"query {panel.query[0]},{panel.query[1]}", fontsize=fontsize + 1)
                if j == 0:
                    label = textwrap.fill(f"{panel.module} — {panel.title}", max(12, chars // 2))
                    ax.set_ylabel(label, fontsize=fontsize)
            else:
                ax.set_title(textwrap.fill(f"{panel.module} — {panel.title}", chars), fontsize=fontsize)
    return figure


def check_out(out: str | Path, force: bool) -> Path:
    """``--out`` as a path the PNG may be written to (checked before the model is built)."""
    return png.check_out(out, force, VizError, "attention.png")


def write_png(figure, out: str | Path, force: bool = False) -> Path:
    """The figure into ``out``, whole or not at all, never over an existing file without ``force``."""
    return png.write_png(figure, out, force, DPI, VizError, "attention.png")


# --- the whole picture -----------------------------------------------------------------------------------------


def default_queries(image_hw: tuple[int, int], grid: bool) -> list[tuple[int, int]]:
    """The image's centre; for ``grid``, the centres of a 3x3 lattice of cells."""
    height, width = image_hw
    if not grid:
        return [(height // 2, width // 2)]
    return [(height * (2 * i + 1) // 6, width * (2 * j + 1) // 6) for i in range(3) for j in range(3)]


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
) -> Path:
    """Draw what ``model``'s mixers did for ``queries`` (``(Y, X)`` pixels of the model's input) on ``image``
    (a path or a PIL image) into ``out``.

    Without ``grid``: one row per mixer (``layers``: default each stage's last block), one column per map of
    the first query. With ``grid``: one row per mixer (default all), one column per query, each mixer's main map.
    """
    out = check_out(out, force)
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
        if grid:
            rows.append([query_panels(module, records[module], q, image_hw)[0] for q in queries])
        else:
            rows.append(query_panels(module, records[module], queries[0], image_hw))
    where = f"{len(queries)} queries" if grid else f"query {queries[0][0]},{queries[0][1]}"
    figure = draw(rows, shown, f"{name}: {image_hw[0]}x{image_hw[1]} input, {where}", size_px, grid)
    return write_png(figure, out, force)


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
    size = args.size
    if size is None and isinstance(kwargs.get("img_size"), int):  # a ViT built for another size: feed it that size
        size = kwargs["img_size"]
    queries = [q for group in args.query or [] for q in group]
    return visualize(
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
    )
