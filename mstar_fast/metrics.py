"""Dynamics metrics of self-evolving training on the flat layout: per-sample values ``[L]`` of all
prompts' samples, back to back, and ``group_offsets [G + 1]`` (prompt g owns samples
``group_offsets[g]:group_offsets[g+1]``; 0, non-decreasing, ending at L), as the rollout engine emits them.

- ``pass_at_k``: unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code"): per prompt with n samples, c correct, ``1 - C(n - c, k) / C(n, k)``; averaged over prompts.
- ``reward_pass_at_k``: M-STaR's Reward-Pass@k: share of prompts where a correct sample is among the k
  highest-scored of **all** the prompt's samples (no answer filter before ranking).
- ``majority_vote`` (optionally weighted by response scores), ``majority_vote_accuracy``,
  ``greedy_accuracy``.

Inputs may be tensors, numpy arrays or lists; results are Python floats (or per-group tensors with
``reduction="none"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from mstar_fast import ops
from mstar_fast.ops import _checks

Offsets = torch.Tensor | Sequence[int]


def _offsets(op: str, group_offsets: Offsets, length: int) -> torch.Tensor:
    t = group_offsets if isinstance(group_offsets, torch.Tensor) else torch.as_tensor(group_offsets, dtype=torch.int64)
    return _checks.offsets(op, "group_offsets", t.cpu(), length, torch.device("cpu"))


def _bools(op: str, name: str, x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D [L], got shape {tuple(t.shape)}")
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise ValueError(f"{op}: {name} holds NaN; mark unknown correctness as False")
    return t.cpu().to(torch.bool)


def _reduce(values: torch.Tensor, reduction: str, op: str) -> float | torch.Tensor:
    if reduction == "none":
        return values
    if reduction != "mean":
        raise ValueError(f"{op}: reduction must be 'mean' or 'none', got {reduction!r}")
    return float(values.mean()) if values.numel() else float("nan")


def pass_at_k(correct: Any, group_offsets: Offsets, k: int, reduction: str = "mean") -> float | torch.Tensor:
    """Unbiased Pass@k over prompts.

    Args:
        correct: ``[L]`` bools, one per sample.
        group_offsets: ``[G + 1]`` sample offsets of the prompts.
        k: 1 <= k <= n for every prompt (n = its sample count).
        reduction: ``"mean"`` (a float; NaN when G == 0) or ``"none"`` (float64 ``[G]``).

    Per prompt: ``1 - C(n - c, k) / C(n, k)``, the probability that k samples drawn without replacement
    from the n include a correct one; computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``. With
    k = n it is 1 when any sample is correct (the paper's Pass@K).

    Raises:
        ValueError: a prompt with fewer than k samples, k < 1, or bad offsets.
    """
    op = "pass_at_k"
    c_all = _bools(op, "correct", correct)
    offs = _offsets(op, group_offsets, c_all.shape[0])
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{op}: k must be an int >= 1, got {k!r}")
    n = (offs[1:] - offs[:-1]).tolist()
    c = ops.segment_reduce(c_all.double(), offs, "sum").nan_to_num(0.0).long().tolist()
    out = []
    for g, (n_g, c_g) in enumerate(zip(n, c)):
        if n_g < k:
            raise ValueError(f"{op}: prompt {g} has {n_g} samples, fewer than k = {k}; the estimator needs n >= k")
        if n_g - c_g < k:
            out.append(1.0)
        else:
            out.append(1.0 - math.prod(1.0 - k / i for i in range(n_g - c_g + 1, n_g + 1)))
    return _reduce(torch.tensor(out, dtype=torch.float64), reduction, op)


def reward_pass_at_k(
    scores: Any, correct: Any, group_offsets: Offsets, k: int = 2, reduction: str = "mean"
) -> float | torch.Tensor:
    """Reward-Pass@k (M-STaR): share of prompts where one of the k highest-scored samples is correct.

    Args:
        scores: ``[L]`` response scores (PRM: min over steps). Ranked over **all** samples of a prompt,
            correct or not; NaN ranks lowest; ties go to the earlier sample.
        correct: ``[L]`` bools.
        group_offsets: ``[G + 1]``.
        k: samples kept per prompt (the paper: 2). A prompt with fewer than k samples keeps them all; an
            empty prompt counts as a miss.
        reduction: ``"mean"`` (float) or ``"none"`` (float64 ``[G]`` of 0 / 1).
    """
    op = "reward_pass_at_k"
    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(scores, dtype=torch.float64)
    s = s.cpu()
    if not s.is_floating_point():
        s = s.double()
    c = _bools(op, "correct", correct)
    if s.dim() != 1 or s.shape != c.shape:
        raise ValueError(f"{op}: scores {tuple(s.shape)} and correct {tuple(c.shape)} must both be [L]")
    offs = _offsets(op, group_offsets, s.shape[0])
    top = ops.group_topk(s, offs, k)
    hit = ops.segment_reduce((top & c).double(), offs, "max").nan_to_num(0.0)
    return _reduce(hit, reduction, op)


def _vote_key(answer: str) -> str:
    return answer.strip()


def majority_vote(
    answers: Sequence[str | None],
    group_offsets: Offsets,
    weights: Any = None,
    key: Callable[[str], Hashable] = _vote_key,
) -> list[str | None]:
    """The winning answer of each prompt.

    Args:
        answers: ``[L]`` extracted answers; None (no answer) never votes.
        group_offsets: ``[G + 1]``.
        weights: None (one vote each) or ``[L]`` floats, e.g. response scores for a PRM-weighted vote;
            a NaN weight counts as 0.
        key: maps an answer to what counts as the same answer (default: strip whitespace).

    Returns:
        ``G`` answers: per prompt, the answer with the largest total weight, in the text of its first
        occurrence; ties go to the answer that occurs first; None for a prompt with no answers.
    """
    op = "majority_vote"
    answers = list(answers)
    offs = _offsets(op, group_offsets, len(answers))
    if weights is None:
        w = [1.0] * len(answers)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).cpu().nan_to_num(0.0).tolist()
        if len(w) != len(answers):
            raise ValueError(f"{op}: weights has {len(w)} entries but answers has {len(answers)}")
    bounds = offs.tolist()
    winners: list[str | None] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        total: dict[Hashable, float] = {}
        first: dict[Hashable, str] = {}
        for i in range(a, b):
            if answers[i] is None:
                continue
            kk = key(answers[i])
            total[kk] = total.get(kk, 0.0) + w[i]
            first.setdefault(kk, answers[i])
        best = max(total, key=total.__getitem__) if total else None  # max keeps the first of equal totals
        winners.append(first[best] if best is not None else None)
    return winners


def majority_vote_accuracy(
    answers: Sequence[str | None],
    gold: Sequence[str | None],
    group_offsets: Offsets,
    weights: Any = None,
    match: Callable[[str, str], bool] | None = None,
) -> float:
    """Share of prompts whose (weighted) majority answer matches the gold answer ``gold[g]``.

    ``match(pred, gold)`` decides equality (default: equal after stripping whitespace; pass
    ``mstar_fast.rewards.answers_match`` for numeric / multiple-choice matching). A prompt with no answer
    counts as wrong.
    """
    winners = majority_vote(answers, group_offsets, weights)
    if len(gold) != len(winners):
        raise ValueError(f"majority_vote_accuracy: gold has {len(gold)} entries but there are {len(winners)} prompts")
    match = match or (lambda p, g: p.strip() == g.strip())
    hits = [w is not None and g is not None and bool(match(w, g)) for w, g in zip(winners, gold)]
    return sum(hits) / len(hits) if hits else float("nan")


def greedy_accuracy(correct: Any, group_offsets: Offsets | None = None) -> float:
    """Accuracy of greedy decoding: the mean of ``correct``, one greedy sample per prompt. With
    ``group_offsets``, prompts with several greedy samples count by their mean, each prompt once."""
    op = "greedy_accuracy"
    c = _bools(op, "correct", correct).double()
    if group_offsets is None:
        return float(c.mean()) if c.numel() else float("nan")
    offs = _offsets(op, group_offsets, c.shape[0])
    per = ops.segment_reduce(c, offs, "mean")
    if bool(torch.isnan(per).any()):
        raise ValueError(f"{op}: prompt {int(torch.isnan(per).nonzero()[0, 0])} has no greedy sample")
    return float(per.mean()) if per.numel() else float("nan")
