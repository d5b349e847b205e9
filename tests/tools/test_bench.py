"""The ``attnzoo bench`` suites at tiny sizes: what they measure, what they write, how they refuse bad input.

Timings themselves are not asserted (they would be flaky); only that every case is there and positive.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnzoo.kernels import _dispatch
from attnzoo.tools import cli
from attnzoo.tools.bench import blocks as bench_blocks
from attnzoo.tools.bench import kernels as bench_kernels
from attnzoo.tools.bench import models as bench_models
from attnzoo.tools.bench import record


def _cases(report: dict) -> set[tuple[str, str, str]]:
    return {(r["case"], r["implementation"], r["mode"]) for r in report["results"]}


def test_window_attention_matches_per_window_sdpa_and_pads_ragged_maps():
    """Each token attends exactly to its own window's tokens; a 9x9 map is padded to 12x12 with zeros."""
    q, k, v = (torch.randn(2, 9, 9, 2, 8) for _ in range(3))
    out = bench_kernels.window_attention(q, k, v, 3)
    assert out.shape == q.shape
    window = (slice(3, 6), slice(6, 9))  # an interior window: no padding involved
    qw, kw, vw = (t[:, window[0], window[1]].reshape(2, 9, 2, 8).transpose(1, 2) for t in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(qw, kw, vw).transpose(1, 2).reshape(2, 3, 3, 2, 8)
    torch.testing.assert_close(out[:, window[0], window[1]], expected)
    full = bench_kernels.full_attention(q, k, v)
    torch.testing.assert_close(bench_kernels.window_attention(q, k, v, 9), full)  # one window covering the map


def test_na2d_dilations_are_one_and_the_largest_that_fits():
    assert [bench_kernels.na2d_dilations(s, 7, quick=False) for s in (56, 28, 14, 7)] == [[1, 8], [1, 4], [1, 2], [1]]
    assert bench_kernels.na2d_dilations(56, 7, quick=True) == [1]


def test_bench_kernels_quick_writes_every_case_with_summary(tmp_path, capsys):
    argv = ["bench", "kernels", "--device", "cpu", "--sizes", "7", "--quick", "--min-run-time", "0.01"]
    cli.main([*argv, "--json", str(tmp_path / "reports" / "kernels-{device}.json")])
    report = json.loads((tmp_path / "reports" / "kernels-cpu.json").read_text())
    assert report["device_type"] == "cpu" and "CPU" in report["device"]
    assert report["versions"]["torch"] and "natten" in report["versions"] and "timm" in report["versions"]
    assert report["command"].startswith("attnzoo bench kernels")
    settings = report["settings"]
    assert settings["dtype"] == "float32" and settings["batch"] == 1 and settings["heads"] == {"7": 16}
    cases = _cases(report)
    for case, implementation in [
        ("window attention", "sdpa"),
        ("full attention", "sdpa"),
        ("na2d", "torch"),
        ("gather_attention", "torch"),
    ]:
        assert (case, implementation, "forward (no grad)") in cases
        assert (case, implementation, "forward+backward") in cases
    assert not any(c[0] == "na2d+rpb" for c in cases)  # --quick
    shapes = {r["shape"].split(":")[0] for r in report["results"] if r["case"] == "gather_attention"}
    assert shapes == {"quadtree", "sparsifiner"}
    assert all(r["median_ms"] > 0 for r in report["results"])
    stage = next(s for s in report["summary"] if s["kind"] == "na2d")
    assert stage["size"] == 7 and stage["na2d_over_window_fwd_bwd_time"] > 0
    assert {s["shape"] for s in report["summary"] if s["kind"] == "gather_attention"} == {"quadtree", "sparsifiner"}
    out = capsys.readouterr().out
    assert "median ms" in out and "na2d (" in out and "/ window attention" in out
    assert f"wrote {tmp_path / 'reports' / 'kernels-cpu.json'}" in out


def test_bench_kernels_full_mode_covers_rpb_and_largest_dilation(capsys):
    cli.main(
        [
            "bench", "kernels", "--sizes", "6", "--kernel-size", "3", "--heads", "1", "--head-dim", "8",
            "--backends", "torch", "--gather", "--min-run-time", "0.01",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "na2d+rpb" in out and "dilation=2" in out and "gather_attention" not in out
    assert "wrote" not in out  # no --json, no file


def test_backend_that_declines_backward_keeps_its_forward_and_records_why(monkeypatch):
    """Like NATTEN on the CPU: the forward is timed, the backward is skipped with the reason, nothing invented."""

    def unsupported(q, k, v, **_):
        needs_grad = torch.is_grad_enabled() and q.requires_grad
        return "no backward here" if needs_grad else None

    torch_impl = _dispatch._REGISTRY["na2d"]["torch"]
    fake = _dispatch.Implementation(torch_impl.fn, torch_impl.unavailable, unsupported)
    monkeypatch.setitem(_dispatch._REGISTRY["na2d"], "natten", fake)
    config = bench_kernels.KernelConfig(
        sizes=[7], heads={7: 1}, batch=1, gather_batch=1, head_dim=8, min_run_time=0.01, quick=True,
        backends=["torch", "natten"], gather=[],
    )  # fmt: skip
    report = bench_kernels.kernel_suite(torch.device("cpu"), config)
    natten = [(r.case, r.mode) for r in report.results if r.implementation == "natten"]
    assert natten == [("na2d", "forward (no grad)")]
    assert [(s.implementation, s.mode, s.reason) for s in report.skipped] == [
        ("natten", "forward+backward", "backend 'natten' does not support this na2d call: no backward here")
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "5"], "smaller than --kernel-size"),
        (["--sizes", "30"], "give --heads"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nope"], "--device"),
    ],
)
def test_bench_kernels_rejects_bad_options_clearly(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "kernels", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("attnzoo bench kernels: error: ")


def test_bench_refuses_to_overwrite_a_report_before_measuring(tmp_path, monkeypatch, capsys):
    """An existing --json file stops the command before any timing; --force replaces it; a folder is refused."""
    existing = tmp_path / "blocks-cpu.json"
    existing.write_text("committed numbers")
    monkeypatch.setattr(bench_blocks, "blocks_suite", lambda *a: pytest.fail("measured although it cannot write"))
    argv = ["bench", "blocks", "--device", "cpu", "--cases", "8x16x2", "--json"]
    for target, message in [
        (str(tmp_path / "blocks-{device}.json"), f"--json: {existing} exists; pass --force to overwrite it"),
        (str(tmp_path), f"--json: {tmp_path} is a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, target])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert existing.read_text() == "committed numbers"
    monkeypatch.setattr(bench_blocks, "blocks_suite", lambda *a: [])
    cli.main([*argv, str(existing), "--force"])
    assert json.loads(existing.read_text())["results"] == []


def test_write_json_creates_folders_and_never_replaces_silently(tmp_path):
    path = tmp_path / "a" / "b" / "report.json"
    assert record.write_json(path, {"x": 1}) == path and json.loads(path.read_text()) == {"x": 1}
    with pytest.raises(FileExistsError):
        record.write_json(path, {"x": 2})
    record.write_json(path, {"x": 3}, force=True)
    assert json.loads(path.read_text()) == {"x": 3}


def test_bench_blocks_times_every_mixer_next_to_dense_attention(tmp_path):
    cli.main(
        [
            "bench",
            "blocks",
            "--device",
            "cpu",
            "--cases",
            "8x16x2",
            "--min-run-time",
            "0.01",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    report = json.loads((tmp_path / "b.json").read_text())
    labels = {r["case"] for r in report["results"]}
    assert labels == {"dense (SDPA)", *bench_blocks.block_settings(8)}
    assert {r["mode"] for r in report["results"]} == {"forward (no grad)", "forward+backward"}
    assert report["settings"]["cases"] == [[8, 16, 2]]


def test_bench_models_reports_throughput_params_and_memory(tmp_path, capsys):
    argv = ["bench", "models", "resnet18", "--device", "cpu", "--size", "32", "--batch", "2", "--min-run-time", "0.01"]
    cli.main([*argv, "--json", str(tmp_path / "models.json")])
    report = json.loads((tmp_path / "models.json").read_text())
    assert report["suite"] == "models" and report["command"].startswith("attnzoo")
    assert report["settings"]["precision"] == "fp32" and report["versions"]["timm"]
    (row,) = report["results"]
    assert row["model"] == "resnet18" and row["input"] == "2x3x32x32"
    assert row["images_per_s"] > 0 and 11 < row["params_m"] < 12
    assert "img/s" in capsys.readouterr().out


def test_bench_models_builds_fixed_size_models_for_the_requested_size(monkeypatch):
    """ViT/Swin get ``img_size`` when ``--size`` is not their default; CNNs, which refuse it, are built without."""
    import timm

    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, kwargs))
        if name.startswith("resnet") and "img_size" in kwargs:
            raise TypeError("ResNet.__init__() got an unexpected keyword argument 'img_size'")
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(timm, "create_model", create_model)
    for name in ("vit_tiny_patch16_224", "resnet18"):
        assert not bench_models.build_model(name, 32).training
        bench_models.build_model(name, 224)
    assert calls == [
        ("vit_tiny_patch16_224", {"img_size": 32}),
        ("vit_tiny_patch16_224", {}),
        ("resnet18", {"img_size": 32}),
        ("resnet18", {}),
        ("resnet18", {}),
    ]


@pytest.mark.parametrize(
    "argv, messages",
    [
        (["resnt18"], ["unknown model 'resnt18'", "resnet18"]),
        (["convnext_tinyy"], ["close matches", "convnext_tiny"]),
        (["nat_tinyy"], ["unknown model 'nat_tinyy'", "nat_tiny"]),
        (["resnet18", "--precision", "fp16", "--device", "cpu"], ["fp16", "CUDA"]),
    ],
)
def test_bench_models_rejects_bad_input_in_one_line(argv, messages, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "models", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo bench models: error: ") and err.count("\n") == 1
    assert all(m in err for m in messages)


def test_gpu_check_script_refuses_a_machine_without_cuda(tmp_path):
    """benchmarks/gpu_check.sh parses, and on a machine without CUDA stops at once with status 2, saying why."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the whole check")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no CUDA device" in (tmp_path / "gpu-check.log").read_text()


def test_bench_blocks_sets_the_sparse_mixers_against_the_attention_they_replace():
    """Issue 27: Sparsifiner next to DeiT's attention, QuadTree next to PVTv2's, as ratios measured in one run."""
    results = bench_blocks.blocks_suite(torch.device("cpu"), 0.001, 1, [(8, 16, 2)], ["sparsifiner", "quadtree"])
    rows = {(r.case, r.mode): r for r in results}
    labels = {"dense (SDPA)", "sparsifiner", "deit_attention", "quadtree", "pvtv2_attention"}
    assert {case for case, _ in rows} == labels
    for sparse, dense in bench_blocks.COUNTERPARTS.items():
        for mode in ("forward (no grad)", "forward+backward"):
            row, base = rows[sparse, mode], rows[dense, mode]
            assert row.dense_case == dense and row.time_ratio == pytest.approx(row.median_ms / base.median_ms)
            assert f"{row.time_ratio:.2f}x time" in row.implementation
        row = rows[sparse, "forward+backward"]
        assert row.saved_mib > 0 and f"{row.saved_ratio:.2f}x saved" in row.implementation
    assert rows["pvtv2_attention", "forward+backward"].shape == "B=1 8x8 C=16 heads=2"


def test_saved_mib_counts_each_storage_once():
    x = torch.randn(256, 256, requires_grad=True)  # 256 KiB
    assert bench_blocks.saved_mib(lambda: (x * x).sum()) == 0.25  # x saved twice by mul: one storage
    assert bench_blocks.saved_mib(lambda: x.sum()) == 0.0
