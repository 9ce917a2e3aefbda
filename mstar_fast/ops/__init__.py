"""Public ops on plain tensors. Each is declared once in ``_registry`` (schema, backends, torch reference)
and picks a backend per call: ``cuda`` | ``triton`` | ``cpp`` | ``torch``, forced with ``use_backend`` or
``MSTAR_FAST_BACKEND``. One module per op, named after it."""

from mstar_fast.ops._registry import BACKENDS, BackendUnavailableError, available_backends, use_backend
from mstar_fast.ops.fused_linear_cross_entropy import fused_linear_cross_entropy
from mstar_fast.ops.group_topk import group_topk
from mstar_fast.ops.prm_step_scores import prm_step_scores
from mstar_fast.ops.sample_from_logits import sample_from_logits
from mstar_fast.ops.segment_reduce import REDUCTIONS, segment_reduce

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
