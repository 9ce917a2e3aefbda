"""Unlabeled prompts with (PRM-)weighted-vote pseudo-labels (docs/recipe.md "Prompt variation", Table 3).

The paper found they did not help, so the final recipe (and the default config) leaves them off
(``pseudo.enabled: false``). When on, from iteration ``pseudo.start_iteration`` each iteration also samples
K responses for ``ratio x chunk`` unlabeled prompts; each prompt's pseudo-label is the winner of a vote over
its responses' extracted answers, weighted by their PRM scores (or unweighted), kept only when the winner
holds at least ``min_agreement`` of the vote weight. Responses are then graded against the pseudo-label
and go through the same de-duplication and selection as labeled ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

from mstar_fast.config import PseudoConfig
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.protocols import Rollout, Scorer
from mstar_fast.recipe.iteration import iteration_seed, sample_path
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.recipe.select import group_by_prompt
from mstar_fast.rewards import extract_answer, grade_samples, vote_groups
from mstar_fast.train.distributed import World

__all__ = ["pseudo_label", "pseudo_labeled_samples"]


def pseudo_label(samples: Sequence[Sample], prompt: Prompt, weighted: bool = True,
                 min_agreement: float = 0.5) -> str | None:
    """The vote winner among ``samples``' extracted answers (weights: PRM scores when ``weighted``,
    NaN/None as 0), or None when no answer holds ``min_agreement`` of the total weight."""
    answers = [s.extracted if s.extracted is not None else extract_answer(s.text, choices=prompt.choices)
               for s in samples]
    if weighted:
        weights = [0.0 if s.score is None or math.isnan(s.score) else float(s.score) for s in samples]
    else:
        weights = [1.0] * len(samples)
    groups = vote_groups(answers, weights, choices=prompt.choices)
    total = sum(g.weight for g in groups)
    if not groups or total <= 0:
        return None
    best = max(groups, key=lambda g: g.weight)
    return best.answer if best.weight / total >= min_agreement else None


def pseudo_labeled_samples(iteration: int, unlabeled: Sequence[Prompt], ps: PseudoConfig, *, rollout: Rollout,
                           run_dir: str | os.PathLike, temperature: float, k: int, max_new_tokens: int, seed: int,
                           scorer: Scorer | None, progress: bool = False,
                           world: World | None = None) -> tuple[list[Sample], list[Prompt]]:
    """Sample ``unlabeled`` prompts (``samples/iter-NNN-unlabeled.jsonl``), pseudo-label them by vote
    (``ps.weighted``, ``ps.min_agreement``), and grade their samples against the pseudo-labels.

    Returns:
        ``(graded samples of the prompts that got a label, those prompts with answer = pseudo-label and
        meta["pseudo_label"] = True)``.
    """
    weighted, min_agreement = ps.weighted, ps.min_agreement
    by_id = {p.id: p for p in unlabeled}

    def score(out: list[Sample]) -> None:
        for s in out:
            s.extracted = extract_answer(s.text, choices=by_id[s.prompt_id].choices)
        if scorer is not None and weighted:
            scorer(out, prompts=list(unlabeled))

    samples = sample_to_file(rollout, list(unlabeled), k, sample_path(run_dir, iteration, "-unlabeled"),
                             temperature=temperature, max_new_tokens=max_new_tokens,
                             seed=iteration_seed(seed, iteration) + 1, transform=score, progress=progress,
                             desc=f"iteration {iteration}: unlabeled", world=world)
    labeled: list[Prompt] = []
    kept: list[Sample] = []
    for pid, group in group_by_prompt(samples).items():
        label = pseudo_label(group, by_id[pid], weighted=weighted and scorer is not None, min_agreement=min_agreement)
        if label is None:
            continue
        p = dataclasses.replace(by_id[pid], answer=label, meta={**by_id[pid].meta, "pseudo_label": True})
        labeled.append(p)
        kept.extend(group)
    grade_samples(kept, labeled)
    return kept, labeled
