"""Backend choice for every op.

Per call, an op picks from the input's device and what this machine has:
CUDA tensors: ``cuda`` (compiled kernels) -> ``triton`` -> ``torch``;
CPU tensors: ``cpp`` (compiled kernels) -> ``torch`` (``triton`` on CPU only when forced, under
``TRITON_INTERPRET=1``, since the interpreter is for testing, not speed).
``use_backend(name)`` (a context manager) or the ``MSTAR_FAST_BACKEND`` environment variable forces one
backend; a forced backend that cannot run raises ``BackendUnavailableError`` saying why. In ``auto``
mode a missing backend is skipped with one log line per (op, backend).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Callable, Iterator

import torch

from mstar_fast import _ext

logger = logging.getLogger("mstar_fast")

BACKENDS = ("cuda", "triton", "cpp", "torch")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("mstar_fast_backend", default=None)
_logged: set[tuple[str, str]] = set()


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this op on this input or machine."""


def _check_name(name: str) -> str:
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` (one of auto, cuda, triton, cpp, torch) for op calls inside the block."""
    token = _forced.set(_check_name(name))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str:
    """The backend forced by ``use_backend`` or ``MSTAR_FAST_BACKEND``; ``"auto"`` when none is."""
    name = _forced.get()
    if name is None:
        env = os.environ.get("MSTAR_FAST_BACKEND", "auto").strip().lower() or "auto"
        if env not in BACKENDS and env != "auto":
            raise ValueError(f"MSTAR_FAST_BACKEND={env!r} is not one of {('auto',) + BACKENDS}")
        name = env
    return name


def backend_problem(backend: str, device: torch.device) -> str:
    """Why ``backend`` cannot run on ``device`` here, or "" when it can."""
    if backend == "torch":
        return ""
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a {device.type} tensor"
        return _ext.load_extension()[1]
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
        mod, reason = _ext.load_extension()
        if mod is None:
            return reason
        if not _ext.extension_has_cuda():
            return "mstar_fast._C was built without CUDA kernels (needs nvcc and a CUDA torch at build time)"
        return ""
    if backend == "triton":
        if device.type == "cpu" and not _ext.triton_interpret():
            return "the triton backend runs on CPU tensors only under TRITON_INTERPRET=1"
        if device.type not in ("cpu", "cuda"):
            return f"the triton backend does not run on {device.type} tensors"
        return _ext.load_triton()[1]
    raise ValueError(f"unknown backend {backend!r}")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run here: for ``device`` if given, else for any device this machine has."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")]
    if device is None and torch.cuda.is_available():
        devices.insert(0, torch.device("cuda"))
    return [b for b in BACKENDS if any(not backend_problem(b, d) for d in devices)]


def _auto_order(device: torch.device) -> tuple[str, ...]:
    return ("cuda", "triton", "torch") if device.type == "cuda" else ("cpp", "torch")


def select(op: str, impls: dict[str, Callable], device: torch.device) -> tuple[str, Callable]:
    """Pick the implementation of ``op`` for a tensor on ``device``: (backend name, callable)."""
    name = forced_backend()
    if name != "auto":
        if name not in impls:
            raise BackendUnavailableError(f"{op}: no {name} implementation (have: {sorted(impls)})")
        problem = backend_problem(name, device)
        if problem:
            raise BackendUnavailableError(f"{op}: backend {name!r} was forced but cannot run: {problem}")
        return name, impls[name]
    for cand in _auto_order(device):
        if cand not in impls:
            continue
        problem = backend_problem(cand, device)
        if not problem:
            return cand, impls[cand]
        if (op, cand) not in _logged:
            _logged.add((op, cand))
            logger.info("mstar_fast: %s skips backend %s: %s", op, cand, problem)
    raise BackendUnavailableError(f"{op}: no backend can run on {device}")
