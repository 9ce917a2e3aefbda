"""mstar_fast: the M-STaR multimodal self-evolving training recipe, with fused kernels for its hot paths.

Importing the package has no side effects: the compiled extension and Triton load lazily on the first
op call (see :mod:`mstar_fast.ops`), and ``mstar_fast.ops.available_backends()`` says what is present.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
