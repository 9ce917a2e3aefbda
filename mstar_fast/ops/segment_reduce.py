"""``segment_reduce`` on the flat ragged layout ``(values [L], offsets [R + 1])``, where segment r is
``values[offsets[r]:offsets[r+1]]`` (e.g. a response's PRM score = min over its steps)."""

from __future__ import annotations

import torch

from mstar_fast.ops import _checks, _registry

REDUCTIONS = ("min", "max", "mean", "sum", "prod", "last")


def segment_reduce(values: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduce each segment ``values[offsets[r]:offsets[r+1]]`` to one value.

    Args:
        values: ``[L]`` float32 / float64 / bfloat16 / float16.
        offsets: ``[R + 1]`` int64 (or int32): ``offsets[0] == 0``, non-decreasing, ``offsets[R] == L``.
        reduce: one of ``"min"``, ``"max"``, ``"mean"``, ``"sum"``, ``"prod"``, ``"last"``.

    Returns:
        ``[R]`` in values' dtype, accumulated in fp32 (fp64 for fp64). An empty segment gives NaN; min
        and max propagate NaN (a segment holding NaN gives NaN), as torch.min / torch.max do.

    Raises:
        ValueError: an unknown ``reduce``, non-floating values, bad offsets (not starting at 0,
            decreasing, or not ending at L), or tensors on different devices.
    """
    op = "segment_reduce"
    if not isinstance(reduce, str) or reduce not in REDUCTIONS:
        raise ValueError(f"{op}: reduce must be one of {', '.join(REDUCTIONS)}; got {reduce!r}")
    values = _checks.float_vector(op, "values", values)
    offsets = _checks.offsets(op, "offsets", offsets, values.shape[0], values.device)
    _, impl = _registry.implementation(op, values.device)
    return impl(values.contiguous(), offsets.contiguous(), reduce)
