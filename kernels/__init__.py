"""Triton kernels, installed as ``mstar_fast.kernels``. Importing this package imports triton."""
