"""``attnzoo bench`` times with the threads its reports state: ``--threads N``, by default every CPU it may use."""

import json
import os

import pytest
import torch
from torch.utils import benchmark as torch_benchmark

from attnzoo.tools import cli
from attnzoo.tools.bench import record

SUITES = {
    "kernels": ["kernels", "--sizes", "7", "--quick", "--backends", "torch", "--gather"],
    "blocks": ["blocks", "--cases", "8x16x2", "--mixers", "hilo"],
    "models": ["models", "resnet18", "--size", "32", "--batch", "1"],
}


class FakeTimer:
    """torch.utils.benchmark.Timer that records the threads it is asked for and the threads torch has."""

    seen: list[tuple[int, int]] = []

    def __init__(self, stmt, globals, num_threads=1, **kwargs):
        FakeTimer.seen.append((num_threads, torch.get_num_threads()))

    def blocked_autorange(self, min_run_time):
        return type("Measurement", (), {"median": 1e-3})()


@pytest.fixture
def timer(monkeypatch):
    FakeTimer.seen = []
    monkeypatch.setattr(torch_benchmark, "Timer", FakeTimer)
    return FakeTimer


def _run(tmp_path, suite, *extra):
    path = tmp_path / f"{suite}.json"
    cli.main(["bench", *SUITES[suite], "--device", "cpu", "--min-run-time", "0.01", *extra, "--json", str(path)])
    return json.loads(path.read_text())


@pytest.mark.parametrize("suite", list(SUITES))
def test_timers_get_the_threads_the_report_states(tmp_path, timer, suite):
    before = torch.get_num_threads()
    report = _run(tmp_path, suite)
    threads = report["settings"]["threads"]
    assert threads == record.available_threads() == len(os.sched_getaffinity(0))
    assert f"{threads} threads" in report["device"]
    assert timer.seen and set(timer.seen) == {(threads, threads)}
    assert torch.get_num_threads() == before  # the process's setting comes back


def test_threads_option_is_used_and_recorded(tmp_path, timer):
    report = _run(tmp_path, "blocks", "--threads", "1")
    assert report["settings"]["threads"] == 1 and report["device"].endswith(", 1 threads")
    assert report["command"].endswith("--threads 1 --json " + str(tmp_path / "blocks.json"))
    assert timer.seen and set(timer.seen) == {(1, 1)}


def test_time_ms_times_with_torch_threads(timer):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        record.time_ms(lambda: None, 0.01)
    finally:
        torch.set_num_threads(before)
    assert timer.seen == [(3, 3)]


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_threads_is_a_one_line_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "blocks", "--threads", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--threads" in err and value in err
