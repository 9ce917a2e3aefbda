"""Triton kernels, installed as ``mstar_fast.kernels``. Importing this package imports triton."""

from mstar_fast.kernels.group_topk import group_topk
from mstar_fast.kernels.prm_step_scores import prm_step_scores
from mstar_fast.kernels.segment_reduce import segment_reduce

__all__ = ["group_topk", "prm_step_scores", "segment_reduce"]
