"""timm's pretrained loading of authors' checkpoints: from a local file and from a URL on 127.0.0.1.

The checkpoint is an authors' state dict (their key names) from the parity fixtures, so these tests
also prove that timm applies the family's ``checkpoint_filter_fn`` when it loads weights.
"""

import functools
import hashlib
import http.server
import threading

import pytest
import timm
import torch
from timm.models import set_pretrained_check_hash

import attnzoo
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
def server(tmp_path):
    """A throw-away HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub_dir(tmp_path):
    """A fresh torch hub cache, with timm's sha256 check on (torch.hub checks the hash in the file name)."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    set_pretrained_check_hash(True)
    yield tmp_path / "hub"
    set_pretrained_check_hash(False)
    torch.hub.set_dir(previous)


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
    cached = next(hub_dir.rglob(name))
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


def test_registered_weights_point_at_the_authors_release(fixture):
    cfg = timm.create_model("nat_mini", pretrained=False).pretrained_cfg
    assert cfg["url"] == "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth"
    assert cfg["license"] == "mit" and cfg["paper_ids"] == "arXiv:2204.07143"
