"""Agent-PVT beyond the release layout: PVT attention stages ('B') and agents over reduced keys (sr > 1).

``agent_pvt_fixture/layouts.pt`` holds logits of a transcription of the authors' module
(``agent_pvt_fixture/transcription.py``, written by ``make.py``), in the shared fixtures' format.
"""

from pathlib import Path

import pytest
import timm
import torch

import attnzoo

CASES = torch.load(Path(__file__).parent / "agent_pvt_fixture" / "layouts.pt", weights_only=True)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_authors_layouts_match_their_logits(case):
    model = attnzoo.from_official(case["entrypoint"], case["config"], case["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(model(case["input"]), case["logits"], atol=1e-4, rtol=1e-4)


def test_reduced_keys_matter():
    """The fixture is sensitive to the spatial reduction: dropping one agent stage's ``sr`` conv moves the logits."""
    case = CASES[0]
    state_dict = dict(case["state_dict"])
    state_dict["block1.0.attn.sr.weight"] = state_dict["block1.0.attn.sr.weight"].flip(-1)
    model = attnzoo.from_official(case["entrypoint"], case["config"], state_dict)
    with torch.no_grad():
        assert (model(case["input"]) - case["logits"]).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(attn_type="AAMB2"), "attn_type"),
        (dict(attn_type="AAC"), "attn_type"),
        (dict(agent_sr_ratios="1x11"), "agent_sr_ratios"),
        (dict(agent_sr_ratios="1111", sr_ratios=[8, 4, 2]), "sr_ratios"),
    ],
)
def test_unsupported_layouts_are_refused_by_name(change, match):
    with pytest.raises(ValueError, match=match):
        attnzoo.from_official("agent_pvt_tiny", {**CASES[0]["config"], **change})


def test_reduced_layouts_serve_other_sizes_when_dynamic():
    """Agents over reduced keys and PVT attention stages run at sizes they were not built for (dense tasks)."""
    config = {**CASES[0]["config"]}
    model = attnzoo.from_official("agent_pvt_tiny", config).eval()
    dynamic = timm.create_model(
        "agent_pvt_tiny", **{**attnzoo.agent_pvt.config_to_kwargs(config), "dynamic_img_size": True}
    ).eval()
    dynamic.load_state_dict(model.state_dict())
    image = CASES[0]["input"]
    with torch.no_grad():
        torch.testing.assert_close(dynamic(image), model(image))  # same computation at the built size
        assert dynamic(torch.randn(1, 3, 128, 160)).shape == (1, 10)
