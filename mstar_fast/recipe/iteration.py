"""One self-evolving iteration (DESIGN.md "One iteration, as data flows"):

    next chunk of prompts -> K samples at temperature T (append-only ``samples/iter-NNN.jsonl``)
    -> answer reward -> de-duplicate -> PRM scores of the distinct correct responses (min over steps)
    -> select (top-2 among correct by default) -> ``SFTEngine.train_on`` (the engine that lives for the run)

Grading, de-duplication and PRM scoring run on each generated chunk *before* it is written, so the
sample file holds the final ``correct`` / ``extracted`` / ``score`` of every sample, and a restarted
iteration only generates (and scores) the prompts that are not complete in the file. Under ``torchrun``
each rank samples and scores its share of the prompts (:func:`mstar_fast.recipe.sample.sample_to_file`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.evaluate import grade_samples
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.recipe.select import SelectionStats, dedupe, group_by_prompt, select, well_formed

__all__ = ["IterationResult", "next_chunk", "chunk_size", "sample_path", "iteration_seed", "score_and_grade",
           "run_iteration"]


@dataclass
class IterationResult:
    """What one iteration did (its line in metrics.jsonl is built from this and the monitor)."""

    iteration: int
    temperature: float
    n_prompts: int
    n_samples: int
    train_accuracy: float  # share of correct samples in this chunk (at temperature T)
    selection: SelectionStats
    steps: int = 0
    loss: float = float("nan")
    global_step: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def chunk_size(n_prompts: int, interval: float) -> int:
    """Prompts per iteration: ``ceil(interval * n_prompts)`` (at least 1)."""
    return max(1, math.ceil(interval * n_prompts - 1e-9))


def next_chunk(prompts: Sequence[Prompt], cursor: int, size: int) -> tuple[list[Prompt], int]:
    """``size`` prompts starting at ``cursor`` (wrapping around the list) and the next cursor.

    The cursor counts prompts handed out since the start of the run; it is saved in every checkpoint,
    so a resumed run continues with the same chunk."""
    if not prompts:
        raise ValueError("next_chunk: no prompts")
    n = len(prompts)
    size = min(size, n)
    return [prompts[(cursor + j) % n] for j in range(size)], cursor + size


def sample_path(run_dir: str | os.PathLike, iteration: int, suffix: str = "") -> Path:
    """``RUN_DIR/samples/iter-NNN<suffix>.jsonl``."""
    return Path(run_dir) / "samples" / f"iter-{iteration:03d}{suffix}.jsonl"


def iteration_seed(seed: int, iteration: int) -> int:
    """The sampling seed of an iteration: fresh samples each iteration, identical across resumes."""
    return int(seed) * 1_000_003 + 7919 * int(iteration)


def score_and_grade(samples: list[Sample], prompts: dict[str, Prompt], scorer: Callable[..., Any] | None,
                    require_format: bool = False) -> None:
    """Grade ``samples`` in place, mark duplicates, and PRM-score the distinct correct ones (the only ones
    selection ranks; scoring the rest would cost PRM forwards for nothing)."""
    grade_samples(samples, prompts)
    if scorer is None:
        return
    todo: list[Sample] = []
    for group in group_by_prompt(samples).values():
        todo.extend(s for s in dedupe(group) if s.correct and (not require_format or well_formed(s.text)))
    if todo:
        scorer(todo, prompts=[prompts[pid] for pid in dict.fromkeys(s.prompt_id for s in todo)])


def special_token_ids(processor: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (image placeholders, chat markers, EOS)."""
    from mstar_fast.models.prompting import get_tokenizer

    tok = get_tokenizer(processor)
    ids = {int(i) for i in getattr(tok, "all_special_ids", [])}
    # Added special tokens (image placeholders, chat markers) are not always in all_special_ids.
    added = getattr(tok, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    return ids


def trainable(sample: Sample, special_ids: set[int]) -> bool:
    """False for a response that holds a special token before its end (an untrained policy can sample an
    image placeholder, which would break the image-token count of the training input)."""
    ids = sample.token_ids or []
    return not any(int(t) in special_ids for t in ids[:-1])


def run_iteration(iteration: int, chunk: Sequence[Prompt], *, rollout: Any, trainer: Any, run_dir: str | os.PathLike,
                  temperature: float, k: int, max_new_tokens: int, seed: int, scorer: Callable[..., Any] | None,
                  select_method: str = "topk", select_k: int = 2, threshold: float = 0.5, dedup: bool = True,
                  require_format: bool = False,
                  epochs: int = 1, steps: int | None = None, top_p: float = 1.0, top_k: int = 0,
                  min_p: float = 0.0, chunk_prompts: int = 64, progress: bool = False,
                  extra_samples: Sequence[Sample] = (), extra_prompts: Sequence[Prompt] = (),
                  on_step: Callable[..., Any] | None = None, special_ids: set[int] | None = None) -> IterationResult:
    """Run iteration ``iteration`` (1-based) on ``chunk``; see the module doc.

    Args:
        chunk: this iteration's labeled prompts.
        rollout: rollout engine on the current policy; trainer: the run's :class:`~mstar_fast.train.SFTEngine`.
        run_dir: the run directory (samples go to ``samples/iter-NNN.jsonl``).
        temperature, k, max_new_tokens, top_p, top_k, min_p: sampling.
        seed: the run seed (the iteration's sampling seed derives from it).
        scorer: the PRM scorer (None: no PRM; ``topk`` / ``threshold`` then fall back to ``random``).
        select_method, select_k, threshold, dedup, require_format: selection (:func:`mstar_fast.recipe.select.select`).
        epochs, steps: SFT on the selected responses (``steps`` overrides ``epochs``).
        chunk_prompts: prompts per engine call.
        extra_samples, extra_prompts: already graded samples (e.g. pseudo-labeled prompts) to select from
            with the rest, and their prompts.
        on_step: passed to ``train_on``.
        special_ids: token ids a trained response may not hold before its end (:func:`trainable`).
    """
    t0 = time.perf_counter()
    prompts = {p.id: p for p in chunk}
    samples = sample_to_file(
        rollout, list(chunk), k, sample_path(run_dir, iteration), temperature=temperature,
        max_new_tokens=max_new_tokens, seed=iteration_seed(seed, iteration), top_p=top_p, top_k=top_k, min_p=min_p,
        chunk_size=chunk_prompts, transform=lambda out: score_and_grade(out, prompts, scorer, require_format),
        progress=progress,
        desc=f"iteration {iteration}: sampling")
    t1 = time.perf_counter()
    method = select_method if scorer is not None or select_method in ("random", "all") else "random"
    pool = samples + list(extra_samples)
    selected, stats = select(pool, method=method, k=select_k, threshold=threshold, dedup=dedup, seed=seed,
                             iteration=iteration, require_format=require_format)
    all_prompts = {**prompts, **{p.id: p for p in extra_prompts}}
    pairs = [(all_prompts[s.prompt_id], s) for s in selected if trainable(s, special_ids or set())]
    report = None
    if pairs:
        report = trainer.train_on(pairs, steps=steps, epochs=epochs, on_step=on_step)
    t2 = time.perf_counter()
    n_correct = sum(bool(s.correct) for s in samples)
    return IterationResult(
        iteration=iteration, temperature=float(temperature), n_prompts=len(chunk), n_samples=len(samples),
        train_accuracy=n_correct / len(samples) if samples else 0.0, selection=stats,
        steps=report.steps if report else 0, loss=report.mean_loss if report else float("nan"),
        global_step=trainer.global_step, seconds={"sample": t1 - t0, "train": t2 - t1})
