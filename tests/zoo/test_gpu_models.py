"""A NAT model's training step on CUDA's backends (auto: triton for NAT's biased attention) against the reference.

Only ``gpu`` tests live here, and the module needs no parity fixtures, so ``benchmarks/gpu_check.sh`` runs it on a
bare GPU machine.
"""

import pytest
import timm
import torch

import attnzoo  # noqa: F401  (registers the models)
from attnzoo.kernels import use_backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def training_step(model, images, backend):
    model.zero_grad(set_to_none=True)
    with use_backend(backend):
        logits = model(images)
    logits.float().logsumexp(-1).sum().backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["nat_mini", "dinat_mini"])
def test_auto_matches_the_torch_reference_in_float32(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).cuda()
    images = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.backends.cuda.matmul.flags(allow_tf32=False), torch.backends.cudnn.flags(allow_tf32=False):
        got_logits, got_grads = training_step(model, images, "auto")
        want_logits, want_grads = training_step(model, images, "torch")
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
    assert got_grads.keys() == want_grads.keys()
    for key, grad in got_grads.items():
        scale = float(want_grads[key].abs().max()) + 1e-12
        torch.testing.assert_close(grad, want_grads[key], atol=1e-3 * scale, rtol=0, msg=key)


def test_bf16_autocast_training_step_is_finite():
    model = timm.create_model("nat_tiny", num_classes=10).cuda()
    images = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, grads = training_step(model, images, "auto")
    assert torch.isfinite(logits).all() and all(torch.isfinite(g).all() for g in grads.values())
