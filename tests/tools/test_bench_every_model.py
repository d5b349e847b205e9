"""``attnzoo bench models NAME`` with the command's defaults runs every model attnzoo registers.

The defaults include ``--channels-last``, which Agent models refused (their 5-D bias tables). Each model is built
and run at the default size and batch on the meta device: shapes, strides and dtypes are checked as on a real one,
no memory is used and no arithmetic done.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import attnzoo
import attnzoo_cli
from attnzoo.tools.bench import models as bench_models

META = torch.device("meta")
# the in-place fills of weight initialisers: they change no shape or stride, and on meta tensors nothing else,
# but each costs a Python-level meta kernel (they made building all models on meta take ~15 s)
_INITIALISER_NAMES = ("uniform_", "normal_", "erfinv_", "mul_", "add_", "clamp_", "fill_", "zero_")
_INITIALISER_OPS = {getattr(torch.Tensor, name) for name in _INITIALISER_NAMES}


class _SkipInitialisers(TorchFunctionMode):
    """Returns the tensor of an initialiser's in-place fill untouched (only for building on meta)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INITIALISER_OPS:
            return args[0]
        return func(*args, **(kwargs or {}))


_build_model = bench_models.build_model


def _build_on_meta(name: str, size: int) -> torch.nn.Module:
    with META, _SkipInitialisers():
        return _build_model(name, size)


@pytest.mark.parametrize("name", attnzoo.list_models())
def test_bench_models_runs_every_registered_model_with_the_defaults(name, monkeypatch):
    args = attnzoo_cli.build_parser().parse_args(["bench", "models", name])
    assert args.channels_last and args.size == 224 and not args.compile  # the defaults this test stands for
    monkeypatch.setattr(bench_models, "build_model", _build_on_meta)
    outputs = []
    monkeypatch.setattr(bench_models, "time_ms", lambda forward, min_run_time: (outputs.append(forward()), 1.0)[1])
    (result,) = bench_models.models_suite(
        META, args.models, args.size, args.batch, "fp32", args.compile, args.channels_last, args.min_run_time
    )
    assert result.model == name and result.channels_last and result.params_m > 0
    assert result.input == f"{args.batch}x3x224x224" and outputs[0].shape == (args.batch, 1000)
