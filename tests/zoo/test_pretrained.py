"""timm's pretrained loading of authors' checkpoints: from a local file and from a URL on 127.0.0.1.

The checkpoint is an authors' state dict (their key names) from the parity fixtures, so these tests
also prove that timm applies the family's ``checkpoint_filter_fn`` when it loads weights.
"""

import hashlib
import json

import pytest
import timm
import torch
from timm.models import set_pretrained_check_hash

import attnzoo
from attnzoo import weights
from tests.fixtures import FIXTURES


@pytest.fixture(scope="module")
def fixture():
    """The reduced NAT fixture (10 classes): its overlay must say num_classes=10 or timm drops the head."""
    fx = torch.load(FIXTURES / "nat_reduced.pt", weights_only=True)
    fx["kwargs"] = attnzoo.nat.config_to_kwargs(dict(fx["config"]))
    return fx


def logits(model, fx):
    with torch.no_grad():
        return model.eval()(fx["input"])


def test_pretrained_from_a_local_file(tmp_path, fixture):
    path = tmp_path / "nat_reduced.pth"
    torch.save({"model": fixture["state_dict"]}, path)  # the authors' wrapper is undone by the filter
    model = timm.create_model(
        fixture["entrypoint"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
        **fixture["kwargs"],
    )
    torch.testing.assert_close(logits(model, fixture), fixture["logits"], atol=1e-4, rtol=1e-4)


def test_pretrained_with_a_new_head_keeps_the_backbone(tmp_path, fixture):
    path = tmp_path / "nat_reduced.pth"
    torch.save(fixture["state_dict"], path)
    kwargs = dict(fixture["kwargs"], num_classes=3)
    model = timm.create_model(
        fixture["entrypoint"], pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **kwargs
    )
    with torch.no_grad():
        features = model.eval().forward_head(model.forward_features(fixture["input"]), pre_logits=True)
    torch.testing.assert_close(features, fixture["pre_logits"], atol=1e-4, rtol=1e-4)
    assert model.get_classifier().out_features == 3


@pytest.fixture
def hub_dir(hub_dir):
    """The fresh torch hub folder, with timm's sha256 check on (torch.hub checks the hash in the file name)."""
    set_pretrained_check_hash(True)
    yield hub_dir
    set_pretrained_check_hash(False)


def serve_checkpoint(root, state_dict, claimed_sha256=None):
    staging = root / "staging.pth"
    torch.save(state_dict, staging)
    sha256 = hashlib.sha256(staging.read_bytes()).hexdigest()
    name = f"nat_reduced-{(claimed_sha256 or sha256)[:10]}.pth"
    staging.rename(root / name)
    return name, sha256


def test_pretrained_from_a_url_with_its_sha256_checked(server, hub_dir, fixture):
    root, base_url = server
    name, sha256 = serve_checkpoint(root, fixture["state_dict"])
    model = timm.create_model(
        fixture["entrypoint"],
        pretrained=True,
        pretrained_cfg_overlay=dict(url=f"{base_url}/{name}", num_classes=10),
        **fixture["kwargs"],
    )
    torch.testing.assert_close(logits(model, fixture), fixture["logits"], atol=1e-4, rtol=1e-4)
    cached = weights.cache_path(f"{base_url}/{name}")
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha256


def test_a_url_whose_content_does_not_match_its_sha256_is_refused(server, hub_dir, fixture):
    root, base_url = server
    name, _ = serve_checkpoint(root, fixture["state_dict"], claimed_sha256="0123456789abcdef")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        timm.create_model(
            fixture["entrypoint"],
            pretrained=True,
            pretrained_cfg_overlay=dict(url=f"{base_url}/{name}"),
            **fixture["kwargs"],
        )


def create_from(base_url, name, fixture):
    return timm.create_model(
        fixture["entrypoint"],
        pretrained=True,
        pretrained_cfg_overlay=dict(url=f"{base_url}/{name}"),
        **fixture["kwargs"],
    )


def test_a_downloaded_file_that_changes_after_its_first_use_is_refused_by_name(server, hub_dir, fixture):
    """No hash in the name or the registry: the first download's SHA-256 is recorded and checked afterwards."""
    root, base_url = server
    torch.save(fixture["state_dict"], root / "plain.pth")
    create_from(base_url, "plain.pth", fixture)
    records = json.loads((hub_dir / weights.RECORD_NAME).read_text())
    cached = weights.cache_path(f"{base_url}/plain.pth")
    assert records == {f"{base_url}/plain.pth": hashlib.sha256(cached.read_bytes()).hexdigest()}
    create_from(base_url, "plain.pth", fixture)  # unchanged: loads again
    state = dict(fixture["state_dict"])
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, cached)  # the cached file changes (corruption, tampering)
    with pytest.raises(weights.WeightsHashError, match=r"weights file .*plain.pth .* has SHA-256 .* recorded at its"):
        create_from(base_url, "plain.pth", fixture)


def test_a_registered_sha256_is_checked(server, hub_dir, fixture, monkeypatch):
    root, base_url = server
    torch.save(fixture["state_dict"], root / "release.pth")
    monkeypatch.setitem(weights.SHA256, f"{base_url}/release.pth", "0" * 64)
    with pytest.raises(weights.WeightsHashError, match=r"release.pth .* but 0{64} was registered"):
        create_from(base_url, "release.pth", fixture)


def test_registered_weights_point_at_the_authors_release(fixture):
    cfg = timm.create_model("nat_mini", pretrained=False).pretrained_cfg
    assert cfg["url"] == "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth"
    assert cfg["license"] == "mit" and cfg["paper_ids"] == "arXiv:2204.07143"


def test_a_share_link_without_a_file_name_downloads_into_a_named_cache_file(server, hub_dir):
    """The Agent authors' TsinghuaCloud links end in ``/f/<id>/?dl=1``; torch.hub alone cannot name that file."""
    root, base_url = server
    fx = torch.load(FIXTURES / "agent_pvt_t_reduced.pt", weights_only=True)
    share = root / "f" / "13fdf0e0a7c5498c934f"
    share.mkdir(parents=True)
    torch.save({"model": fx["state_dict"]}, share / "index.html")  # what the server returns for the folder URL
    url = f"{base_url}/f/13fdf0e0a7c5498c934f/?dl=1"
    kwargs = attnzoo.agent_pvt.config_to_kwargs(dict(fx["config"]))
    model = timm.create_model(
        "agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(url=url, num_classes=10), **kwargs
    )
    torch.testing.assert_close(logits(model, fx), fx["logits"], atol=1e-4, rtol=1e-4)
    cached = hub_dir / "checkpoints" / weights.cache_name(url)
    assert cached.name.endswith("-127.0.0.1-f-13fdf0e0a7c5498c934f.pth")
    assert cached.is_file() and url in json.loads((hub_dir / weights.RECORD_NAME).read_text())
