"""Writes ``layouts.pt``: Agent-PVT parity cases for the layouts beyond the release ('AAAA', sr '1111').

Run from the repository root: ``.venv/bin/python tests/zoo/agent_pvt_fixture/make.py``. Each case follows the
shared fixtures' format (``entrypoint``, authors' ``config``, authors' ``state_dict``, ``input``, ``logits``),
made with :mod:`transcription` and perturbed weights so that every block and bias matters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from transcription import PyramidVisionTransformer  # noqa: E402

REDUCED = dict(
    img_size=96,
    patch_size=4,
    num_classes=10,
    embed_dims=[16, 24, 40, 48],
    num_heads=[1, 2, 5, 6],
    mlp_ratios=[2, 2, 2, 2],
    qkv_bias=True,
    depths=[1, 2, 1, 1],
)
# stage maps at 96: 24, 12, 6, 3
CASES = {
    # PVT attention in the late stages, agents over 2x-reduced keys early
    "agent_pvt_AABB_sr2211": dict(
        attn_type="AABB", agent_sr_ratios="2211", sr_ratios=[8, 4, 2, 1], agent_num=[9, 4, 4, 4]
    ),  # fmt: skip
    # alternating, with a qk_scale that only the PVT attention stages honour
    "agent_pvt_BABA_sr1411": dict(
        attn_type="BABA", agent_sr_ratios="1411", sr_ratios=[8, 4, 2, 1], agent_num=[9, 16, 4, 4], qk_scale=0.3
    ),  # fmt: skip
}


def perturb(model: nn.Module, generator: torch.Generator) -> None:
    """Weights far from init: Linear/Conv ~ randn/sqrt(fan_in), norms and biases 1 +- 0.2 / 0.2 randn,
    the agent bias tables randn * 0.5 (so a wrong resize or axis shows up in the logits)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            if leaf.endswith("_bias") or leaf.startswith("pos_embed"):
                param.copy_(0.5 * noise)
            elif param.dim() >= 2:
                param.copy_(noise / param[0].numel() ** 0.5)
            elif leaf == "weight":
                param.copy_(1 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)


def make_case(name: str, layout: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = {**REDUCED, **layout}
    model = PyramidVisionTransformer(**config).eval()
    perturb(model, generator)
    image = torch.randn(2, 3, config["img_size"], config["img_size"], generator=generator)
    with torch.no_grad():
        logits = model(image)
    return dict(
        name=name,
        entrypoint="agent_pvt_tiny",
        config=config,
        state_dict={k: v.clone() for k, v in model.state_dict().items()},
        input=image,
        logits=logits,
    )


def main() -> None:
    cases = [make_case(name, layout, seed) for seed, (name, layout) in enumerate(CASES.items())]
    out = Path(__file__).with_name("layouts.pt")
    torch.save(cases, out)
    print(f"wrote {out}: " + ", ".join(f"{c['name']} |logits| {c['logits'].abs().max():.2f}" for c in cases))


if __name__ == "__main__":
    main()
