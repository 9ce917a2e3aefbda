"""Triton kernels (``mstar_fast.kernels``), one module per op. Importing this package imports triton.
(``fused_linear_cross_entropy`` keeps its chunk kernel in its own module, imported on first use.)"""

from .group_topk import group_topk
from .prm_step_scores import prm_step_scores
from .sample_from_logits import sample_from_logits
from .segment_reduce import segment_reduce

__all__ = ["group_topk", "prm_step_scores", "sample_from_logits", "segment_reduce"]
