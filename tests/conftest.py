"""Test-session setup shared by every test folder.

Without a CUDA device, Triton kernels run on CPU tensors through Triton's interpreter. Triton reads
``TRITON_INTERPRET`` when a kernel is defined (at import of ``attnzoo.kernels``), so it is set here,
before any test module imports attnzoo. ``TRITON_INTERPRET=0`` in the environment opts out.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
