"""The benchmarks behind the project's performance claims (``attnzoo bench {kernels,blocks,models,ptx}``),
and their pictures (``attnzoo bench plot``, :mod:`.plot`).

Each suite times forward and forward+backward with ``torch.utils.benchmark`` and the peak extra memory
of one call, and, with ``--json PATH``, writes JSON with the device, library versions and command line (the
committed reports are ``benchmarks/*.json``): timed tests would be flaky, so the numbers are recorded instead.
:mod:`.record` holds what the suites share.
"""
