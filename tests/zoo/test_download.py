"""Weights downloads are all-or-nothing and bounded: against a 127.0.0.1 server that truncates, stalls, answers 500,
serves an error page, and serves two URLs with one file name."""

import collections
import fcntl
import hashlib
import http.server
import io
import json
import threading
import time

import pytest
import torch
from safetensors.torch import save as save_safetensors

from attnzoo import weights

TIMEOUT_S = 0.3


def weights_bytes(value: float = 0.0) -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(1000.0) + value}, buffer)
    return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers each path with the next of its scripted replies (the last one repeats).

    A reply is ("ok", body), ("truncate", body): the full Content-Length, half the body, then the connection
    closes; ("no-length", body): no Content-Length, the body, then close; ("stall-headers",): nothing at all;
    ("stall-body", body): the headers and a few bytes, then nothing; or an int: that HTTP status.
    """

    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            script = server.routes.get(self.path, [404])
            reply = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(reply, int):
            self.send_error(reply)
            return
        kind, *body = reply
        if kind == "stall-headers":
            server.release.wait(5)
            return
        (body,) = body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "truncate":
            self.wfile.write(body[: len(body) // 2])
        elif kind == "stall-body":
            self.wfile.write(body[:10])
            self.wfile.flush()
            server.release.wait(5)
        else:
            self.wfile.write(body)


@pytest.fixture
def flaky():
    """A threaded server on 127.0.0.1 whose replies a test scripts in ``server.routes``; yields (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.routes, server.hits = {}, collections.Counter()
    server.lock, server.release = threading.Lock(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    """Short timeouts, one retry and a 10 ms backoff, through the settings a user has (the environment)."""
    monkeypatch.setenv(weights.TIMEOUT_ENV, str(TIMEOUT_S))
    monkeypatch.setenv(weights.RETRIES_ENV, "1")
    monkeypatch.setattr(weights, "BACKOFF_S", 0.01)


def records(cache):
    path = cache / weights.RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def leftovers(cache):
    """Files in the cache folder other than the record and its lock."""
    return sorted(p.name for p in cache.iterdir() if p.name not in (weights.RECORD_NAME, weights.LOCK_NAME))


def test_a_truncated_download_is_retried_until_whole(flaky, tmp_path):
    server, base = flaky
    body = weights_bytes()
    server.routes["/w.pth"] = [("truncate", body), ("ok", body)]
    path = weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False)
    assert path.read_bytes() == body and server.hits["/w.pth"] == 2
    assert records(tmp_path) == {f"{base}/w.pth": hashlib.sha256(body).hexdigest()}


def test_a_download_that_stays_truncated_is_refused_and_the_whole_file_accepted_later(flaky, tmp_path):
    """The issue's case: a truncated first download was recorded as trusted and the correct file refused forever."""
    server, base = flaky
    body = weights_bytes()
    server.routes["/w.pth"] = [("truncate", body)]
    with pytest.raises(weights.WeightsDownloadError, match=r"after 2 attempts .* sent \d+ of the \d+ bytes"):
        weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == [] and records(tmp_path) == {}
    server.routes["/w.pth"] = [("ok", body)]
    assert weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False).read_bytes() == body


@pytest.mark.parametrize("stall", ["stall-headers", "stall-body"])
def test_a_stalled_server_times_out_and_leaves_no_partial_file(flaky, tmp_path, stall):
    server, base = flaky
    server.routes["/w.pth"] = [(stall, weights_bytes())] if stall == "stall-body" else [(stall,)]
    start = time.monotonic()
    with pytest.raises(weights.WeightsDownloadError, match=rf"after 2 attempts .*no answer within {TIMEOUT_S} s"):
        weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False)
    assert time.monotonic() - start < 2.0
    assert server.hits["/w.pth"] == 2 and leftovers(tmp_path) == [] and records(tmp_path) == {}


def test_a_server_error_is_retried_with_backoff_and_a_missing_file_is_not(flaky, tmp_path, monkeypatch):
    server, base = flaky
    body = weights_bytes()
    server.routes["/w.pth"] = [500, 503, ("ok", body)]
    monkeypatch.setenv(weights.RETRIES_ENV, "2")
    waits = []
    monkeypatch.setattr(weights.time, "sleep", waits.append)
    assert weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False).read_bytes() == body
    assert server.hits["/w.pth"] == 3 and waits == [0.01, 0.02]  # a doubling wait
    server.routes["/down.pth"] = [500]
    with pytest.raises(weights.WeightsDownloadError, match="after 3 attempts .*: HTTP 500"):
        weights.verified_download(f"{base}/down.pth", cache_dir=tmp_path, progress=False)
    with pytest.raises(weights.WeightsDownloadError, match="missing.pth failed: HTTP 404"):
        weights.verified_download(f"{base}/missing.pth", cache_dir=tmp_path, progress=False)
    assert server.hits["/down.pth"] == 3 and server.hits["/missing.pth"] == 1
    assert leftovers(tmp_path) == [weights.cache_name(f"{base}/w.pth")]


def test_two_urls_with_one_file_name_are_two_cache_files(flaky, tmp_path):
    server, base = flaky
    first, second = weights_bytes(0.0), weights_bytes(1.0)
    server.routes["/a/w.pth"] = [("ok", first)]
    server.routes["/b/w.pth?v=2"] = [("ok", second)]
    a = weights.verified_download(f"{base}/a/w.pth", cache_dir=tmp_path, progress=False)
    b = weights.verified_download(f"{base}/b/w.pth?v=2", cache_dir=tmp_path, progress=False)
    assert a != b and a.read_bytes() == first and b.read_bytes() == second
    assert server.hits["/a/w.pth"] == server.hits["/b/w.pth?v=2"] == 1
    assert a.name.endswith("-w.pth") and b.name.endswith("-w.pth")
    assert records(tmp_path) == {
        f"{base}/a/w.pth": hashlib.sha256(first).hexdigest(),
        f"{base}/b/w.pth?v=2": hashlib.sha256(second).hexdigest(),
    }


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("w.pth", ("ok", b"<html>the mirror is down</html>")),
        ("w.safetensors", ("no-length", save_safetensors({"w": torch.arange(1000.0)})[:3000])),  # no length to check
    ],
)
def test_a_file_that_does_not_load_as_weights_is_neither_cached_nor_recorded(flaky, tmp_path, name, bad):
    server, base = flaky
    good = save_safetensors({"w": torch.arange(1000.0)}) if name.endswith(".safetensors") else weights_bytes()
    server.routes[f"/{name}"] = [bad, ("ok", good)]
    with pytest.raises(weights.WeightsLoadError, match=rf"{name} does not load as weights through .*nothing was"):
        weights.verified_download(f"{base}/{name}", cache_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == [] and records(tmp_path) == {}
    assert weights.verified_download(f"{base}/{name}", cache_dir=tmp_path, progress=False).read_bytes() == good
    assert records(tmp_path) == {f"{base}/{name}": hashlib.sha256(good).hexdigest()}


def test_the_record_file_is_read_and_written_under_a_lock(flaky, tmp_path):
    """While another process holds the lock, a download waits to record; threads never lose each other's records."""
    server, base = flaky
    for i in range(6):
        server.routes[f"/{i}/w.pth"] = [("ok", weights_bytes(i))]
    with open(tmp_path / weights.LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = threading.Thread(
            target=weights.verified_download, args=(f"{base}/0/w.pth", tmp_path), kwargs=dict(progress=False)
        )
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and records(tmp_path) == {}
    waiting.join(2)
    assert not waiting.is_alive() and list(records(tmp_path)) == [f"{base}/0/w.pth"]
    threads = [
        threading.Thread(
            target=weights.verified_download, args=(f"{base}/{i}/w.pth", tmp_path), kwargs=dict(progress=False)
        )
        for i in range(1, 6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert sorted(records(tmp_path)) == sorted(f"{base}/{i}/w.pth" for i in range(6))


def test_download_settings_name_a_bad_value(monkeypatch):
    monkeypatch.setenv(weights.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{weights.TIMEOUT_ENV}: expected a number of seconds, got 'soon'"):
        weights.download_settings()
    monkeypatch.delenv(weights.TIMEOUT_ENV)
    monkeypatch.delenv(weights.RETRIES_ENV)
    assert weights.download_settings() == (weights.DEFAULT_TIMEOUT_S, weights.DEFAULT_RETRIES)
    with pytest.raises(ValueError, match="retries: must be >= 0, got -1"):
        weights.download_settings(retries=-1)


def test_a_changed_server_file_is_refused_until_its_record_is_removed(flaky, tmp_path):
    """A recorded URL whose file changed on the server: refused, nothing cached, and the message names the way out."""
    server, base = flaky
    server.routes["/w.pth"] = [("ok", weights_bytes(0.0)), ("ok", weights_bytes(1.0))]
    weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False).unlink()
    with pytest.raises(weights.WeightsHashError, match=r"recorded at its first download; .*remove its entry from"):
        weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False)
    assert leftovers(tmp_path) == []
    (tmp_path / weights.RECORD_NAME).write_text("{}")
    assert weights.verified_download(f"{base}/w.pth", cache_dir=tmp_path, progress=False).read_bytes() == weights_bytes(
        1.0
    )
