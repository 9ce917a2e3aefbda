"""Warm-up (PAPER.md "Warm-up"): teach the base model the step-by-step output format with its own words.

The base model is prompted with (image, question, **gold answer**) plus an instruction to reason step by
step and end with the answer; responses whose final answer matches are kept (de-duplicated, at most
``keep_per_prompt`` per prompt); the model is then fine-tuned on them **without** the answer in the prompt.
The samples go to an append-only file (``RUN_DIR/samples/warmup.jsonl``), so a killed warm-up resumes
without re-sampling what it already wrote.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.evaluate import grade_samples
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.recipe.select import select

__all__ = ["WarmupResult", "hinted_prompt", "warmup_samples", "warmup_pairs"]


@dataclass
class WarmupResult:
    """Counts of the warm-up sampling."""

    n_prompts: int
    n_samples: int
    n_correct: int
    n_prompts_kept: int
    n_selected: int

    @property
    def yield_rate(self) -> float:
        """Share of prompts that gave at least one correct response."""
        return self.n_prompts_kept / self.n_prompts if self.n_prompts else 0.0


def hinted_prompt(prompt: Prompt, hint: str) -> Prompt:
    """A copy of ``prompt`` whose question ends with ``hint`` (``{answer}`` replaced by the gold answer).
    The id is kept: the samples belong to the original prompt, which training pairs them with."""
    if prompt.answer is None:
        raise ValueError(f"warm-up: prompt {prompt.id!r} has no gold answer")
    answer = prompt.answer
    if prompt.choices and len(answer) == 1 and answer.isalpha():
        i = ord(answer.upper()) - 65
        if 0 <= i < len(prompt.choices):
            answer = f"({answer}) {prompt.choices[i]}"
    return dataclasses.replace(prompt, question=f"{prompt.question}\n{hint.format(answer=answer)}",
                               meta=dict(prompt.meta))


def warmup_samples(engine: Any, prompts: Sequence[Prompt], out_path: str | os.PathLike, *, hint: str,
                   n: int = 4, temperature: float = 0.7, keep_per_prompt: int = 2, max_new_tokens: int = 256,
                   seed: int = 0, chunk_size: int = 64, require_format: bool = True,
                   progress: bool = False) -> tuple[list[Sample], WarmupResult]:
    """Sample with the gold answer in the prompt and keep the correct responses.

    Args:
        engine: a rollout engine on the base policy.
        prompts: labeled train prompts.
        out_path: append-only JSONL of every warm-up sample (graded), resumable.
        hint: the instruction with ``{answer}``.
        n: samples per prompt; temperature: their temperature.
        keep_per_prompt: distinct correct responses kept per prompt (fewer when fewer exist).
        require_format: keep only responses in the output format (:func:`~mstar_fast.recipe.select.well_formed`):
            the point of the warm-up is to teach that format.
        max_new_tokens, seed, chunk_size, progress: sampling settings (``chunk_size`` prompts per engine
            call, each appended to ``out_path`` when done).

    Returns:
        ``(kept samples, WarmupResult)``; kept samples have ``selected = True``.
    """
    prompts = list(prompts)
    by_id = {p.id: p for p in prompts}
    hinted = [hinted_prompt(p, hint) for p in prompts]
    samples = sample_to_file(engine, hinted, n, out_path, temperature=temperature, max_new_tokens=max_new_tokens,
                             seed=seed, transform=lambda out: grade_samples(out, by_id), chunk_size=chunk_size,
                             progress=progress,
                             desc="warm-up sampling")
    # Keep k distinct correct responses per prompt; with no PRM yet, "random" picks among the correct.
    kept, stats = select(samples, method="random", k=keep_per_prompt, dedup=True, seed=seed, iteration=-1,
                         require_format=require_format)
    return kept, WarmupResult(n_prompts=len(prompts), n_samples=len(samples), n_correct=stats.n_correct,
                              n_prompts_kept=stats.n_prompts_with_correct, n_selected=len(kept))


def warmup_pairs(prompts: Sequence[Prompt], kept: Sequence[Sample]) -> list[tuple[Prompt, Sample]]:
    """(original prompt without the answer, response) training pairs: the prompt the policy will see at
    test time, and the response's sampled tokens (``SFTCollator`` trains on ``Sample.token_ids``)."""
    by_id = {p.id: p for p in prompts}
    return [(by_id[s.prompt_id], s) for s in kept]
