"""The outcome reward of sampled responses: extract each response's final answer and check it against its
prompt's gold answer (the one grading step every stage uses: warm-up, PRM data, iterations, monitor, eval)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.rewards.extract import extract_answer
from mstar_fast.rewards.match import check_answer

__all__ = ["grade_samples"]


def grade_samples(samples: Sequence[Sample], prompts: Sequence[Prompt] | Mapping[str, Prompt]) -> list[bool]:
    """Set ``sample.extracted`` and ``sample.correct`` from the prompt with id ``sample.prompt_id``.

    A sample that failed (``finish_reason == "error"``) or whose prompt has no gold answer is incorrect.

    Returns:
        ``[L]`` correctness flags, in sample order.

    Raises:
        ValueError: a sample whose prompt id is not among ``prompts``.
    """
    by_id = prompts if isinstance(prompts, Mapping) else {p.id: p for p in prompts}
    out = []
    for s in samples:
        p = by_id.get(s.prompt_id)
        if p is None:
            raise ValueError(f"grade_samples: no prompt with id {s.prompt_id!r}")
        if s.finish_reason == "error":
            s.extracted, s.correct = None, False
        else:
            s.extracted = extract_answer(s.text, choices=p.choices)  # no last-number guess on options
            s.correct = bool(check_answer(s.extracted, p))
        out.append(s.correct)
    return out
