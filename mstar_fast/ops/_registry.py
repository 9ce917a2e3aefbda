"""The one table of ops and backends, and the one dispatch shim every op calls.

Each op is declared once below with :func:`register_op` (name, schema of its compiled op, backends,
torch reference); each backend once with :func:`register_backend` (when it can run, and how it finds an
op's implementation). Adding an op or a backend is one declaration; the op modules
(``mstar_fast/ops/<op>.py``) validate their inputs and call :func:`implementation`.

Backend choice per call, from the input's device and what this machine has:
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
import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from mstar_fast import _ext
from mstar_fast.ops import reference

logger = logging.getLogger("mstar_fast")


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this op on this input or machine."""


@dataclass(frozen=True)
class OpSpec:
    """One op.

    Attributes:
        name: the public name; also the stem of its files (``ops/<name>.py``, ``csrc/<name>_cpu.cpp``,
            ``kernels/<name>.py``, ``tests/ops/test_<name>.py``, ``benchmarks/bench_<name>.py``).
        schema: the signature of ``torch.ops.mstar_fast.<name>`` exactly as ``csrc/registration.cpp``
            declares it (checked when the compiled op is first used), or None for an op with no compiled
            kernel.
        backends: the backends that implement it.
        reference: its torch reference in ``ops/reference.py`` (``<name>_reference``).
        entry: per backend, a ``"module:attribute"`` replacing that backend's default entry point (for an
            op whose backends implement a piece of it, like the per-chunk kernel of
            ``fused_linear_cross_entropy``).
    """

    name: str
    schema: str | None
    backends: tuple[str, ...]
    reference: Callable
    entry: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    """One backend.

    Attributes:
        name: the name ``use_backend`` and ``MSTAR_FAST_BACKEND`` take.
        auto_on: device types on which ``auto`` mode tries it (in registration order).
        problem: why it cannot run on a device here, or "" when it can.
        load: the implementation of an op on this backend (called once per op, then cached).
    """

    name: str
    auto_on: tuple[str, ...]
    problem: Callable[[torch.device], str]
    load: Callable[[OpSpec], Callable]


OPS: dict[str, OpSpec] = {}
_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Declare a backend; the order of declaration is the order ``auto`` mode tries them."""
    if backend.name in _BACKENDS or backend.name == "auto":
        raise ValueError(f"backend {backend.name!r} is already registered (or reserved)")
    _BACKENDS[backend.name] = backend
    return backend


def register_op(spec: OpSpec) -> OpSpec:
    """Declare an op; every backend it names must be registered already."""
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is already registered")
    unknown = [b for b in spec.backends if b not in _BACKENDS]
    if unknown or any(b not in spec.backends for b in spec.entry):
        raise ValueError(f"op {spec.name!r}: unknown backend(s) {unknown or sorted(spec.entry)}")
    OPS[spec.name] = spec
    return spec


# --- backends ---------------------------------------------------------------------------------------------


def _resolve(path: str) -> Callable:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load_compiled(spec: OpSpec) -> Callable:
    mod, reason = _ext.load_extension()
    if mod is None:
        raise BackendUnavailableError(f"{spec.name}: {reason}")
    packet = getattr(torch.ops.mstar_fast, spec.name, None)
    if packet is None or spec.schema is None:
        raise BackendUnavailableError(f"{spec.name}: mstar_fast._C has no such op; rebuild the extension")
    # A stale build (csrc changed, extension not rebuilt) would otherwise fail deep inside the call.
    built = str(packet.default._schema)
    if built != f"mstar_fast::{spec.schema}":
        raise BackendUnavailableError(
            f"{spec.name}: mstar_fast._C was built from other sources (it registers {built!r}, the package "
            f"declares {spec.schema!r}); rebuild with `pip install --no-build-isolation -e .`"
        )
    return packet


def _load_triton(spec: OpSpec) -> Callable:
    # torch.compile runs Triton launchers as they are (a graph break): dynamo would otherwise trace into the
    # launcher, and under TRITON_INTERPRET into the interpreter's numpy code, which it cannot. (Applied here,
    # at first use, not as a decorator: torch.compiler.disable imports torch._dynamo, and with it triton.)
    return torch.compiler.disable(_resolve(spec.entry.get("triton", f"mstar_fast.kernels.{spec.name}:{spec.name}")))


def _load_torch(spec: OpSpec) -> Callable:
    return _resolve(spec.entry["torch"]) if "torch" in spec.entry else spec.reference


def _cpp_problem(device: torch.device) -> str:
    if device.type != "cpu":
        return f"the cpp backend runs on CPU tensors, got a {device.type} tensor"
    return _ext.load_extension()[1]


def _cuda_problem(device: torch.device) -> str:
    if device.type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got a {device.type} tensor"
    mod, reason = _ext.load_extension()
    if mod is None:
        return reason
    if not _ext.extension_has_cuda():
        return "mstar_fast._C was built without CUDA kernels (needs nvcc and a CUDA torch at build time)"
    return ""


def _triton_problem(device: torch.device) -> str:
    if device.type == "cpu" and not _ext.triton_interpret():
        return "the triton backend runs on CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"the triton backend does not run on {device.type} tensors"
    return _ext.load_triton()[1]


register_backend(Backend("cuda", auto_on=("cuda",), problem=_cuda_problem, load=_load_compiled))
register_backend(Backend("triton", auto_on=("cuda",), problem=_triton_problem, load=_load_triton))
register_backend(Backend("cpp", auto_on=("cpu",), problem=_cpp_problem, load=_load_compiled))
register_backend(Backend("torch", auto_on=("cpu", "cuda"), problem=lambda device: "", load=_load_torch))

BACKENDS: tuple[str, ...] = tuple(_BACKENDS)

# --- ops --------------------------------------------------------------------------------------------------

_ALL = ("cuda", "triton", "cpp", "torch")
register_op(OpSpec(
    "sample_from_logits",
    "sample_from_logits(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
    "Tensor seed, int offset, bool return_logprobs, bool check=True) -> (Tensor, Tensor)",
    _ALL,
    reference.sample_from_logits_reference,
))
register_op(OpSpec(
    "prm_step_scores",
    "prm_step_scores(Tensor hidden, Tensor positions, Tensor weight, Tensor? bias) -> Tensor",
    _ALL,
    reference.prm_step_scores_reference,
))
register_op(OpSpec(
    "segment_reduce",
    "segment_reduce(Tensor values, Tensor offsets, str reduce) -> Tensor",
    _ALL,
    reference.segment_reduce_reference,
))
register_op(OpSpec(
    "group_topk",
    "group_topk(Tensor scores, Tensor group_offsets, int k, Tensor? valid) -> Tensor",
    _ALL,
    reference.group_topk_reference,
))
# Its backends implement the per-chunk softmax + gradient; the chunk loop and matmuls are shared torch.
register_op(OpSpec(
    "fused_linear_cross_entropy",
    None,
    ("triton", "torch"),
    reference.fused_linear_cross_entropy_reference,
    entry={
        "triton": "mstar_fast.kernels.fused_linear_cross_entropy:cross_entropy_chunk",
        "torch": "mstar_fast.ops.fused_linear_cross_entropy:cross_entropy_chunk_torch",
    },
))

# --- choosing a backend -----------------------------------------------------------------------------------

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("mstar_fast_backend", default=None)
_logged: set[tuple[str, str]] = set()


def _check_name(name: str) -> str:
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"unknown backend {name!r}; choose one of {('auto',) + BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force ``name`` (``auto`` or one of :data:`BACKENDS`) for op calls inside the block.

    Raises:
        ValueError: an unknown backend name.
    """
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
    if backend not in _BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    return _BACKENDS[backend].problem(torch.device(device))


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Backends that can run here: for ``device`` if given, else for any device this machine has."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")]
    if device is None and torch.cuda.is_available():
        devices.insert(0, torch.device("cuda"))
    return [b for b in BACKENDS if any(not backend_problem(b, d) for d in devices)]


@functools.lru_cache(maxsize=None)
def _loaded(op: str, backend: str) -> Callable:
    return _BACKENDS[backend].load(OPS[op])


def implementation(op: str, device: torch.device) -> tuple[str, Callable]:
    """The implementation of ``op`` for inputs on ``device``: (backend name, callable).

    The callable takes the op's compiled-schema arguments (validated, expanded and contiguous, as the op
    module passes them).

    Raises:
        BackendUnavailableError: the forced backend does not implement ``op`` or cannot run here, or (in
            ``auto`` mode) no backend can.
    """
    spec = OPS[op]
    name = forced_backend()
    if name != "auto":
        if name not in spec.backends:
            raise BackendUnavailableError(f"{op}: no {name} implementation (have: {sorted(spec.backends)})")
        problem = backend_problem(name, device)
        if problem:
            raise BackendUnavailableError(f"{op}: backend {name!r} was forced but cannot run: {problem}")
        return name, _loaded(op, name)
    for cand in BACKENDS:
        if cand not in spec.backends or device.type not in _BACKENDS[cand].auto_on:
            continue
        problem = backend_problem(cand, device)
        if not problem:
            return cand, _loaded(op, cand)
        if (op, cand) not in _logged:
            _logged.add((op, cand))
            logger.info("mstar_fast: %s skips backend %s: %s", op, cand, problem)
    raise BackendUnavailableError(f"{op}: no backend can run on {device}")
