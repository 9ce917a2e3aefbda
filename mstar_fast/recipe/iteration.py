"""One self-evolving iteration (docs/recipe.md, "The loop"):

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

from mstar_fast.config import IterateConfig, RolloutConfig
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.protocols import Rollout, Scorer, Trainer
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.recipe.select import SelectionStats, eligible, group_by_prompt, select
from mstar_fast.rewards import grade_samples
from mstar_fast.train.distributed import World

__all__ = ["IterationResult", "next_chunk", "chunk_size", "sample_path", "iteration_seed", "score_and_grade",
           "run_iteration", "trainable"]


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
    #: wall seconds per part: ``sample`` (generation), ``score`` (grading + PRM scoring), ``train`` (selection + SFT)
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


def score_and_grade(samples: list[Sample], prompts: dict[str, Prompt], scorer: Scorer | None,
                    dedup: bool = True, require_format: bool = False) -> None:
    """Grade ``samples`` in place, mark duplicates, and PRM-score the eligible ones (:func:`eligible`: the
    only ones selection ranks; scoring the rest would cost PRM forwards for nothing)."""
    grade_samples(samples, prompts)
    if scorer is None:
        return
    todo: list[Sample] = []
    for group in group_by_prompt(samples).values():
        todo.extend(eligible(group, dedup=dedup, require_format=require_format))
    if todo:
        scorer(todo, prompts=[prompts[pid] for pid in dict.fromkeys(s.prompt_id for s in todo)])


def trainable(sample: Sample, special_ids: set[int]) -> bool:
    """False for a response that holds a special token before its end (an untrained policy can sample an
    image placeholder, which would break the image-token count of the training input)."""
    ids = sample.token_ids or []
    return not any(int(t) in special_ids for t in ids[:-1])


def run_iteration(iteration: int, chunk: Sequence[Prompt], it: IterateConfig, r: RolloutConfig, *,
                  rollout: Rollout, trainer: Trainer, scorer: Scorer | None, run_dir: str | os.PathLike,
                  temperature: float, seed: int, special_ids: set[int], progress: bool = False,
                  extra: tuple[Sequence[Sample], Sequence[Prompt]] = ((), ()),
                  on_step: Callable[..., bool | None] | None = None, world: World | None = None) -> IterationResult:
    """Run iteration ``iteration`` (1-based) on ``chunk``; see the module doc.

    Args:
        chunk: this iteration's labeled prompts.
        it: the ``iterate`` section (K, selection, de-duplication, format rule, SFT epochs / steps).
        r: the ``rollout`` section (max_new_tokens, top_p, top_k, min_p, chunk_prompts).
        rollout: rollout engine on the current policy; trainer: the run's trainer (lives for the run).
        scorer: the PRM scorer (None: no PRM; ``topk`` / ``threshold`` then fall back to ``random``).
        run_dir: the run directory (samples go to ``samples/iter-NNN.jsonl``).
        temperature: this iteration's sampling temperature.
        seed: the run seed (the iteration's sampling seed derives from it).
        special_ids: token ids a trained response may not hold before its end (:func:`trainable`).
        extra: already graded samples (e.g. pseudo-labeled prompts) to select from with the rest, and
            their prompts.
        on_step: passed to ``train_on``.
        world: the processes that share the sampling.
    """
    t0 = time.perf_counter()
    prompts = {p.id: p for p in chunk}
    scoring = [0.0]  # seconds of grading + PRM scoring inside the sampling call (reported on their own)

    def grade_and_score(out: list[Sample]) -> None:
        ts = time.perf_counter()
        score_and_grade(out, prompts, scorer, it.dedupe, it.require_format)
        scoring[0] += time.perf_counter() - ts

    samples = sample_to_file(
        rollout, list(chunk), it.k, sample_path(run_dir, iteration), temperature=temperature,
        max_new_tokens=r.max_new_tokens, seed=iteration_seed(seed, iteration), top_p=r.top_p, top_k=r.top_k,
        min_p=r.min_p, chunk_size=r.chunk_prompts, transform=grade_and_score,
        progress=progress, desc=f"iteration {iteration}: sampling", world=world)
    t1 = time.perf_counter()
    method = it.select if scorer is not None or it.select in ("random", "all") else "random"
    extra_samples, extra_prompts = extra
    selected, stats = select(samples + list(extra_samples), method=method, k=it.select_k, threshold=it.threshold,
                             dedup=it.dedupe, seed=seed, iteration=iteration, require_format=it.require_format)
    all_prompts = {**prompts, **{p.id: p for p in extra_prompts}}
    pairs = [(all_prompts[s.prompt_id], s) for s in selected if trainable(s, special_ids)]
    report = trainer.train_on(pairs, steps=it.steps, epochs=it.epochs, on_step=on_step) if pairs else None
    t2 = time.perf_counter()
    n_correct = sum(bool(s.correct) for s in samples)
    return IterationResult(
        iteration=iteration, temperature=float(temperature), n_prompts=len(chunk), n_samples=len(samples),
        train_accuracy=n_correct / len(samples) if samples else 0.0, selection=stats,
        steps=report.steps if report else 0, loss=report.mean_loss if report else float("nan"),
        global_step=trainer.global_step, seconds={"sample": t1 - t0 - scoring[0], "score": scoring[0], "train": t2 - t1})
