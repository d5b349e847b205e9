"""The model card (``README.md``) of an exported model, in the Hub's format: usage (with ``import attnzoo``), intended
use and limitations, license, paper, size (parameters, GMACs), training data and hyper-parameters, run metrics and
framework versions.

Everything on the card is read from the training checkpoint and its run folder, never guessed: a fact that is
not recorded (a dataset's Hub id, the scores of a checkpoint written between validations) is left out or said to
be unknown. The front matter is written by ``huggingface_hub.ModelCardData``, so the Hub parses it as its own.

What comes from data (class names, dataset ids, run and folder names, file names, logged metric names) is escaped
on the way in: in the markdown body it is shown as a code span (:func:`markdown_code`) or as escaped text
(:func:`markdown_text`), so that a class folder named ``# x`` or ``<script>`` adds no heading, HTML or link, and
the front matter is dumped so that every string reads back as itself (:func:`front_matter_yaml`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
import yaml

__all__ = [
    "CODE_LICENSE",
    "PAPERS",
    "CardFacts",
    "Paper",
    "RunRecord",
    "WeightsLicense",
    "dataset_summary",
    "framework_versions",
    "front_matter_yaml",
    "hyperparameters",
    "markdown_code",
    "markdown_text",
    "paper_for",
    "read_run",
    "render_card",
    "starting_point",
    "validation_metrics",
    "weights_license",
]

CODE_LICENSE = "mit"  # attnzoo's own license (LICENSE, pyproject.toml)

# licence ids the Hub knows (https://huggingface.co/docs/hub/repositories-licenses) that model weights here carry
_HUB_LICENSES = {
    "mit",
    "apache-2.0",
    "bsd-2-clause",
    "bsd-3-clause",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-nd-4.0",
    "gpl-3.0",
    "unknown",
}


# --- data into markdown and YAML ------------------------------------------------------------------------------


def _visible(value: Any) -> str:
    """``value`` as one line: line breaks and other unprintable characters as their escapes (``\\n``, ``\\x1b``), so
    that data never starts a line of its own (a heading, a list, a fence) nor splits a table row."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(value))


# backslash-escaped: inline markup, link and image brackets, heading marks, table pipes, and the ':' and '@' from
# which GitHub-flavoured markdown makes links on its own (http://, e-mail); '<', '>', '&' become entities
_ESCAPES = {ch: "\\" + ch for ch in "\\`*_[](){}#!|~:@"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def markdown_text(value: Any) -> str:
    """``value`` as literal markdown text: it renders as the same characters and adds no markup, HTML or link."""
    text = "".join(_ESCAPES.get(ch, ch) for ch in _visible(value))
    return re.sub(r"(?i)\b(www)\.", r"\1\\.", text)  # nor a "www." autolink


def markdown_code(value: Any) -> str:
    """``value`` as an inline code span, which shows its content verbatim (markup, HTML and links stay text).

    The fence is one backtick longer than the longest run inside, and a space pads content that starts or ends with
    a backtick or with spaces on both sides (CommonMark strips one such space on each side)."""
    text = _visible(value)
    if not text.strip():
        return markdown_text(repr(text))  # an empty or blank span does not render as code
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" or (text[0] == " " and text[-1] == " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _url_or_code(url: str) -> str:
    """A registered URL as an autolink when it is one, else shown as code."""
    return f"<{url}>" if re.fullmatch(r"https?://[^\s<>`]+", url) else markdown_code(url)


class _FrontMatterDumper(yaml.SafeDumper):
    """Strings holding a line break or another unprintable character are written double-quoted, where YAML escapes
    them (``\\n``, ``\\L``): the front matter stays one value per line, and ``---`` in data never ends it."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None if value.isprintable() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_FrontMatterDumper.add_representer(str, _represent_str)


def front_matter_yaml(data: Mapping[str, Any]) -> str:
    """``data`` as the card's YAML front matter (keys in order, unicode as is); every string reads back as itself."""
    dumped = yaml.dump(dict(data), Dumper=_FrontMatterDumper, sort_keys=False, allow_unicode=True, width=1 << 30)
    return dumped.strip()  # the width: long values are never folded onto continuation lines


@dataclass(frozen=True)
class Paper:
    """A family's paper, for the card's citation."""

    key: str
    title: str
    authors: tuple[str, ...]
    venue: str  # the proceedings' name; "" for a preprint
    year: int
    arxiv: str

    def bibtex(self) -> str:
        if self.venue:
            kind, where = "inproceedings", f"  booktitle = {{{self.venue}}},\n"
        else:
            kind, where = "article", f"  journal = {{arXiv preprint arXiv:{self.arxiv}}},\n"
        return (
            f"@{kind}{{{self.key},\n"
            f"  title = {{{self.title}}},\n"
            f"  author = {{{' and '.join(self.authors)}}},\n"
            f"{where}"
            f"  year = {{{self.year}}},\n"
            f"  eprint = {{{self.arxiv}}},\n"
            f"  archivePrefix = {{arXiv}}\n"
            "}"
        )


def _paper(key, title, authors, venue, year, arxiv) -> tuple[str, Paper]:
    return arxiv, Paper(key, title, tuple(authors), venue, year, arxiv)


# by arXiv id: the families' pretrained configs carry ``paper_ids`` ("arXiv:<id>"); the zoo files cite the same
PAPERS: dict[str, Paper] = dict(
    [
        _paper(
            "hassani2023neighborhood",
            "Neighborhood Attention Transformer",
            ["Ali Hassani", "Steven Walton", "Jiachen Li", "Shen Li", "Humphrey Shi"],
            "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)",
            2023,
            "2204.07143",
        ),
        _paper(
            "hassani2022dilated",
            "Dilated Neighborhood Attention Transformer",
            ["Ali Hassani", "Humphrey Shi"],
            "",
            2022,
            "2209.15001",
        ),
        _paper(
            "pan2022hilo",
            "Fast Vision Transformers with HiLo Attention",
            ["Zizheng Pan", "Jianfei Cai", "Bohan Zhuang"],
            "Advances in Neural Information Processing Systems (NeurIPS)",
            2022,
            "2205.13213",
        ),
        _paper(
            "tang2022quadtree",
            "QuadTree Attention for Vision Transformers",
            ["Shitao Tang", "Jiahui Zhang", "Siyu Zhu", "Ping Tan"],
            "International Conference on Learning Representations (ICLR)",
            2022,
            "2201.02767",
        ),
        _paper(
            "han2024agent",
            "Agent Attention: On the Integration of Softmax and Linear Attention",
            [
                "Dongchen Han",
                "Tianzhu Ye",
                "Yizeng Han",
                "Zhuofan Xia",
                "Siyuan Pan",
                "Pengfei Wan",
                "Shiji Song",
                "Gao Huang",
            ],
            "European Conference on Computer Vision (ECCV)",
            2024,
            "2312.08874",
        ),
        _paper(
            "wei2023sparsifiner",
            "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
            ["Cong Wei", "Brendan Duke", "Ruowei Jiang", "Parham Aarabi", "Graham W. Taylor", "Florian Shkurti"],
            "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)",
            2023,
            "2303.13755",
        ),
        _paper(
            "ding2022davit",
            "DaViT: Dual Attention Vision Transformers",
            ["Mingyu Ding", "Bin Xiao", "Noel Codella", "Ping Luo", "Jingdong Wang", "Lu Yuan"],
            "European Conference on Computer Vision (ECCV)",
            2022,
            "2204.03645",
        ),
        _paper(
            "yang2022focal",
            "Focal Modulation Networks",
            ["Jianwei Yang", "Chunyuan Li", "Xiyang Dai", "Jianfeng Gao"],
            "Advances in Neural Information Processing Systems (NeurIPS)",
            2022,
            "2203.11926",
        ),
    ]
)
# timm's own DaViT and FocalNet configs (attnzoo's dual and focal mixers) name no paper
_PAPER_BY_ARCHITECTURE = {"davit_": "2204.03645", "focalnet_": "2203.11926"}


def paper_for(pretrained_cfg: Mapping[str, Any]) -> Paper | None:
    """The paper of the model's family, from the config's ``paper_ids`` (or the architecture for timm's DaViT and
    FocalNet); ``None`` when the family is not one of attnzoo's seven mechanisms."""
    ids = re.findall(r"(\d{4}\.\d{4,5})", str(pretrained_cfg.get("paper_ids") or ""))
    for arxiv in ids:
        if arxiv in PAPERS:
            return PAPERS[arxiv]
    architecture = str(pretrained_cfg.get("architecture") or "")
    for prefix, arxiv in _PAPER_BY_ARCHITECTURE.items():
        if architecture.startswith(prefix):
            return PAPERS[arxiv]
    return None


@dataclass(frozen=True)
class WeightsLicense:
    """The license the card declares for the weights (a Hub licence id) and the sentence that says why."""

    id: str
    reason: str


def _hub_license(text: str) -> str:
    text = text.strip().lower()
    if text in _HUB_LICENSES:
        return text
    return "unknown"  # e.g. "unknown (no license stated by the authors)": never promote it to a real licence


def weights_license(
    pretrained_cfg: Mapping[str, Any], pretrained: bool, pretrained_file: str | None = None
) -> WeightsLicense:
    """Which license the exported weights carry.

    Weights trained from random initialisation are the product of attnzoo's MIT code on the user's data: the card
    offers MIT, the code's license (the owner of the data may have to restrict it; the card says so). Weights
    fine-tuned from released weights are a derivative of them, so the released weights' license carries over: that
    is the ``license`` of the model's pretrained config, which timm and attnzoo attach to the weights (not to the
    code: LITv2's weights are Apache-2.0, Agent Attention's have no stated license, i.e. "unknown"). Weights
    started from a ``pretrained_file`` have an origin the checkpoint does not record: "unknown". timm's own card
    writer defaults to Apache-2.0 whatever the model; this never does.
    """
    if pretrained_file:
        return WeightsLicense(
            "unknown",
            f"fine-tuned from the weights in {markdown_code(Path(str(pretrained_file)).name)}, whose license the "
            "checkpoint does not record: check it before sharing",
        )
    if pretrained:
        stated = str(pretrained_cfg.get("license") or "not stated")
        name = pretrained_cfg.get("architecture") or "the model's"
        tag = pretrained_cfg.get("tag")
        source = f"{name}.{tag}" if tag else str(name)
        return WeightsLicense(
            _hub_license(stated),
            f"fine-tuned from the {markdown_code(source)} weights, whose license ({markdown_text(stated)}) carries "
            "over to derivatives",
        )
    return WeightsLicense(
        CODE_LICENSE,
        "trained from random initialisation with attnzoo (MIT); the training data's terms may restrict it further",
    )


def starting_point(model_name: str, pretrained_cfg: Mapping[str, Any], hparams: Mapping[str, Any]) -> str:
    """Where the training run started, in words (markdown; the names in it escaped)."""
    if hparams.get("pretrained_file"):
        return f"the weights in {markdown_code(Path(str(hparams['pretrained_file'])).name)}"
    if not hparams.get("pretrained"):
        return "random initialisation (trained from scratch)"
    if model_name.startswith("hf-hub:"):
        repo = model_name.split(":", 1)[1]
        return f"[{markdown_text(repo)}](https://huggingface.co/{quote(repo)})"
    if model_name.startswith("local-dir:"):
        return f"the exported model {markdown_code(Path(model_name.split(':', 1)[1]).name)}"
    where = pretrained_cfg.get("hf_hub_id") or pretrained_cfg.get("url") or pretrained_cfg.get("origin_url")
    tag = pretrained_cfg.get("tag")
    label = f"{pretrained_cfg.get('architecture', model_name)}.{tag}" if tag else model_name
    return f"the released {markdown_code(label)} weights" + (f" ({_url_or_code(str(where))})" if where else "")


@dataclass
class RunRecord:
    """What a Lightning checkpoint says about its run, beyond the model: hyperparameters, position, scores."""

    hparams: dict[str, Any] = field(default_factory=dict)
    data_hparams: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    global_step: int | None = None
    # ModelCheckpoint callbacks that name this very file as their best: {monitored metric: score}
    checkpoint_scores: dict[str, float] = field(default_factory=dict)
    # what the checkpoint says about the software that wrote it: {"lightning": "2.6.6", "timm": "1.0.31"}
    versions: dict[str, str] = field(default_factory=dict)
    precision: str | None = None  # only when the checkpoint shows it (fp16's gradient scaler state)
    scheduled_updates: int | None = None  # the schedule's length in optimizer updates (timm's ``t_initial``)


def read_run(checkpoint: str | Path) -> RunRecord:
    """The run facts of a checkpoint that :func:`~attnzoo.train.checkpoint.read_checkpoint` has accepted.

    Memory-mapped (``weights_only=True``): the tensors are not read again.
    """
    path = Path(checkpoint)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    scores = {}
    for state in (ckpt.get("callbacks") or {}).values():
        if not isinstance(state, dict) or not state.get("monitor") or state.get("best_model_score") is None:
            continue
        if Path(str(state.get("best_model_path") or "")).name == path.name:
            scores[str(state["monitor"])] = float(state["best_model_score"])
    versions = {
        package: str(ckpt[key])
        for package, key in (("lightning", "pytorch-lightning_version"), ("timm", "timm_version"))
        if ckpt.get(key)
    }
    # Lightning stores a precision plugin's state only when it has one: fp16 mixed precision's gradient scaler
    precision = "16-mixed (fp16 autocast, gradient scaler)" if ckpt.get("MixedPrecision") else None
    scheduled = None
    schedulers = ckpt.get("lr_schedulers") or []
    if schedulers and isinstance(schedulers[0], dict) and isinstance(schedulers[0].get("t_initial"), (int, float)):
        scheduled = int(schedulers[0]["t_initial"])
    return RunRecord(
        hparams=dict(ckpt.get("hyper_parameters") or {}),
        data_hparams=dict(ckpt.get("datamodule_hyper_parameters") or {}),
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        checkpoint_scores=scores,
        versions=versions,
        precision=precision,
        scheduled_updates=scheduled,
    )


def _plain(value: Any) -> str:
    """A hyper-parameter as a plain value: numbers as Python writes them, ``None`` as "none", lists with commas."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    return str(value)


def hyperparameters(run: RunRecord) -> list[tuple[str, str]]:
    """The training run's hyper-parameters as ``(name, plain value)`` rows, read from the checkpoint's
    ``hyper_parameters`` (the task's) and ``datamodule_hyper_parameters``; a setting the run did not record is left
    out. The values are plain text from data: :func:`render_card` escapes them."""
    h, d = run.hparams, run.data_hparams
    rows: list[tuple[str, Any]] = []

    def add(name: str, value: Any, when: bool = True) -> None:
        if when:
            rows.append((name, value))

    add("optimizer", h.get("opt"), "opt" in h)
    add("optimizer arguments", h.get("opt_kwargs"), bool(h.get("opt_kwargs")))
    add("learning rate (peak)", h.get("lr"), "lr" in h)
    add("weight decay", h.get("weight_decay"), "weight_decay" in h)
    add("layer-wise lr decay", h.get("layer_decay"), h.get("layer_decay") is not None)
    add("schedule", h.get("sched"), "sched" in h)
    add("schedule arguments", h.get("sched_kwargs"), bool(h.get("sched_kwargs")))
    add("warmup epochs", h.get("warmup_epochs"), "warmup_epochs" in h)
    add("warmup learning rate", h.get("warmup_lr"), bool(h.get("warmup_epochs")) and "warmup_lr" in h)
    add("minimum learning rate", h.get("min_lr"), "min_lr" in h)
    add("cooldown epochs", h.get("cooldown_epochs"), bool(h.get("cooldown_epochs")))
    add("scheduled updates", run.scheduled_updates, run.scheduled_updates is not None)
    add("epochs trained", run.epoch + 1 if run.epoch is not None else None, run.epoch is not None)
    add("optimizer updates", run.global_step, run.global_step is not None)
    add("batch size (per process)", d.get("batch_size"), "batch_size" in d)
    add("input size", d.get("input_size"), d.get("input_size") is not None)
    add("mixup alpha", h.get("mixup"), "mixup" in h)
    add("cutmix alpha", h.get("cutmix"), "cutmix" in h)
    mixing = bool(h.get("mixup")) or bool(h.get("cutmix"))
    add("mixup/cutmix probability", h.get("mixup_prob"), mixing and "mixup_prob" in h)
    add("label smoothing", h.get("label_smoothing"), "label_smoothing" in h)
    drop_path = h.get("drop_path_rate")
    if drop_path is None:
        drop_path = (h.get("model_kwargs") or {}).get("drop_path_rate")
    add("drop path rate", "the model's default" if drop_path is None else drop_path, "model" in h)
    add("EMA decay", h.get("ema_decay") if h.get("ema_decay") is not None else "off", "ema_decay" in h)
    add("EMA warmup", h.get("ema_warmup"), h.get("ema_decay") is not None and "ema_warmup" in h)
    add("frozen backbone (linear probe)", h.get("freeze_backbone"), bool(h.get("freeze_backbone")))
    for name, key in (("auto-augment", "auto_augment"), ("random erasing probability", "re_prob")):
        add(name, d.get(key), bool(d.get(key)))
    add("precision", run.precision, run.precision is not None)
    return [(name, _plain(value)) for name, value in rows]


def framework_versions(run: RunRecord) -> list[tuple[str, str, str]]:
    """``(package, version, where it was read)``: the training run's, where its checkpoint records them (Lightning
    and timm), else the versions of this export."""
    import importlib.metadata

    import timm

    import attnzoo

    def installed(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    training, export = "training run (recorded in the checkpoint)", "export (not recorded by the run)"
    rows = [
        ("attnzoo", str(attnzoo.__version__), export),
        ("torch", torch.__version__, export),
        ("timm", run.versions["timm"], training) if "timm" in run.versions else ("timm", timm.__version__, export),
    ]
    if "lightning" in run.versions:
        rows.append(("lightning", run.versions["lightning"], training))
    elif installed("lightning"):
        rows.append(("lightning", str(installed("lightning")), export))
    return rows


def _version_number(folder: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def _select(metrics: Mapping[str, float], ema: bool) -> dict[str, float]:
    """``val/acc1`` -> ``acc1`` (or ``val/ema_acc1`` -> ``acc1`` for the EMA weights)."""
    prefix = "val/ema_" if ema else "val/"
    return {
        key[len(prefix) :]: value
        for key, value in metrics.items()
        if key.startswith(prefix) and (ema or not key.startswith("val/ema_"))
    }


def validation_metrics(checkpoint: str | Path, run: RunRecord, ema: bool = False) -> tuple[dict[str, float], str]:
    """The validation scores of exactly these weights and where they were read; ``({}, why)`` when none were.

    First the run folder's CSV log (``RUN/csv/version_*/metrics.csv`` next to ``RUN/checkpoints/``): Lightning logs
    a validation after ``global_step`` updates at step ``global_step - 1``, so the row of the checkpoint's epoch and
    that step scored the weights it holds (the newest version wins: a resumed run rewrites the checkpoints). Else
    the score a ``ModelCheckpoint`` recorded for this file (e.g. ``best.ckpt`` copied out of its run folder).
    """
    path = Path(checkpoint)
    if run.epoch is not None and run.global_step:
        versions = sorted((path.parent.parent / "csv").glob("version_*"), key=_version_number, reverse=True)
        for version in versions:
            log = version / "metrics.csv"
            if not log.is_file():
                continue
            found: dict[str, float] = {}
            with log.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        at = int(float(row.get("epoch") or "nan")), int(float(row.get("step") or "nan"))
                    except ValueError:
                        continue
                    if at == (run.epoch, run.global_step - 1):
                        found.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
            selected = _select(found, ema)
            if selected:
                where = f"{version.parent.parent.name}/csv/{version.name}/metrics.csv"
                source = f"validation after epoch {run.epoch + 1} (step {run.global_step}), from {markdown_code(where)}"
                return selected, source
    selected = _select(run.checkpoint_scores, ema)
    if selected:
        return selected, "the score the run's ModelCheckpoint recorded for this checkpoint"
    return {}, (
        "no validation of these exact weights is in the run's CSV log or in the checkpoint's ModelCheckpoint state "
        "(a checkpoint written between validations, or one away from its run folder)"
    )


_METRIC_NAMES = {
    "acc1": ("accuracy", "top-1 accuracy"),
    "acc5": ("accuracy", "top-5 accuracy"),
    "loss": ("loss", "loss"),
}


UNKNOWN_DATA = "unknown data module"  # a checkpoint without the data module's hyper-parameters


def dataset_summary(data_hparams: Mapping[str, Any], datasets: Sequence[str] = ()) -> tuple[str, str]:
    """(the dataset's name, a markdown description of where the run read it, names escaped).

    The name is the user's: the first Hub dataset id given (``attnzoo export --dataset``), else the name of the data
    module's root folder (the digits tree's when the run used its default root); the data module's class names only
    the reader."""
    class_path = str(data_hparams.get("_class_path") or "")
    kind = class_path.rsplit(".", 1)[-1] or UNKNOWN_DATA
    root = data_hparams.get("root")
    folder = Path(str(root)).name if root else ("digits" if kind == "DigitsData" else None)
    name = str(datasets[0]) if datasets else (folder or kind)
    splits = ", ".join(
        f"{what} split {markdown_code(data_hparams[key])}"
        for what, key in (("training", "train_split"), ("validation", "val_split"))
        if data_hparams.get(key)
    )
    text = (f"the folder {markdown_code(folder)}, read by " if folder else "read by ") + markdown_code(kind)
    text += f" ({splits})" if splits else ""
    if kind == "DigitsData":
        text += ": scikit-learn's handwritten digits (UCI Optical Recognition of Handwritten Digits)"
    return name, text


@dataclass
class CardFacts:
    """Everything the card states, gathered by :func:`attnzoo.tools.export.export_checkpoint`."""

    model_name: str
    architecture: str
    model_args: dict[str, Any]
    num_params: int
    num_classes: int
    label_names: Sequence[str] | None
    data_config: dict[str, Any]
    license: WeightsLicense
    paper: Paper | None
    paper_fallback: str | None  # paper_name / paper_ids of a family outside PAPERS
    started_from: str
    base_model: str | None
    metrics: dict[str, float]
    metrics_source: str
    dataset_name: str
    dataset_text: str
    datasets: Sequence[str] = ()
    ema: bool = False
    epoch: int | None = None
    global_step: int | None = None
    load_as: str = "local-dir:PATH"
    # (name, plain value) rows of :func:`hyperparameters`; (package, version, where) rows of :func:`framework_versions`
    hyperparameters: Sequence[tuple[str, str]] = ()
    versions: Sequence[tuple[str, str, str]] = ()
    macs: int | None = None  # multiply-accumulates of one image at ``data_config["input_size"]``


def _front_matter(facts: CardFacts) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=facts.datasets[0] if facts.datasets else "imagefolder",
            dataset_name=facts.datasets[0] if facts.datasets else facts.dataset_name,
            dataset_split="validation",
            metric_type=_METRIC_NAMES[key][0],
            metric_name=f"{_METRIC_NAMES[key][1]} (validation)",
            metric_value=round(value, 6),
        )
        for key, value in facts.metrics.items()
        if key in _METRIC_NAMES
    ]
    data = ModelCardData(
        library_name="timm",
        license=facts.license.id,
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "attnzoo"],
        datasets=list(facts.datasets) or None,
        metrics=["accuracy"] if any(k.startswith("acc") for k in facts.metrics) else None,
        base_model=facts.base_model,
        model_name=facts.model_name if results else None,
        eval_results=results or None,
    )
    return front_matter_yaml(data.to_dict())


def _usage(facts: CardFacts) -> list[str]:
    return [
        "## Use",
        "",
        "attnzoo must be installed and imported first: importing it registers the architecture in timm. Without it",
        "(the Hub's timm widget, or `timm.create_model` alone) timm fails with `Unknown model`.",
        "",
        "```python",
        "import attnzoo  # registers the architecture in timm",
        "import timm",
        "import torch",
        "from PIL import Image",
        "",
        f"model = timm.create_model({json.dumps(facts.load_as)}, pretrained=True).eval()",  # a valid literal
        "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)",
        'labels = model.pretrained_cfg.get("label_names")  # the class names, by class index',
        "",
        'image = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)',
        "with torch.no_grad():",
        "    probabilities = model(image).softmax(-1)[0]",
        "top = probabilities.topk(min(5, probabilities.numel()))",
        "for p, i in zip(top.values.tolist(), top.indices.tolist()):",
        '    print(labels[i] if labels else i, f"{p:.3f}")',
        "```",
    ]


def _input_text(facts: CardFacts) -> str | None:
    size = facts.data_config.get("input_size")
    return f"{size[-2]}x{size[-1]}" if size and len(size) >= 2 else None


def _intended_use(facts: CardFacts) -> list[str]:
    dataset = "the training data" if facts.dataset_name == UNKNOWN_DATA else markdown_code(facts.dataset_name)
    pixels = _input_text(facts)
    at = f" at {pixels} pixels" if pixels else ""
    scratch = facts.started_from.startswith("random initialisation")
    top1 = facts.metrics.get("acc1")
    score = (
        f"its only recorded evaluation is {top1:.2%} top-1 on the run's own validation split"
        if top1 is not None
        else "no validation score of these weights is recorded"
    )
    lines = [
        "## Intended use and limitations",
        "",
        f"- **Intended use:** classifying images like those of {dataset} into its {facts.num_classes} classes{at}, "
        "preprocessed as `config.json` states (`timm.data.resolve_model_data_config` reads it); research on the "
        "architecture, and a starting point for fine-tuning on similar data.",
        f"- **Out of scope:** images unlike the training data and classes outside these {facts.num_classes}: the "
        'model always answers one of its classes (there is no "none of these"), and its probabilities are not '
        "calibrated. Not for decisions about people, safety or health.",
        f"- **Limitations:** {score}; no test set, robustness or bias evaluation is recorded. The model knows only "
        f"what {dataset} shows"
        + (f", and was trained from scratch{at}" if scratch else "")
        + "; accuracy on other data, sizes or preprocessing is unknown. The license below may restrict use.",
    ]
    return lines


def render_card(facts: CardFacts) -> str:
    """The card: YAML front matter (library, license, tags, datasets, metrics) and a markdown body: usage, intended
    use and limitations, model details (parameters, GMACs), training data, training hyper-parameters, results,
    framework versions, citation.

    What comes from data is escaped (see the module doc); the facts' markdown fields (``started_from``,
    ``dataset_text``, ``metrics_source``, the license's reason) come escaped from this module's helpers, the plain
    ones (hyper-parameters, versions, dataset name) are escaped here."""
    lines = [f"---\n{_front_matter(facts)}\n---", f"# {markdown_text(facts.model_name)}", ""]
    family = f" ({facts.paper.title})" if facts.paper else ""
    architecture = markdown_code(facts.architecture)
    lines += [
        f"An image classifier: {architecture}{family}, trained with attnzoo starting from {facts.started_from}.",
        "",
        *_usage(facts),
        "",
        *_intended_use(facts),
        "",
        "## Model details",
        "",
        f"- **Architecture:** {architecture}"
        + (f", arguments {markdown_code(facts.model_args)}" if facts.model_args else "")
        + f"; {facts.num_params / 1e6:.3g} M parameters ({facts.num_params:,})",
    ]
    pixels = _input_text(facts)
    if facts.macs is not None:
        where = f" per {pixels} image" if pixels else " per image"
        lines.append(f"- **Compute:** {facts.macs / 1e9:.4g} GMACs ({facts.macs:,} multiply-accumulates){where}")
    lines.append(
        f"- **Weights:** {'the exponential moving average (EMA) of the ' if facts.ema else 'the '}trained weights"
        + (f", epoch {facts.epoch + 1}, step {facts.global_step}" if facts.epoch is not None else "")
    )
    size = facts.data_config.get("input_size")
    if size:
        preprocessing = ", ".join(
            f"{k} {markdown_text(facts.data_config[k])}"
            for k in ("interpolation", "crop_pct", "mean", "std")
            if k in facts.data_config
        )
        lines.append(f"- **Input:** {markdown_text(tuple(size))}" + (f"; {preprocessing}" if preprocessing else ""))
    classes = f"- **Classes:** {facts.num_classes}"
    if facts.label_names:
        shown = ", ".join(markdown_code(name) for name in list(facts.label_names)[:50])
        classes += f": {shown}" + (", ..." if len(facts.label_names) > 50 else "")
    lines.append(classes)
    lines.append(f"- **License:** `{facts.license.id}`: {facts.license.reason}. attnzoo's code is MIT-licensed.")
    if facts.datasets:
        named = ", ".join(
            f"[{markdown_text(d)}](https://huggingface.co/datasets/{quote(str(d))})" for d in facts.datasets
        )
    else:
        named = markdown_code(facts.dataset_name)
    lines += ["", "## Training data", "", f"- **Dataset:** {named}", f"- **Read from:** {facts.dataset_text}"]
    if facts.hyperparameters:
        lines += ["", "## Training procedure", "", "| hyper-parameter | value |", "| --- | --- |"]
        lines += [f"| {name} | {markdown_text(value)} |" for name, value in facts.hyperparameters]
        lines += ["", "Read from the checkpoint's hyper-parameters (the task's and the data module's)."]
    lines += ["", "## Results", ""]
    if facts.metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        for key, value in facts.metrics.items():
            label = _METRIC_NAMES.get(key, (key, key))[1]
            lines.append(f"| {markdown_text(label)} (validation) | {value:.4f} |")
        lines += ["", f"Source: {facts.metrics_source}."]
    else:
        lines.append(f"Not recorded: {facts.metrics_source}.")
    if facts.versions:
        lines += ["", "## Framework versions", "", "| package | version | from |", "| --- | --- | --- |"]
        lines += [f"| {p} | {markdown_text(v)} | {where} |" for p, v, where in facts.versions]
    lines += ["", "## Citation", ""]
    if facts.paper:
        authors = ", ".join(facts.paper.authors)
        venue = f"{facts.paper.venue} {facts.paper.year}" if facts.paper.venue else f"arXiv {facts.paper.year}"
        lines += [
            f'{authors}. "{facts.paper.title}". {venue}. '
            f"[arXiv:{facts.paper.arxiv}](https://arxiv.org/abs/{facts.paper.arxiv})",
            "",
            "```bibtex",
            facts.paper.bibtex(),
            "```",
        ]
    elif facts.paper_fallback:
        lines.append(markdown_text(facts.paper_fallback))
    else:
        lines.append("The architecture's paper is not recorded in its pretrained config.")
    return "\n".join(lines) + "\n"
