"""A Triton kernel launch as data, so the same launch can run or be compiled for another GPU (``attnzoo bench ptx``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Launch:
    """One kernel launch: the ``triton.jit`` function, its grid, positional arguments and keyword meta-parameters."""

    name: str
    kernel: object
    grid: tuple[int, ...]
    args: tuple
    meta: dict = field(default_factory=dict)

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)
