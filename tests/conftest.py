"""Test-session setup shared by every test folder.

Without a CUDA device, Triton kernels run on CPU tensors through Triton's interpreter. Triton reads
``TRITON_INTERPRET`` when a kernel is defined (at import of ``attnzoo.kernels``), so it is set here,
before any test module imports attnzoo. ``TRITON_INTERPRET=0`` in the environment opts out.
"""

import atexit
import functools
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, each worker gets its share of the cores for torch's intra-op threads, and so do the
    processes its tests start (``OMP_NUM_THREADS``): two workers with two threads each on two cores would fight."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        torch.set_num_threads(threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(threads)


def _private_caches() -> None:
    """Every test process gets its own download and data caches (attnzoo's, torch.hub's, the Hugging Face Hub's),
    so parallel workers never race on one file and the user's own caches are never read or written."""
    root = Path(tempfile.mkdtemp(prefix=f"attnzoo-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name, folder in (("ATTNZOO_CACHE", "attnzoo"), ("TORCH_HOME", "torch"), ("HF_HOME", "huggingface")):
        os.environ[name] = str(root / folder)


_share_cores_between_workers()
_private_caches()


@pytest.fixture
def hub_dir(tmp_path):
    """A fresh torch.hub folder (where URL weights are cached and their hashes recorded), restored afterwards."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture
def server(tmp_path):
    """A throw-away HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (that folder, its base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
