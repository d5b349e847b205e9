"""Test-session setup shared by every test folder.

Without a CUDA device, Triton kernels run on CPU tensors through Triton's interpreter. Triton reads
``TRITON_INTERPRET`` when a kernel is defined (at import of ``attnzoo.kernels``), so it is set here,
before any test module imports attnzoo. ``TRITON_INTERPRET=0`` in the environment opts out.
"""

import functools
import http.server
import os
import threading

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
