"""Triton kernels, installed as ``mstar_fast.kernels``. Importing this package imports triton."""
from .sample_from_logits import sample_from_logits
