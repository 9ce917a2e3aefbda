"""Majority and weighted vote over the answers sampled for one prompt (pseudo-labels, docs/recipe.md "Prompt
variation"; majority-vote accuracy at evaluation).

Answers are grouped by *equivalence*, not string identity: ``"0.5"``, ``"1/2"`` and ``"\\frac{1}{2}"``
are one vote, and with ``choices`` ``"B"`` and the text of option B are one vote. Each group is
represented by its first member. ``None`` answers (no extractable answer) never vote. Ties go to the
group whose first member came first, so the result is deterministic.

For the batched, tensor-level metric over many prompts see ``mstar_fast.metrics.majority_vote``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Sequence

from mstar_fast.rewards.match import answers_match

__all__ = ["VoteGroup", "vote_groups", "majority_vote", "weighted_vote"]


@dataclass
class VoteGroup:
    """One equivalence class of answers: its representative (first member), total weight, member indices."""

    answer: str
    weight: float
    members: list[int] = field(default_factory=list)


def vote_groups(answers: Sequence[str | None], weights: Sequence[float] | None = None,
                choices: Sequence[str] | None = None) -> list[VoteGroup]:
    """Group equivalent answers and sum their weights; sorted by weight, descending, ties by first
    appearance. ``weights`` defaults to 1 per answer; NaN weights count as 0.

    Raises:
        ValueError: when ``weights`` has a different length than ``answers`` or holds a negative value.
    """
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"vote: {len(answers)} answers but {len(weights)} weights")
    groups: list[VoteGroup] = []
    cache: dict[str, int] = {}  # exact string -> group index, to skip repeated matching
    for i, ans in enumerate(answers):
        if ans is None or not str(ans).strip():
            continue
        ans = str(ans)
        w = 1.0 if weights is None else float(weights[i])
        if math.isnan(w):
            w = 0.0
        if w < 0:
            raise ValueError(f"vote: weight {i} is negative ({w}); weights must be >= 0 (e.g. PRM scores)")
        gi = cache.get(ans)
        if gi is None:
            for j, g in enumerate(groups):
                if answers_match(ans, g.answer, choices) or answers_match(g.answer, ans, choices):
                    gi = j
                    break
        if gi is None:
            groups.append(VoteGroup(ans, 0.0))
            gi = len(groups) - 1
        cache[ans] = gi
        groups[gi].weight += w
        groups[gi].members.append(i)
    order = sorted(range(len(groups)), key=lambda j: (-groups[j].weight, groups[j].members[0]))
    return [groups[j] for j in order]


def majority_vote(answers: Sequence[str | None], choices: Sequence[str] | None = None) -> str | None:
    """The most frequent answer (up to equivalence), or None when no answer was extracted."""
    groups = vote_groups(answers, None, choices)
    return groups[0].answer if groups else None


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float],
                  choices: Sequence[str] | None = None) -> str | None:
    """The answer with the largest summed weight (e.g. PRM scores), or None when no answer was
    extracted or every weight is zero."""
    groups = vote_groups(answers, weights, choices)
    if not groups or groups[0].weight <= 0:
        return None
    return groups[0].answer
