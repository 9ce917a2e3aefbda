"""What every Triton launch in ``mstar_fast.kernels`` shares: the device guard and the interpreter-safe
loop bound."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from mstar_fast import _ext


def device_guard(device: torch.device) -> ContextManager[object]:
    """Make ``device`` current for a launch: Triton launches on the *current* CUDA device, so tensors on
    ``cuda:1`` while device 0 is current would otherwise be read by a kernel running on device 0. A no-op
    for CPU tensors (the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def static_bound(n: int) -> int:
    """A runtime loop bound ``n`` to pass as a ``*_STATIC: tl.constexpr`` next to the runtime argument:
    ``n`` itself under ``TRITON_INTERPRET`` and ``-1`` (use the runtime argument) when compiling.

    Why: Triton 3.6's interpreter hands a scalar kernel argument to Python's ``range()`` as a 1-element
    numpy array, whose ``__index__`` calls ``int(array)``, which numpy >= 2.4 refuses for arrays with
    ndim > 0 (``TypeError: only 0-dimensional arrays can be converted to Python scalars``). A constexpr
    reaches ``range()`` as a Python int. Compiled kernels keep the runtime bound (one compilation for every
    size); the interpreter compiles nothing, so a constexpr costs it nothing."""
    return int(n) if _ext.triton_interpret() else -1
