"""Ops on the flat ragged layout ``(values [L], offsets [R + 1])``, where segment r is
``values[offsets[r]:offsets[r+1]]``: ``segment_reduce`` (e.g. a response's PRM score = min over its
steps) and ``group_topk`` (e.g. the top-2 responses per prompt)."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from mstar_fast import _ext
from mstar_fast.ops import _checks, _dispatch
from mstar_fast.ops.reference import group_topk_reference, segment_reduce_reference

REDUCTIONS = ("min", "max", "mean", "sum", "prod", "last")


def _compiled_segment_reduce(*args):
    _ext.load_extension()
    return torch.ops.mstar_fast.segment_reduce(*args)


def _triton_segment_reduce(*args):
    mod, _ = _ext.load_triton()
    return mod.segment_reduce(*args)


def _compiled_group_topk(*args):
    _ext.load_extension()
    return torch.ops.mstar_fast.group_topk(*args)


def _triton_group_topk(*args):
    mod, _ = _ext.load_triton()
    return mod.group_topk(*args)


_SEGMENT_REDUCE_IMPLS: dict[str, Callable] = {
    "cuda": _compiled_segment_reduce,
    "triton": _triton_segment_reduce,
    "cpp": _compiled_segment_reduce,
    "torch": segment_reduce_reference,
}
_GROUP_TOPK_IMPLS: dict[str, Callable] = {
    "cuda": _compiled_group_topk,
    "triton": _triton_group_topk,
    "cpp": _compiled_group_topk,
    "torch": group_topk_reference,
}


def _float_vector(op: str, name: str, x: object) -> torch.Tensor:
    x = _checks.tensor(op, name, x, 1)
    if x.dtype not in _checks.FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} must be float32, float64, bfloat16 or float16, got {x.dtype} (convert with .float())"
        )
    return x


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
    values = _float_vector(op, "values", values)
    offsets = _checks.offsets(op, "offsets", offsets, values.shape[0], values.device)
    _, impl = _dispatch.select(op, _SEGMENT_REDUCE_IMPLS, values.device)
    return impl(values.contiguous(), offsets.contiguous(), reduce)


def group_topk(
    scores: torch.Tensor,
    group_offsets: torch.Tensor,
    k: int,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mark, within each group ``scores[group_offsets[g]:group_offsets[g+1]]``, the k best valid rows.

    Args:
        scores: ``[L]`` float32 / float64 / bfloat16 / float16.
        group_offsets: ``[G + 1]`` int64 (or int32): starts at 0, non-decreasing, ends at L.
        k: int >= 0, rows to keep per group.
        valid: ``[L]`` bool, rows that may be kept (e.g. the correct responses), or None for all.

    Returns:
        bool ``[L]``: per group, ``min(k, #valid)`` rows are True. Rows rank by score, highest first; NaN
        ranks after every number (a NaN row is kept only when the group has fewer than k valid numbers);
        ties, and NaN against NaN, go to the lower index.

    Raises:
        ValueError: non-floating scores, ``k`` not a non-negative int, ``valid`` not a bool ``[L]``,
            bad offsets, or tensors on different devices.
    """
    op = "group_topk"
    scores = _float_vector(op, "scores", scores)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"{op}: k must be an int >= 0, got {k!r}")
    if valid is not None:
        valid = _checks.tensor(op, "valid", valid, 1)
        if valid.dtype != torch.bool:
            raise ValueError(f"{op}: valid must be a bool tensor, got {valid.dtype}")
        if valid.shape[0] != scores.shape[0]:
            raise ValueError(f"{op}: valid must have shape [{scores.shape[0]}] like scores, got {tuple(valid.shape)}")
        _checks.same_device(op, "scores", scores, "valid", valid)
        valid = valid.contiguous()
    group_offsets = _checks.offsets(op, "group_offsets", group_offsets, scores.shape[0], scores.device)
    _, impl = _dispatch.select(op, _GROUP_TOPK_IMPLS, scores.device)
    return impl(scores.contiguous(), group_offsets.contiguous(), int(k), valid)
