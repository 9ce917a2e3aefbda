"""Lazy, cached loading of the optional pieces: the compiled extension ``mstar_fast._C`` and Triton.

Each loader runs once, remembers why it failed, and logs that reason once; nothing here runs at import.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

logger = logging.getLogger("mstar_fast")


@functools.lru_cache(maxsize=None)
def load_extension() -> tuple[object | None, str]:
    """Import ``mstar_fast._C`` (which registers ``torch.ops.mstar_fast.*``). Returns (module, reason)."""
    import torch  # noqa: F401  the extension links against the torch already in the process

    try:
        mod = importlib.import_module("mstar_fast._C")
    except ImportError as exc:  # not built, or built against another torch
        reason = (
            f"compiled extension mstar_fast._C is not available ({exc}); "
            "build it with `pip install --no-build-isolation -e .`"
        )
        logger.warning("mstar_fast: %s; using the other backends", reason)
        return None, reason
    from mstar_fast.ops import _fake  # shape functions, so torch.compile can trace the compiled ops

    _fake.register()
    return mod, ""


def extension_has_cuda() -> bool:
    mod, _ = load_extension()
    return bool(mod is not None and getattr(mod, "with_cuda", 0))


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def load_triton() -> tuple[object | None, str]:
    """Import Triton and the package's Triton kernels. Returns (mstar_fast.kernels module, reason)."""
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        reason = f"triton is not installed ({exc}); `pip install triton` for the Triton backend"
        logger.info("mstar_fast: %s", reason)
        return None, reason
    try:
        mod = importlib.import_module("mstar_fast.kernels")
    except ImportError as exc:
        reason = f"mstar_fast.kernels failed to import ({exc})"
        logger.warning("mstar_fast: %s", reason)
        return None, reason
    return mod, ""
