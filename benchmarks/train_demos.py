"""Train the two dense demos on the CPU and check that they learn (slow: not part of ``make test``).

    .venv/bin/python benchmarks/train_demos.py [--only detection|segmentation] [--minutes 10] [--out DIR]
        [--json benchmarks/train-demos-cpu.json]

Each demo (``configs/demo/{detection,segmentation}.yaml``) trains on its synthetic data set, written to a
fresh folder, for its configured epochs but at most ``--minutes`` of wall time (``trainer.max_time``), and is
then validated from its best checkpoint. Passing means bbox mAP@50 >= 0.5 (detection) and mIoU >= 0.6
(segmentation). A JSON line per demo reports the metrics, the time, the machine, versions and the command;
``--json`` also writes them to a file (the committed results are ``benchmarks/train-demos-cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "torchvision", "timm", "lightning", "segmentation_models_pytorch", "natten")
DEMOS = {
    "detection": ("val/map_50", 0.5, ("val/map", "val/map_50", "val/map_75")),
    "segmentation": ("val/miou", 0.6, ("val/miou", "val/pixel_acc")),
}


def run(name: str, minutes: float, out: Path) -> dict:
    from attnzoo.train.cli import build_cli

    config = ROOT / "configs" / "demo" / f"{name}.yaml"
    common = [
        "--config",
        str(config),
        f"--data.root={out / 'data'}",
        f"--trainer.default_root_dir={out / 'run'}",
        "--trainer.enable_progress_bar=false",
    ]
    start = time.perf_counter()
    fit = build_cli(["fit", *common, f"--trainer.max_time=00:00:{int(minutes)}:{int(minutes % 1 * 60):02d}"])
    seconds = time.perf_counter() - start
    best = fit.trainer.checkpoint_callback.best_model_path
    validate = build_cli(["validate", *common, f"--ckpt_path={best}"])
    monitor, threshold, keys = DEMOS[name]
    metrics = {key: round(float(validate.trainer.callback_metrics[key]), 4) for key in keys}
    return {
        "demo": name,
        "metrics": metrics,
        "threshold": {monitor: threshold},
        "passed": metrics[monitor] >= threshold,
        "fit_seconds": round(seconds, 1),
        "epochs": fit.trainer.current_epoch,
        "steps": fit.trainer.global_step,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
        "versions": {name: metadata.version(name) for name in PACKAGES},
        "command": " ".join(["python", *sys.argv]),  # no path of this machine in the record
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(DEMOS))
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time cap of each fit")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="attnzoo-demos-"))
    results = [run(name, args.minutes, out / name) for name in ([args.only] if args.only else sorted(DEMOS))]
    for result in results:
        print(json.dumps(result))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
