"""Property test over every mixer: any arguments and map size (batch 0 and 1x1 maps included) give the right shape
or a clear error (a ``ValueError`` from the constructor, a ``ValueError``/``AssertionError`` from forward), never
another exception type."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnzoo.blocks import MIXERS, create_mixer

small = st.integers(-1, 4)


def mixer_kwargs(name: str) -> st.SearchStrategy[dict]:
    """Each mixer's own arguments, valid and invalid values alike."""
    return {
        "neighborhood": st.fixed_dictionaries(
            {"kernel_size": st.sampled_from([-1, 0, 1, 2, 3, 5]), "dilation": small, "qk_scale": st.none()}
        ),
        "hilo": st.fixed_dictionaries(
            {"window_size": small, "alpha": st.sampled_from([-0.5, 0.0, 0.25, 0.5, 1.0, 1.5])}
        ),
        "quadtree": st.fixed_dictionaries(
            {"sr_ratio": small, "attn_type": st.sampled_from(["A", "B", "C"]), "topk": small}
        ),
        "dual": st.fixed_dictionaries(
            {"attention": st.sampled_from(["spatial", "channel", "other"]), "window_size": small}
        ),
        "agent": st.fixed_dictionaries(
            {
                "agent_num": st.sampled_from([0, 1, 4, 9]),
                "window_size": st.integers(0, 6),
                "dynamic_size": st.booleans(),
            }
        ),
        "focal": st.fixed_dictionaries({"focal_window": small, "focal_level": small, "focal_factor": small}),
        "sparsifiner": st.fixed_dictionaries({"num_tokens": st.integers(0, 40)}),
    }[name]


@pytest.mark.parametrize("name", sorted(MIXERS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_right_shape_or_a_clear_error(name, data):
    heads = data.draw(st.integers(-1, 4), label="num_heads")
    dim = data.draw(st.sampled_from([-4, 0, 3, 4, 8, 12, 16]), label="dim")
    kwargs = data.draw(mixer_kwargs(name), label="kwargs")
    batch = data.draw(st.integers(0, 2), label="batch")
    height, width = data.draw(st.integers(1, 9), label="H"), data.draw(st.integers(1, 9), label="W")
    try:
        mixer = create_mixer(name, dim, heads, **kwargs).eval()
    except ValueError:
        return
    x = torch.randn(batch, height, width, max(dim, 1))
    try:
        with torch.no_grad():
            out = mixer(x)
    except (ValueError, AssertionError):
        return
    if isinstance(out, tuple):
        out = out[0]
    assert out.shape == x.shape
