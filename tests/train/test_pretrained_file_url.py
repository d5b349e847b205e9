"""``ClassificationTask(pretrained_file=URL)`` goes through the zoo's one verified download (127.0.0.1 server)."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from attnzoo import weights
from attnzoo.train import ClassificationTask
from tests.train.helpers import TINY_NAT


def serve_weights(folder, seed: int) -> dict[str, torch.Tensor]:
    """A tiny NAT's state dict (seeded), written to ``folder/model.safetensors`` for the server."""
    torch.manual_seed(seed)
    state = timm.create_model("nat_mini", num_classes=3, **TINY_NAT).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return state


def loaded(url: str) -> dict[str, torch.Tensor]:
    task = ClassificationTask(model="nat_mini", model_kwargs=TINY_NAT, num_classes=3, pretrained_file=url)
    task.load_pretrained()
    return task.model.state_dict()


def test_a_pretrained_file_url_is_downloaded_verified_and_recorded(server, hub_dir):
    """Two runs whose URLs share a file name each get their own weights, and each URL's hash is recorded."""
    root, base = server
    first, second = serve_weights(root / "a", 0), serve_weights(root / "b", 1)
    for name, expected in (("a", first), ("b", second)):
        state = loaded(f"{base}/{name}/model.safetensors")
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    records = json.loads((hub_dir / weights.RECORD_NAME).read_text())
    for name in ("a", "b"):
        url = f"{base}/{name}/model.safetensors"
        assert records[url] == hashlib.sha256(weights.cache_path(url).read_bytes()).hexdigest()


def test_a_pretrained_file_url_is_hash_checked(server, hub_dir, monkeypatch):
    root, base = server
    serve_weights(root, 0)
    url = f"{base}/model.safetensors"
    monkeypatch.setitem(weights.SHA256, url, "0" * 64)
    with pytest.raises(weights.WeightsHashError, match=r"^pretrained_file: weights downloaded from .* was registered"):
        loaded(url)
    assert not weights.cache_path(url).exists()
