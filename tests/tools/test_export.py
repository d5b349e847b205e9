"""``attnzoo export``: class names in config.json, the model card, and ONNX checked against eager PyTorch."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import timm
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image

from attnzoo.tools import model_card
from attnzoo.tools.export import ONNX_ATOL, check_onnx, export_checkpoint, export_onnx
from attnzoo.train.checkpoint import read_checkpoint

CLASSES = ("cat", "dog", "zebra")  # already in timm's (natural) order of class folders
# one stage of 3x3 neighbourhood attention: the cheapest attnzoo model that still runs na2d (and exports fast)
ONE_STAGE_NAT = {"embed_dim": 16, "depths": [1], "num_heads": [1], "mlp_ratio": 2.0, "kernel_size": 3}
_RUN: dict[str, Path] = {}


def tiny_run(tmp_path_factory) -> Path:
    """Two epochs of a one-stage NAT with an EMA on a generated 3-class ImageFolder, through ``attnzoo-train``.

    Made once per session (``test_hub`` uses it too): a real Lightning run folder, with its checkpoints' callback
    state and CSV log, is what the card reads.
    """
    if "run" not in _RUN:
        from attnzoo.train.cli import build_cli
        from tests.train.conftest import fit_args

        root = tmp_path_factory.mktemp("classes")
        rng = np.random.default_rng(0)
        for split, count in (("train", 4), ("val", 2)):
            for index, name in enumerate(CLASSES):
                (root / split / name).mkdir(parents=True)
                for i in range(count):
                    image = rng.integers(0, 50, size=(24, 24, 3), dtype=np.uint8)
                    image[..., index] += 150  # one colour per class: learnable, not constant
                    Image.fromarray(image).save(root / split / name / f"{i}.png")
        run_dir = tmp_path_factory.mktemp("run")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            extra = ["--trainer.max_epochs=2", "--data.batch_size=4", "--model.ema_decay=0.5"]
            build_cli(["fit", *fit_args(root, run_dir, *extra, model="nat_mini", kwargs=ONE_STAGE_NAT)])
        finally:
            torch.set_num_threads(threads)
        _RUN["run"] = run_dir
    return _RUN["run"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def _last_validation(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/acc1")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def test_export_writes_class_names_that_timm_reads_back(run, tmp_path):
    out = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["label_names"] == list(CLASSES)
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert model.pretrained_cfg["label_names"] == list(CLASSES)
    weights = read_checkpoint(run / "checkpoints" / "last.ckpt").state_dict
    assert all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())


def test_card_states_license_paper_run_metrics_and_data(run, tmp_path):
    out = export_checkpoint(
        run / "checkpoints" / "last.ckpt", tmp_path / "export", model_name="tiny-nat", repo_id="org/tiny-nat"
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "mit"
    assert {"image-classification", "timm", "attnzoo"} <= set(card.data.tags)
    scores = {result.metric_name: result.metric_value for result in card.data.eval_results}
    logged = _last_validation(run)
    assert scores["top-1 accuracy (validation)"] == pytest.approx(logged["val/acc1"], abs=1e-6)
    assert scores["top-5 accuracy (validation)"] == pytest.approx(logged["val/acc5"], abs=1e-6)
    text = card.text
    assert "arXiv:2204.07143" in text and "Ali Hassani" in text and "@inproceedings{" in text
    assert "`ImageFolderData`" in text and all(f"`{name}`" in text for name in CLASSES)
    assert 'timm.create_model("hf-hub:org/tiny-nat", pretrained=True)' in text
    assert "apache" not in card.content.lower()
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["license"] == "mit"

    ema = ModelCard.load(export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "ema", ema=True) / "README.md")
    ema_scores = {result.metric_name: result.metric_value for result in ema.data.eval_results}
    assert ema_scores["top-1 accuracy (validation)"] == pytest.approx(logged["val/ema_acc1"], abs=1e-6)
    assert "exponential moving average" in ema.text


def _section(text: str, heading: str) -> str:
    """The body of the card's ``## heading`` section (up to the next ``## ``)."""
    assert f"\n## {heading}\n" in text, f"no section {heading!r}"
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _table(section: str) -> dict[str, list[str]]:
    """A markdown table's rows: first cell -> the other cells (header and rule rows included)."""
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in section.splitlines() if line[:1] == "|"]
    return {row[0]: row[1:] for row in rows}


def test_card_has_use_limits_hyperparameters_versions_and_macs(run, tmp_path, capsys):
    """Intended use and limitations, the run's hyper-parameters, framework versions, GMACs at the input size and a
    usage snippet that imports attnzoo and runs as written."""
    import attnzoo
    from attnzoo.tools.macs import count_macs

    checkpoint = run / "checkpoints" / "last.ckpt"
    text = ModelCard.load(export_checkpoint(checkpoint, tmp_path / "export") / "README.md").text
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)

    limits = _section(text, "Intended use and limitations")
    assert "**Intended use:**" in limits and "**Out of scope:**" in limits and "**Limitations:**" in limits
    assert "3 classes at 32x32 pixels" in limits and f"{_last_validation(run)['val/acc1']:.2%} top-1" in limits

    hparams = {name: values[0] for name, values in _table(_section(text, "Training procedure")).items()}
    expected = {
        "optimizer": "adamw",
        "learning rate (peak)": "0.002",
        "weight decay": "0.05",
        "schedule": "cosine",
        "warmup epochs": "1.0",
        "minimum learning rate": "1e-05",
        "epochs trained": "2",
        "batch size (per process)": "4",  # the data module's hparams (fit_args' 8, overridden)
        "mixup alpha": "0.0",
        "cutmix alpha": "0.0",
        "label smoothing": "0.0",
        "drop path rate": "the model's default",
        "EMA decay": "0.5",
    }
    assert {key: hparams.get(key) for key in expected} == expected
    assert "precision" not in hparams  # bf16/fp32 leave no trace in a Lightning checkpoint: not guessed

    versions = {name: values for name, values in _table(_section(text, "Framework versions")).items()}
    assert versions["timm"][0] == state["timm_version"] and "checkpoint" in versions["timm"][1]
    assert versions["lightning"][0] == state["pytorch-lightning_version"] and "checkpoint" in versions["lightning"][1]
    assert versions["torch"][0] == torch.__version__ and versions["attnzoo"][0] == attnzoo.__version__

    model = timm.create_model("nat_mini", num_classes=3, **ONE_STAGE_NAT).eval()
    macs = count_macs(model, torch.zeros(1, 3, 32, 32))
    details = _section(text, "Model details")
    assert f"{macs / 1e9:.4g} GMACs ({macs:,} multiply-accumulates) per 32x32 image" in details

    snippet = re.search(r"^```python\n(.*?)^```$", _section(text, "Use"), flags=re.S | re.M).group(1)
    assert snippet.index("import attnzoo") < snippet.index("timm.create_model(")
    image = tmp_path / "zebra.png"
    Image.fromarray(np.full((24, 24, 3), 30, dtype=np.uint8)).save(image)
    capsys.readouterr()
    exec(compile(snippet.replace('"image.jpg"', repr(str(image))), "card", "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out.split()
    assert printed[0] in CLASSES and len(printed) == 6  # the 3 classes with their probabilities


def test_card_names_the_dataset_given_or_the_data_root(run, tmp_path, capsys):
    """Not the data module's class: ``--dataset ID`` when given, else the data root's folder name."""
    from attnzoo.tools import cli

    checkpoint = run / "checkpoints" / "last.ckpt"
    root_name = Path(model_card.read_run(checkpoint).data_hparams["root"]).name
    card = ModelCard.load(export_checkpoint(checkpoint, tmp_path / "plain") / "README.md")
    assert {result.dataset_name for result in card.data.eval_results} == {root_name}
    data = _section(card.text, "Training data")
    assert f"- **Dataset:** `{root_name}`\n" in data and "read by `ImageFolderData`" in data
    assert f"images like those of `{root_name}`" in _section(card.text, "Intended use and limitations")

    cli.main(["export", str(checkpoint), str(tmp_path / "named"), "--dataset", "org/shapes"])
    card = ModelCard.load(tmp_path / "named" / "README.md")
    assert card.data.datasets == ["org/shapes"]
    assert {result.dataset_name for result in card.data.eval_results} == {"org/shapes"}
    assert "- **Dataset:** [org/shapes](https://huggingface.co/datasets/org/shapes)\n" in card.text
    assert "images like those of `org/shapes`" in card.text

    digits = model_card.dataset_summary({"_class_path": "attnzoo.train.DigitsData", "root": None})
    assert digits[0] == "digits" and "handwritten digits" in digits[1]
    assert model_card.dataset_summary({"_class_path": "x.ImageFolderData", "root": "/data/imagenet/"})[0] == "imagenet"


def test_card_scores_the_checkpoint_it_exports_also_outside_its_run_folder(run, tmp_path):
    """best.ckpt may be older than the last validation: its own score, from the log or from ModelCheckpoint."""
    best = run / "checkpoints" / "best.ckpt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    (recorded,) = [s for s in state["callbacks"].values() if s.get("monitor") == "val/acc1"]
    for checkpoint in (best, Path(shutil.copy(best, tmp_path / "best.ckpt"))):
        record = model_card.read_run(checkpoint)
        metrics, source = model_card.validation_metrics(checkpoint, record)
        assert metrics["acc1"] == pytest.approx(float(recorded["best_model_score"]), abs=1e-6)
        assert ("metrics.csv" in source) == (checkpoint == best)
    # a checkpoint written between validations has no score of its own
    state["global_step"] += 1
    torch.save(state, tmp_path / "between.ckpt")
    metrics, source = model_card.validation_metrics(
        tmp_path / "between.ckpt", model_card.read_run(tmp_path / "between.ckpt")
    )
    assert metrics == {} and "no validation of these exact weights" in source


def _litv2_checkpoint(path: Path, pretrained: bool) -> Path:
    """A ClassificationTask checkpoint (the layout ``read_checkpoint`` takes) of a tiny LITv2, written by hand."""
    kwargs = {"embed_dim": 24, "depths": [1, 1, 1, 1]}
    model = timm.create_model("litv2_small", num_classes=2, **kwargs)
    torch.save(
        {
            "hyper_parameters": {
                "model": "litv2_small",
                "model_kwargs": kwargs,
                "num_classes": 2,
                "pretrained": pretrained,
            },
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "data_config": {"input_size": [3, 64, 64]},
            "epoch": 0,
            "global_step": 5,
        },
        path,
    )
    return path


@pytest.mark.parametrize(("pretrained", "license"), [(False, "mit"), (True, "apache-2.0")])
def test_card_license_is_the_weights_license(tmp_path, pretrained, license):
    """LITv2's released weights are Apache-2.0: a fine-tune inherits it; weights trained from scratch are MIT."""
    out = export_checkpoint(_litv2_checkpoint(tmp_path / "run.ckpt", pretrained), tmp_path / "export")
    card = ModelCard.load(out / "README.md")
    assert card.data.license == license
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["license"] == license
    assert ("apache" in card.content.lower()) == pretrained
    assert "Zizheng Pan" in card.text and "arXiv:2205.13213" in card.text
    assert "Not recorded" in card.text and not card.data.eval_results  # no run folder, no ModelCheckpoint
    assert "images like those of the training data into its 2 classes at 64x64" in card.text  # no data module
    assert "| learning rate (peak)" not in card.text and "| drop path rate | the model's default |" in card.text


def test_export_into_a_folder_with_files_needs_force(tmp_path, capsys):
    """A user's README.md and config.json stay as they were unless --force; viz and bench refuse in the same words."""
    from attnzoo.tools import cli

    checkpoint = _litv2_checkpoint(tmp_path / "run.ckpt", pretrained=False)
    out = tmp_path / "mine"
    out.mkdir()
    mine = {"README.md": "# my notes\n", "config.json": '{"mine": true}\n', "notes.txt": "keep\n"}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(FileExistsError, match=r"^out_dir: .*mine is not empty; pass --force to export into it$"):
        export_checkpoint(checkpoint, out)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(checkpoint), str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("attnzoo export: error: out_dir: ") and "pass --force" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == mine  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="out_dir: .*file is a file; give a folder"):
        export_checkpoint(checkpoint, tmp_path / "file")
    cli.main(["export", str(checkpoint), str(out), "--force"])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert "litv2_small" in (out / "config.json").read_text() and (out / "notes.txt").read_text() == "keep\n"
    (tmp_path / "empty").mkdir()
    assert (export_checkpoint(checkpoint, tmp_path / "empty") / "model.safetensors").is_file()  # an empty folder: fine


EVIL_CLASS = "# Evil\n<script>x</script> [link](http://x)"
EVIL_DATASET = "org/ds\n---\nlicense: evil\n# Head <b>x</b> [l](http://y): 'q\" \x85 \u2028 {a: [b]}"


def _markup(body: str) -> str:
    """What a markdown renderer interprets in ``body``: without fenced blocks, code spans and escaped characters."""
    body = re.sub(r"^```\w*\n.*?^```$", "", body, flags=re.S | re.M)
    body = re.sub(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", "", body)
    return re.sub(r"\\.", "", body)


def test_card_escapes_what_comes_from_data():
    """A class folder, a dataset id, a run name and a logged metric name add no heading, HTML or link to the card,
    and the front matter reads back (as YAML and through huggingface_hub) to the original strings."""
    facts = model_card.CardFacts(
        model_name="run\n# Evil <i>x</i>",
        architecture="nat_mini",
        model_args={"depths": [1]},
        num_params=1000,
        num_classes=3,
        label_names=[EVIL_CLASS, "`tick`", "a|b"],
        data_config={"input_size": (3, 32, 32), "interpolation": "<b>bicubic</b>"},
        license=model_card.weights_license({}, pretrained=True, pretrained_file="/x/[w](http://w).pth"),
        paper=None,
        paper_fallback="[paper](http://p) <img src=x>",
        started_from=model_card.starting_point("hf-hub:org/<x>", {}, {"pretrained": True}),
        base_model=None,
        metrics={"acc1": 0.5, "x|<i>y</i>": 0.25},
        metrics_source="a test",
        dataset_name=EVIL_DATASET,
        dataset_text=model_card.dataset_summary({"_class_path": "m.ImageFolderData", "root": "/d/#`<b>`"})[1],
        datasets=[EVIL_DATASET],
        hyperparameters=[("optimizer", EVIL_CLASS), ("schedule", "a|b <i>c</i>")],
        versions=[("timm", "1.0\n# <b>x</b> [l](http://v)", "training run")],
    )
    text = model_card.render_card(facts)
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    data = yaml.safe_load(front)
    assert data["datasets"] == [EVIL_DATASET] and data["model-index"][0]["name"] == facts.model_name
    assert data["model-index"][0]["results"][0]["dataset"]["name"] == EVIL_DATASET
    card = ModelCard(text)
    assert card.data.datasets == [EVIL_DATASET] and card.data.eval_results[0].dataset_name == EVIL_DATASET
    markup = _markup(body)
    headings = [line for line in markup.splitlines() if re.match(r" {0,3}#{1,6}( |$)", line)]
    assert len(headings) == 9 and headings[0].startswith("# run")  # the card's own: title, Use, ..., Citation
    assert "<" not in markup and ">" not in markup  # no HTML: only entities
    assert re.findall(r"\]\((\S+?)\)", markup) == [
        "https://huggingface.co/org/%3Cx%3E",
        f"https://huggingface.co/datasets/{quote(EVIL_DATASET)}",
    ]
    assert "http://" not in markup.replace("https://huggingface.co/", "")  # no bare URL to autolink either
    assert "`` `tick` ``" in body and "`a|b`" in body  # class names shown verbatim as code


def test_weights_license_never_promotes_an_unknown_license():
    agent = timm.models.get_pretrained_cfg("agent_swin_tiny").to_dict()
    assert model_card.weights_license(agent, pretrained=True).id == "unknown"
    assert model_card.weights_license(agent, pretrained=False).id == "mit"
    nat = timm.models.get_pretrained_cfg("nat_mini").to_dict()
    assert model_card.weights_license(nat, pretrained=True, pretrained_file="/x/weights.pth").id == "unknown"
    assert model_card.paper_for(agent).authors[0] == "Dongchen Han"


@pytest.fixture(scope="module")
def onnx_export(run, tmp_path_factory):
    folder = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path_factory.mktemp("onnx"))
    return folder, export_onnx(folder)


def test_export_onnx_matches_eager_at_any_batch_size(onnx_export):
    import onnx
    import onnxruntime

    folder, path = onnx_export
    assert path == folder / "model.onnx"
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    for batch_size in (1, 5):  # traced with 2
        assert check_onnx(path, model, batch_size=batch_size, seed=batch_size) < ONNX_ATOL
    (onnx_input,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert isinstance(onnx_input.shape[0], str) and onnx_input.shape[1:] == [3, 32, 32]
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert metadata["architecture"] == "nat_mini" and json.loads(metadata["preprocessing"])["input_size"] == [3, 32, 32]


def test_check_onnx_names_the_difference_from_eager(onnx_export):
    folder, path = onnx_export
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        model.head.bias += 1e-2
    with pytest.raises(ValueError, match=r"differs from eager PyTorch by up to 0\.01"):
        check_onnx(path, model)
    assert 0.009 < check_onnx(path, model, atol=0.02) < 0.011  # a looser tolerance (Sparsifiner's near-ties) accepts


def test_export_onnx_needs_an_export_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_dir: .* has no config.json"):
        export_onnx(tmp_path)
