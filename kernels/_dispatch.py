"""Backend dispatch for the functional attention ops.

Each op (``"na2d"``, ``"gather_attention"``) has implementations registered per backend. A call
resolves its backend in this order: the ``backend=`` argument when it is not ``"auto"``, then the
innermost :func:`use_backend` context, then the ``ATTNZOO_BACKEND`` environment variable, then
``"auto"``, which takes the first implementation in :data:`AUTO_ORDER` for the tensors' device that
is available and supports the arguments. A backend that is forced but cannot serve the call raises
:class:`BackendError` with the reason, never a silent fallback.

Adding a backend is local: write the function and call :func:`register` next to it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

BACKENDS = ("torch", "triton", "flex", "natten")
"""Every backend name the project knows; not all have implementations for every op."""

AUTO_ORDER = {
    "cuda": ("natten", "triton", "flex", "torch"),
    "cpu": ("torch",),
}
"""Preference of ``backend="auto"`` per device type, first that can serve the call wins.

On CUDA this is reasoned, not yet measured (README, "What auto picks"): NATTEN's fused CUTLASS kernels
first, which decline any call with NAT's bias; then the tiled-GEMM Triton kernels (bias fused, forward
and backward); then FlexAttention; the torch reference last. ``gather_attention`` has only ``triton``
and ``torch``. On the CPU the reference is the fastest (NATTEN and flex run FlexAttention's unfused
path there, without backward; Triton only interprets).
"""

ENV_VAR = "ATTNZOO_BACKEND"


class BackendError(RuntimeError):
    """A forced backend cannot run this call (not installed, not implemented, or unsupported arguments)."""


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``unavailable()`` returns why the backend cannot run in this environment (``None`` if it can);
    ``unsupported(**call)`` returns why it cannot serve these arguments (``None`` if it can).
    """

    fn: Callable
    unavailable: Callable[[], str | None]
    unsupported: Callable[..., str | None]


_REGISTRY: dict[str, dict[str, Implementation]] = {}
_FORCED: list[str] = []  # stack of use_backend() names; a list so torch.compile can guard on it


def _always_available() -> str | None:
    return None


def _supports_everything(**call) -> str | None:
    return None


def register(
    op: str,
    backend: str,
    fn: Callable,
    *,
    unavailable: Callable[[], str | None] = _always_available,
    unsupported: Callable[..., str | None] = _supports_everything,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _REGISTRY.setdefault(op, {})[backend] = Implementation(fn, unavailable, unsupported)


def _check_name(name: object, what: str) -> str:
    if name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(b) for b in ("auto",) + BACKENDS)
        raise ValueError(f"{what} must be one of {choices}; got {name!r}")
    return name  # type: ignore[return-value]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` for every op called inside the block (``"auto"`` restores automatic choice).

    >>> with use_backend("torch"):
    ...     out = na2d(q, k, v, kernel_size=7)  # doctest: +SKIP
    """
    _FORCED.append(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _FORCED.pop()


def requested_backend(backend: str) -> str:
    """The backend name in force for a call whose argument is ``backend``."""
    _check_name(backend, "backend")
    if backend != "auto":
        return backend
    if _FORCED:
        return _FORCED[-1]
    return _check_name(os.environ.get(ENV_VAR, "auto") or "auto", f"the {ENV_VAR} environment variable")


def available_backends(op: str) -> list[str]:
    """Backends with an implementation of ``op`` that can run in this environment."""
    impls = _REGISTRY.get(op, {})
    return [name for name, impl in impls.items() if impl.unavailable() is None]


def resolve(op: str, backend: str, device: torch.device, **call) -> Callable:
    """Pick the implementation of ``op`` for a call; ``call`` holds the op's arguments."""
    impls = _REGISTRY[op]
    name = requested_backend(backend)
    if name != "auto":
        impl = impls.get(name)
        if impl is None:
            have = ", ".join(sorted(impls))
            raise BackendError(
                f"backend {name!r} has no implementation of {op} in this version of attnzoo (implemented: {have})"
            )
        reason = impl.unavailable()
        if reason is not None:
            raise BackendError(f"backend {name!r} is not available for {op}: {reason}")
        reason = impl.unsupported(**call)
        if reason is not None:
            raise BackendError(f"backend {name!r} does not support this {op} call: {reason}")
        return impl.fn

    reasons = []
    for candidate in AUTO_ORDER.get(device.type, ("torch",)):
        impl = impls.get(candidate)
        if impl is None:
            continue
        reason = impl.unavailable() or impl.unsupported(**call)
        if reason is None:
            return impl.fn
        reasons.append(f"{candidate}: {reason}")
    raise BackendError(f"no backend can run this {op} call on {device.type}: " + "; ".join(reasons))
