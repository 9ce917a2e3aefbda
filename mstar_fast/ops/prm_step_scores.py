"""``prm_step_scores``: P(good step) at a PRM's step-tag positions without any full-vocabulary logits."""

from __future__ import annotations

import torch

from mstar_fast.ops import _checks, _registry

_OP = "prm_step_scores"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def prm_step_scores(
    hidden: torch.Tensor,
    positions: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score step tags: gather ``hidden[positions]``, project on 1 or 2 head rows, squash to P(good step).

    Args:
        hidden: ``[N, H]`` float32 / bfloat16 / float16 (float64 is computed in float32): rows of a PRM's
            final hidden states (after the last norm), packed; rows may be strided, columns not.
        positions: ``[S]`` int64 (or int32) indices into the rows of ``hidden``: the step-tag positions.
        weight: ``[2, H]``, the LM-head rows of the good and bad reward tokens in that order, or ``[1, H]``,
            a value head; same dtype and device as ``hidden``.
        bias: ``[2]`` / ``[1]`` matching ``weight``, or None.

    Returns:
        float32 ``[S]``: ``softmax(logits)[:, 0]`` (= ``sigmoid(l_good - l_bad)``) for two rows,
        ``sigmoid(l)`` for one, with ``logits = hidden[positions] @ weight.T + bias`` accumulated in fp32.
        No logit of any other vocabulary row is ever computed: the cost is S x H reads, not N x V x H.

    Raises:
        ValueError: a shape, dtype or device mismatch, weight with other than 1 or 2 rows, or a position
            outside ``[0, N)``.
    """
    op = _OP
    hidden = _checks.tensor(op, "hidden", hidden, 2)
    positions = _checks.tensor(op, "positions", positions, 1)
    weight = _checks.tensor(op, "weight", weight, 2)
    if hidden.dtype not in _DTYPES + (torch.float64,):
        raise ValueError(f"{op}: hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.shape[0] not in (1, 2):
        raise ValueError(
            f"{op}: weight must have 2 rows (the good and bad reward tokens) or 1 row (a value head), got "
            f"{weight.shape[0]} rows; pass lm_head.weight[[good_id, bad_id]], never the whole LM head"
        )
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{op}: weight has {weight.shape[1]} columns but hidden has H = {hidden.shape[1]}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{op}: weight dtype {weight.dtype} does not match hidden dtype {hidden.dtype}")
    _checks.same_device(op, "hidden", hidden, "weight", weight)
    _checks.same_device(op, "hidden", hidden, "positions", positions)
    positions = _checks.index_tensor(op, "positions", positions)
    if bias is not None:
        bias = _checks.tensor(op, "bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must have shape [{weight.shape[0]}] to match weight, got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise ValueError(f"{op}: bias dtype {bias.dtype} does not match hidden dtype {hidden.dtype}")
        _checks.same_device(op, "hidden", hidden, "bias", bias)
    N = hidden.shape[0]
    if positions.numel() > 0:
        bad = (positions < 0) | (positions >= N)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{op}: positions must index rows of hidden in [0, {N}); positions[{i}] = {int(positions[i])} "
                f"({int(bad.sum())} out of range in total)"
            )
    if hidden.dtype == torch.float64:
        hidden, weight = hidden.float(), weight.float()
        bias = bias.float() if bias is not None else None
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    _, impl = _registry.implementation(op, hidden.device)
    return impl(hidden, positions, weight, bias)
