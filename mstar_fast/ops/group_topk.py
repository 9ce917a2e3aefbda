"""``group_topk`` on the flat ragged layout ``(scores [L], group_offsets [G + 1])``: per group
``scores[group_offsets[g]:group_offsets[g+1]]``, the k best valid rows (e.g. the top-2 responses per prompt)."""

from __future__ import annotations

import numbers

import torch

from mstar_fast.ops import _checks, _registry


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
    scores = _checks.float_vector(op, "scores", scores)
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
    _, impl = _registry.implementation(op, scores.device)
    return impl(scores.contiguous(), group_offsets.contiguous(), int(k), valid)
