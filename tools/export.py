"""``attnzoo export``: a classification checkpoint -> a timm model folder, a model card and, on request, ONNX.

The folder is timm's own Hub layout (``timm.models.save_for_hf``: ``model.safetensors`` + ``config.json``) plus a
model card (``README.md``), so it loads without attnzoo's training code and without Lightning, from disk or, once
uploaded (:func:`attnzoo.tools.hub.push_to_hub`), from the Hub::

    import attnzoo, timm                      # attnzoo registers the architecture in timm
    model = timm.create_model("local-dir:OUT_DIR", pretrained=True)     # or "hf-hub:ORG/NAME"
    model.pretrained_cfg["label_names"]       # the class names, when the run recorded them
    model = timm.create_model("nat_mini", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file="OUT_DIR/model.safetensors", num_classes=10))

(timm drops a head whose size differs from the overlay's ``num_classes``, hence that key.) The checkpoint is
read through the training floor's Lightning-free :func:`~attnzoo.train.checkpoint.read_checkpoint`.
:func:`export_onnx` turns such a folder into ``model.onnx`` and checks it against eager PyTorch in ONNX Runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import timm
import torch

from attnzoo.train.checkpoint import read_checkpoint

from . import model_card

__all__ = [
    "ONNX_ATOL",
    "ONNX_RTOL",
    "check_onnx",
    "check_out_dir",
    "count_input_macs",
    "export_checkpoint",
    "export_onnx",
]

# what torch.onnx.export(dynamo=True) and the ONNX Runtime check import: the [onnx] extra
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

# |onnx - eager| <= ONNX_ATOL + ONNX_RTOL * |eager|, elementwise on the logits. Measured on the CPU in fp32 (2 cores,
# onnxruntime 1.32, torch 2.14.1): the smallest variant of every family at its input size, random weights, batches of
# 1 and 3, differs by at most 1.0e-6 (logits up to 1.7); 1e-4 leaves a 100x margin for other machines and trained
# weights (larger logits: the relative term) and still catches a wrong operator. Sparsifiner is the exception: its
# per-query top-k flips near-ties, so eager itself moves by up to 2.5e-4 when the input moves by 1e-6, and so does
# ONNX (up to 9e-4 measured): pass a looser ``atol`` for it.
ONNX_ATOL = 1e-4
ONNX_RTOL = 1e-4


def check_out_dir(out_dir: str | Path, force: bool) -> Path:
    """``out_dir`` as a folder the export may write: missing or empty, or any folder with ``force``.

    Checked before anything is read or written, so that a refused export leaves a user's ``README.md`` or
    ``config.json`` as it was (``attnzoo viz`` and ``bench`` refuse to replace a file in the same words).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir: {out_dir} is a file; give a folder to export into")
    if out_dir.is_dir() and not force and any(out_dir.iterdir()):
        raise FileExistsError(f"out_dir: {out_dir} is not empty; pass --force to export into it")
    return out_dir


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    ema: bool = False,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    datasets: Sequence[str] = (),
    force: bool = False,
) -> Path:
    """Write ``out_dir/model.safetensors``, ``out_dir/config.json`` (timm's pretrained-config layout) and
    ``out_dir/README.md`` (the model card).

    ``config.json`` records the architecture, the constructor arguments that differ from the registered variant
    (``model_args``, e.g. a reduced ``depths``), the class names (``label_names``, when the checkpoint has them)
    and the preprocessing the weights were trained with, so ``timm.data.resolve_model_data_config`` of the reloaded
    model reproduces the validation transform. The card (see :mod:`.model_card`) takes its title from
    ``model_name`` (default: the folder's name), its usage line from ``repo_id`` and its Hub dataset ids from
    ``datasets``; its license is the one of the weights, which ``pretrained_cfg["license"]`` repeats. A folder that
    already holds files is written into only with ``force`` (:func:`check_out_dir`).
    """
    if isinstance(datasets, str):
        raise TypeError(f"datasets: a list of Hub dataset ids, not the string {datasets!r}")
    out_dir = check_out_dir(out_dir, force)
    contents = read_checkpoint(checkpoint, ema=ema)
    label_names = contents.label_names  # the class folder names of an ImageFolder run, checked by the reader
    model = timm.create_model(
        contents.model, pretrained=False, num_classes=contents.num_classes, **contents.model_kwargs
    )
    model.load_state_dict(contents.state_dict, strict=True)
    model.eval()
    data_config = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in contents.data_config.items()
        if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    run = model_card.read_run(checkpoint)
    source_cfg = dict(model.pretrained_cfg)
    terms = model_card.weights_license(
        source_cfg, bool(run.hparams.get("pretrained")), run.hparams.get("pretrained_file")
    )
    # the source tag (e.g. "in1k") would claim weights these are not; the name says what they are. The source's
    # license describes its weights, not these: replaced by the one the card explains.
    model_config: dict = {"pretrained_cfg": {"tag": None, "license": terms.id}}
    if label_names:
        model_config["label_names"] = label_names
    timm.models.save_for_hf(
        model, out_dir, model_config=model_config, safe_serialization=True, data_config=data_config or None
    )
    config = json.loads((out_dir / "config.json").read_text())
    if config.get("num_classes") != contents.num_classes:  # pragma: no cover - timm's own consistency check
        raise RuntimeError(f"config.json has num_classes {config.get('num_classes')}, expected {contents.num_classes}")

    metrics, metrics_source = model_card.validation_metrics(checkpoint, run, ema=ema)
    dataset_name, dataset_text = model_card.dataset_summary(run.data_hparams, datasets)
    paper = model_card.paper_for(source_cfg)
    fallback = None
    if paper is None and (source_cfg.get("paper_name") or source_cfg.get("paper_ids")):
        fallback = " ".join(str(source_cfg[k]) for k in ("paper_name", "paper_ids") if source_cfg.get(k))
    base_model = None
    if run.hparams.get("pretrained") and not run.hparams.get("pretrained_file"):
        if contents.model.startswith("hf-hub:"):
            base_model = contents.model.split(":", 1)[1]
        elif source_cfg.get("hf_hub_id"):
            base_model = str(source_cfg["hf_hub_id"]).split("@", 1)[0]
    facts = model_card.CardFacts(
        model_name=model_name or out_dir.resolve().name,
        architecture=config["architecture"],
        model_args=config.get("model_args") or {},
        num_params=sum(p.numel() for p in model.parameters()),
        num_classes=contents.num_classes,
        label_names=label_names,
        data_config=config["pretrained_cfg"],
        license=terms,
        paper=paper,
        paper_fallback=fallback,
        started_from=model_card.starting_point(contents.model, source_cfg, run.hparams),
        base_model=base_model,
        metrics=metrics,
        metrics_source=metrics_source,
        dataset_name=dataset_name,
        dataset_text=dataset_text,
        datasets=tuple(datasets),
        ema=ema,
        epoch=run.epoch,
        global_step=run.global_step,
        load_as=f"hf-hub:{repo_id}" if repo_id else f"local-dir:{out_dir}",
        hyperparameters=model_card.hyperparameters(run),
        versions=model_card.framework_versions(run),
        macs=count_input_macs(contents.model, contents.num_classes, contents.model_kwargs, model, config),
    )
    (out_dir / "README.md").write_text(model_card.render_card(facts), encoding="utf-8")
    return out_dir


def count_input_macs(
    name: str, num_classes: int, model_kwargs: dict, model: torch.nn.Module, config: dict
) -> int | None:
    """Multiply-accumulates of one image at the exported input size (:func:`attnzoo.tools.macs.count_macs`).

    Counted on the meta device (no arithmetic, no memory for weights) where the model runs there, else with a real
    forward of ``model`` at batch 1; ``None`` when neither can count it (the card then leaves it out).
    """
    from .macs import count_macs

    size = tuple((config.get("pretrained_cfg") or {}).get("input_size") or model.pretrained_cfg["input_size"])
    try:
        with torch.device("meta"):
            meta = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs).eval()
        return count_macs(meta, torch.empty(1, *size, device="meta"))
    except Exception:  # noqa: BLE001 - an operator without a meta kernel: count a real forward instead
        pass
    try:
        return count_macs(model, torch.zeros(1, *size))
    except Exception:  # noqa: BLE001 - no number rather than no export
        return None


def _load_export(model_dir: Path) -> torch.nn.Module:
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model_dir: {str(model_dir)!r} has no config.json (write one with `attnzoo export`)")
    return timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()


def check_onnx(
    onnx_path: str | Path,
    model: torch.nn.Module,
    batch_size: int = 3,
    seed: int = 0,
    atol: float = ONNX_ATOL,
    rtol: float = ONNX_RTOL,
) -> float:
    """Run ``onnx_path`` in ONNX Runtime (CPU) on a random batch and compare it with ``model`` in eager mode.

    Returns the largest absolute difference of the outputs; ``ValueError`` naming it when any element is beyond
    ``atol + rtol * |eager|``. A batch size other than the traced one (2) checks the dynamic batch axis.
    """
    import numpy as np
    import onnxruntime

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_input,) = session.get_inputs()
    shape = [batch_size, *model.pretrained_cfg["input_size"]]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = session.run(None, {onnx_input.name: x.numpy()})
    if actual.shape != expected.shape:
        raise ValueError(f"onnx: {str(onnx_path)!r} gives outputs of shape {actual.shape}, eager {expected.shape}")
    difference = np.abs(actual - expected)
    worst = float(difference.max())
    if not np.all(difference <= atol + rtol * np.abs(expected)):
        raise ValueError(
            f"onnx: {str(onnx_path)!r} differs from eager PyTorch by up to {worst:.3g} on a batch of {batch_size} "
            f"(tolerance atol={atol:g} + rtol={rtol:g} * |logit|; models that pick keys by top-k, such as "
            "Sparsifiner, flip near-ties and need a looser atol)"
        )
    return worst


def export_onnx(
    model_dir: str | Path,
    onnx_path: str | Path | None = None,
    *,
    atol: float = ONNX_ATOL,
    rtol: float = ONNX_RTOL,
) -> Path:
    """Write the exported model of ``model_dir`` as ONNX (default ``model_dir/model.onnx``) and check it.

    ``torch.onnx.export(dynamo=True)`` (``torch.export`` underneath), fp32, input ``input`` ``(batch, C, H, W)`` at
    the model's input size with a dynamic batch axis, output ``logits``. The architecture, class names and
    preprocessing are stored in the ONNX metadata (``metadata_props``). The file is then run in ONNX Runtime and
    compared with eager PyTorch (:func:`check_onnx`, tolerance ``atol``/``rtol``); a mismatch removes the file and
    raises ``ValueError``. A model ``torch.export`` cannot trace raises ``RuntimeError`` naming the architecture;
    without the ``[onnx]`` extra's packages (:data:`ONNX_PACKAGES`) a ``RuntimeError`` names the missing ones.
    """
    from attnzoo_cli import missing_extra

    missing = missing_extra("onnx", *ONNX_PACKAGES)
    if missing is not None:
        raise RuntimeError(f"onnx: export_onnx {missing}")
    model_dir = Path(model_dir)
    model = _load_export(model_dir)
    onnx_path = Path(onnx_path) if onnx_path is not None else model_dir / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.pretrained_cfg
    example = torch.randn(2, *cfg["input_size"], generator=torch.Generator().manual_seed(1))
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    except Exception as error:
        raise RuntimeError(f"onnx: torch.onnx.export cannot export {cfg.get('architecture')}: {error}") from error
    metadata = {
        "architecture": str(cfg.get("architecture")),
        "num_classes": str(model.num_classes),
        "label_names": json.dumps(list(cfg.get("label_names") or [])),
        "preprocessing": json.dumps(
            {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode") if k in cfg}
        ),
        "license": str(cfg.get("license")),
    }
    program.model.metadata_props.update(metadata)
    program.save(str(onnx_path))
    try:
        check_onnx(onnx_path, model, atol=atol, rtol=rtol)
    except Exception:
        onnx_path.unlink(missing_ok=True)
        raise
    return onnx_path
