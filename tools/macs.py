"""Multiply-accumulates of a forward pass: :func:`attnzoo.macs.count_macs`, re-exported for the tools floor.

The counter lives on the model floor (``attnzoo.macs``) since the arena family (:mod:`attnzoo.arena`) sizes its
models with it; ``attnzoo info``, ``attnzoo export`` and the tests keep importing it from here.
"""

from attnzoo.macs import count_macs

__all__ = ["count_macs"]
