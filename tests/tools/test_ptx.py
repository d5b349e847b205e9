"""``attnzoo bench ptx``: what the GPU compiler makes of the Triton kernels, checked on a machine without a GPU.

The command runs in a subprocess without ``TRITON_INTERPRET`` (this test session interprets Triton),
compiles every kernel for sm_80 and sm_90 and fails the test when an na2d kernel loses its tensor-core
instructions, spills, or the backward goes back to per-query atomics.
"""

import json
import os
import subprocess
import sys

import pytest

from attnzoo.kernels import triton_na2d
from attnzoo.tools.bench import ptx

if triton_na2d.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    launch = "from attnzoo.tools.cli import main; main()"
    command = [sys.executable, "-c", launch, "bench", "ptx", "--json", str(out / "ptx.json")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((out / "ptx.json").read_text()), result.stdout


def test_every_kernel_is_compiled_for_both_archs_and_dtypes(report):
    data, stdout = report
    rows = data["results"]
    kernels = {r["kernel"] for r in rows}
    assert {"na2d forward", "na2d backward dq drpb", "na2d backward dk dv"} <= kernels
    assert {"gather forward quadtree", "gather backward sparsifiner"} <= kernels
    for kernel in kernels:
        combos = {(r["arch"], r["dtype"]) for r in rows if r["kernel"] == kernel}
        assert combos == {(a, d) for a in ("sm_80", "sm_90") for d in ("bfloat16", "float16")}, kernel
    assert data["problems"] == [] and "PROBLEM" not in stdout
    assert data["versions"]["triton"] and all(data["ptxas"].values())


def test_na2d_runs_on_tensor_cores_without_spills(report):
    for row in report[0]["results"]:
        if row["kernel"].startswith("na2d"):
            assert row["mma"] > 0, row
            if row["arch"] == "sm_90":
                assert row["wgmma"] > 0, row  # Hopper's warpgroup MMA, not the Ampere fallback
        assert row["spill_bytes"] == 0, row
        assert row["registers"] <= 255, row


def test_na2d_backward_has_no_per_query_atomics(report):
    """dk/dv are stored by their key tile; drpb gets at most one atomic per bias cell and program."""
    config = triton_na2d.tile_config(32, 7)
    block_rpb = max(16, 1 << (2 * 7 - 2).bit_length())
    per_thread = -(-block_rpb * block_rpb // (32 * config.num_warps))
    for row in report[0]["results"]:
        if row["kernel"] in ("na2d forward", "na2d backward dk dv"):
            assert row["atomics"] == 0, row
        if row["kernel"] == "na2d backward dq drpb":
            assert 0 < row["atomics"] <= per_thread, row


def test_problems_flags_a_kernel_without_mma_or_with_spills():
    row = dict(arch="sm_90", dtype="bfloat16", shape="", wgmma=0, atomics=0, registers=64, shared_bytes=0)
    fine = ptx.KernelReport(kernel="na2d forward", mma=4, spill_bytes=0, num_warps=4, num_stages=2, **row)
    scalar = ptx.KernelReport(kernel="na2d forward", mma=0, spill_bytes=0, num_warps=4, num_stages=2, **row)
    spilling = ptx.KernelReport(kernel="gather forward x", mma=0, spill_bytes=8, num_warps=4, num_stages=2, **row)
    assert ptx.problems([fine]) == []
    assert "no mma/wgmma instruction" in ptx.problems([scalar])[0]
    assert "spills 8 bytes" in ptx.problems([spilling])[0]


def test_interpreted_kernels_are_refused_with_a_reason(monkeypatch):
    """In this (interpreting) process the kernels cannot be compiled; the error says how to run it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("this session compiles Triton kernels")
    with pytest.raises(ptx.PtxUnavailable, match="without TRITON_INTERPRET=1"):
        ptx.ptx_suite()
