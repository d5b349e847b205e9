"""A real ``attnzoo-train fit`` prints no dependency noise: no Lightning advertisement, none of the deprecation
warnings Lightning triggers on every run (shown here with ``PYTHONWARNINGS=default``, which would print them)."""

import os
import subprocess
import sys
from pathlib import Path

import attnzoo_cli
from tests.train.conftest import fit_args

NOISE = (
    "💡 Tip",
    "litlogger",
    "litmodels",
    "LeafSpec",
    "skip_none",
    "JsonargparseDeprecationWarning",
    "add_instantiator",
    "instantiate_classes",
    "args parameter is intended",  # LightningCLI's, if the launcher passed sys.argv on as args
)


def test_fit_prints_no_advertisement_and_no_known_deprecation_warning(image_folder, tmp_path):
    argv = fit_args(image_folder, tmp_path / "run", "--trainer.max_steps=1", "--trainer.limit_val_batches=1")
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).parent / "attnzoo-train"
    run = subprocess.run([str(script), "fit", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert not [word for word in NOISE if word in output], run.stderr[-3000:]
    assert "GPU available" in output  # Lightning's own information still comes through
    assert attnzoo_cli.ADVERTISEMENTS  # what is silenced is listed, by exact message
