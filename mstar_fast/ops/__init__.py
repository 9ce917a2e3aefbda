"""Public ops on plain tensors. Each picks a backend per call (see ``_dispatch``):
``cuda`` | ``triton`` | ``cpp`` | ``torch``, forced with ``use_backend`` or ``MSTAR_FAST_BACKEND``."""

from mstar_fast.ops._dispatch import BACKENDS, BackendUnavailableError, available_backends, use_backend
from mstar_fast.ops.fused_linear_cross_entropy import fused_linear_cross_entropy
from mstar_fast.ops.prm import prm_step_scores
from mstar_fast.ops.sampling import sample_from_logits
from mstar_fast.ops.segments import REDUCTIONS, group_topk, segment_reduce

__all__ = [
    "BACKENDS",
    "REDUCTIONS",
    "BackendUnavailableError",
    "available_backends",
    "fused_linear_cross_entropy",
    "group_topk",
    "prm_step_scores",
    "sample_from_logits",
    "segment_reduce",
    "use_backend",
]
