"""Public ops on plain tensors. Each picks a backend per call (see ``_dispatch``):
``cuda`` | ``triton`` | ``cpp`` | ``torch``, forced with ``use_backend`` or ``MSTAR_FAST_BACKEND``."""

from mstar_fast.ops._dispatch import BACKENDS, BackendUnavailableError, available_backends, use_backend
from mstar_fast.ops.fused_linear_cross_entropy import fused_linear_cross_entropy
from mstar_fast.ops.sampling import sample_from_logits

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "available_backends",
    "fused_linear_cross_entropy",
    "sample_from_logits",
    "use_backend",
]
