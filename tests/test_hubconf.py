"""``hubconf.py``: torch.hub entrypoints for every attnzoo model, from a checkout and from an uninstalled download."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import attnzoo
from tests.fixtures import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
ONE_STAGE_NAT = {"embed_dim": 16, "depths": [1], "num_heads": [1], "mlp_ratio": 2.0, "kernel_size": 3}


def test_local_entrypoint_builds_the_timm_model_with_its_kwargs():
    model = torch.hub.load(str(ROOT), "nat_mini", source="local", pretrained=False, num_classes=4, **ONE_STAGE_NAT)
    assert type(model).__name__ == "NAT" and model.num_classes == 4 and len(model.stages) == 1


def test_local_entrypoint_loads_pretrained_weights_from_a_url(server, hub_dir):
    """pretrained=True goes through timm's download and the family's converter (authors' keys, 127.0.0.1)."""
    root, base_url = server
    fx = torch.load(FIXTURES / "nat_reduced.pt", weights_only=True)
    torch.save({"model": fx["state_dict"]}, root / "nat_reduced.pth")
    model = torch.hub.load(
        str(ROOT),
        fx["entrypoint"],
        source="local",
        pretrained=True,
        pretrained_cfg_overlay=dict(url=f"{base_url}/nat_reduced.pth", num_classes=10),
        **attnzoo.nat.config_to_kwargs(dict(fx["config"])),
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(fx["input"]), fx["logits"], atol=1e-4, rtol=1e-4)
    assert attnzoo.weights.cache_path(f"{base_url}/nat_reduced.pth").is_file()  # in the hub dir set above


def test_a_downloaded_checkout_lists_and_builds_every_model_without_an_install(tmp_path):
    """What ``torch.hub.load("OWNER/attnzoo", ...)`` meets: the repository unpacked in the hub cache, attnzoo not
    installed (the editable install's finder is removed), so hubconf maps the folders into ``attnzoo`` itself."""
    checkout = tmp_path / "hub" / "attnzoo-test_attnzoo_main"  # torch.hub's cache folder for OWNER/REPO:REF
    for folder in ("zoo", "blocks", "kernels"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "hubconf.py", checkout / "hubconf.py")
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.meta_path = [f for f in sys.meta_path if getattr(f, "__name__", "") != "_EditableFinder"]
        try:
            import attnzoo
            raise SystemExit("attnzoo is still importable: " + attnzoo.__file__)
        except ModuleNotFoundError:
            pass
        import torch
        torch.hub.set_dir({str(tmp_path / "hub")!r})
        repo = "attnzoo-test/attnzoo:main"
        names = torch.hub.list(repo, trust_repo=True, verbose=False)
        model = torch.hub.load(repo, "nat_mini", trust_repo=True, verbose=False, num_classes=3, **{ONE_STAGE_NAT!r})
        doc = torch.hub.help(repo, "nat_mini", trust_repo=True)
        import attnzoo
        print(json.dumps({{"names": names, "file": attnzoo.__file__, "classes": model.num_classes, "doc": doc}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["names"] == sorted(attnzoo.list_models())  # every model, and nothing else callable
    assert Path(out["file"]) == checkout / "zoo" / "__init__.py" and out["classes"] == 3
    assert "Neighborhood Attention Transformer" in out["doc"] and "license: mit" in out["doc"]
