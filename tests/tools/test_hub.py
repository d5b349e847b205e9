"""``attnzoo push-to-hub`` against a recording fake of ``HfApi``; ``hf-hub:`` loading from an offline Hub cache."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import RepoUrl

from attnzoo.tools.export import export_checkpoint
from attnzoo.tools.hub import push_to_hub
from attnzoo.train.checkpoint import read_checkpoint
from tests.tools.test_export import CLASSES, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


class RecordingApi:
    """The part of ``huggingface_hub.HfApi`` that ``push_to_hub`` calls; keeps the calls and the uploaded files."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        self.folder: Path | None = None

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return RepoUrl(f"https://huggingface.co/{kwargs['repo_id']}")

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        self.folder = Path(kwargs["folder_path"])
        self.files = {p.name: p.read_bytes() for p in self.folder.iterdir()}


def test_push_to_hub_uploads_weights_config_and_card_in_one_commit(run):
    api = RecordingApi()
    url = push_to_hub(run / "checkpoints" / "last.ckpt", "attnzoo-test/tiny-nat", private=True, revision="v1", api=api)
    assert url == "https://huggingface.co/attnzoo-test/tiny-nat/tree/v1"
    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (kwargs for _, kwargs in api.calls)
    assert create["repo_id"] == "attnzoo-test/tiny-nat" and create["private"] is True and create["exist_ok"] is True
    assert branch["branch"] == "v1" and upload["revision"] == "v1"
    assert sorted(api.files) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(api.files["config.json"])["label_names"] == list(CLASSES)
    card = api.files["README.md"].decode()
    assert "# tiny-nat" in card and 'timm.create_model("hf-hub:attnzoo-test/tiny-nat", pretrained=True)' in card
    assert not api.folder.exists()  # the temporary export is gone

    api = RecordingApi()
    assert push_to_hub(run / "checkpoints" / "last.ckpt", "attnzoo-test/tiny-nat", api=api).endswith("/tiny-nat")
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]  # main: no branch to create


@pytest.mark.parametrize("repo_id", ["tiny-nat", "a/b/c", "org/bad name", "org/-x", "org/a--b", "/tiny-nat"])
def test_push_to_hub_checks_repo_id_before_touching_the_hub(run, repo_id):
    api = RecordingApi()
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(run / "checkpoints" / "last.ckpt", repo_id, api=api)
    assert api.calls == []


def test_push_to_hub_creates_no_repo_for_an_unreadable_checkpoint(tmp_path):
    api = RecordingApi()
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        push_to_hub(tmp_path / "missing.ckpt", "org/name", api=api)
    assert api.calls == []


def _place_in_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str = "0" * 40) -> None:
    """``huggingface_hub``'s cache layout, as a download of ``repo_id`` at ``main`` would leave it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_hf_hub_model_loads_offline_from_the_hub_cache(run, tmp_path, monkeypatch):
    """After ``import attnzoo``, ``hf-hub:ORG/NAME`` builds the model from config.json with its class names.

    ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` are read once, into ``huggingface_hub.constants``, when the library is
    imported; the download functions consult those constants on every call, so setting them here is the same
    switch, in-process. Guards on name lookups and connections prove that nothing tried the network.
    """
    import huggingface_hub.constants

    checkpoint = run / "checkpoints" / "last.ckpt"
    _place_in_hub_cache(export_checkpoint(checkpoint, tmp_path / "export"), tmp_path / "hub", "attnzoo-test/tiny-nat")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # before any lookup or connection leaves the machine
    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = timm.create_model("hf-hub:attnzoo-test/tiny-nat", pretrained=True).eval()
    assert attempts == []
    assert model.pretrained_cfg["label_names"] == list(CLASSES)
    assert tuple(timm.data.resolve_model_data_config(model)["input_size"]) == (3, 32, 32)

    contents = read_checkpoint(checkpoint)
    reference = timm.create_model(contents.model, num_classes=contents.num_classes, **contents.model_kwargs).eval()
    reference.load_state_dict(contents.state_dict)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
