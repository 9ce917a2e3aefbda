"""Warm-up (docs/recipe.md "Warm-up"): teach the base model the step-by-step output format with its own words.

The base model is prompted with (image, question, **gold answer**) plus an instruction to reason step by
step and end with the answer; responses whose final answer matches are kept (de-duplicated, at most
``keep_per_prompt`` per prompt); the model is then fine-tuned on them **without** the answer in the prompt.
The samples go to an append-only file (``RUN_DIR/samples/warmup.jsonl``), so a killed warm-up resumes
without re-sampling what it already wrote.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mstar_fast.config import WarmupConfig
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.protocols import Rollout
from mstar_fast.recipe.context import RunContext, special_token_ids, steps_for
from mstar_fast.recipe.iteration import trainable
from mstar_fast.recipe.monitor import greedy_test_accuracy
from mstar_fast.recipe.policy import RolloutPolicy
from mstar_fast.recipe.prompts import RunData
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.recipe.select import select
from mstar_fast.rewards import grade_samples
from mstar_fast.train.distributed import World

__all__ = ["WarmupResult", "hinted_prompt", "warmup_samples", "warmup_pairs", "warmup_stage"]

log = logging.getLogger("mstar_fast")


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


def warmup_samples(engine: Rollout, prompts: Sequence[Prompt], out_path: str | os.PathLike, *, hint: str,
                   n: int = 4, temperature: float = 0.7, keep_per_prompt: int = 2, max_new_tokens: int = 256,
                   seed: int = 0, chunk_size: int = 64, require_format: bool = True,
                   progress: bool = False, world: World | None = None) -> tuple[list[Sample], WarmupResult]:
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
        world: the processes that share the sampling (:func:`~mstar_fast.recipe.sample.sample_to_file`).

    Returns:
        ``(kept samples, WarmupResult)``; kept samples have ``selected = True``.
    """
    prompts = list(prompts)
    by_id = {p.id: p for p in prompts}
    hinted = [hinted_prompt(p, hint) for p in prompts]
    samples = sample_to_file(engine, hinted, n, out_path, temperature=temperature, max_new_tokens=max_new_tokens,
                             seed=seed, transform=lambda out: grade_samples(out, by_id), chunk_size=chunk_size,
                             progress=progress, desc="warm-up sampling", world=world)
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


def warmup_stage(w: WarmupConfig, ctx: RunContext, data: RunData, base_path: str, test_tokens: int) -> str:
    """Stage 1: sample with the answer in the prompt, keep the correct well-formed responses, SFT on them;
    returns the warm-up policy's directory (``RUN_DIR/warmup``). Skipped when that directory is complete
    (the base policy is returned when ``warmup.enabled`` is false). ``test_tokens``: the generation length
    of the test accuracy measured before and after."""
    out = ctx.run.path / "warmup"
    if not w.enabled:
        return base_path
    if ctx.run.model_complete("warmup"):
        return str(out)
    t0 = time.perf_counter()
    model, processor = ctx.models.load(base_path)
    rollout = ctx.models.rollout_engine(model, processor)
    prompts = data.train[: w.n_prompts] if w.n_prompts else data.train
    t_test = time.perf_counter()
    base_acc = greedy_test_accuracy(rollout, data.test, test_tokens, ctx.seed, ctx.world)
    t_sample = time.perf_counter()
    kept, res = warmup_samples(rollout, prompts, ctx.run.path / "samples" / "warmup.jsonl", hint=w.hint,
                               n=w.samples, temperature=w.temperature, keep_per_prompt=w.keep_per_prompt,
                               max_new_tokens=ctx.rollout.max_new_tokens, seed=ctx.seed + 1,
                               chunk_size=ctx.rollout.chunk_prompts, progress=ctx.progress, world=ctx.world)
    t_train = time.perf_counter()
    special = special_token_ids(processor)
    pairs = [(p, s) for p, s in warmup_pairs(prompts, kept) if trainable(s, special)]
    trainer = ctx.models.trainer(model, processor, mode="continuous",
                                 lr=w.lr if w.lr is not None else ctx.models.train.lr, lr_schedule="constant",
                                 total_steps=None)
    if not pairs:  # nothing to learn from: the base model is the warm-up model (said loudly, not hidden)
        log.warning("mstar_fast: warm-up: no correct response with the answer in the prompt; the base model is "
                    "used as the warm-up model (raise warmup.samples / warmup.n_prompts, or use a stronger base)")
    close, on_step = ctx.console.train_bar(steps_for(len(pairs), ctx.models.train.global_batch_size, w.epochs,
                                                     None), "warm-up SFT")
    rep = trainer.train_on(pairs, epochs=w.epochs, on_step=on_step)
    close()
    # Under FSDP2 the trained model is sharded: measure and save an unsharded copy of it (recipe/policy.py).
    policy = RolloutPolicy.create(trainer, lambda: ctx.models.load(base_path)[0],
                                  max_batch_tokens=ctx.rollout.max_batch_tokens)
    if policy.is_copy:
        rollout = ctx.models.rollout_engine(policy.model, processor)
    t_test2 = time.perf_counter()
    warm_acc = greedy_test_accuracy(rollout, data.test, test_tokens, ctx.seed, ctx.world)
    t_end = time.perf_counter()
    ctx.run.save_model(policy.model, base_path, "warmup")
    ctx.run.write_stage("warmup", {"n_prompts": res.n_prompts, "n_samples": res.n_samples,
                                   "n_correct": res.n_correct, "n_prompts_kept": res.n_prompts_kept,
                                   "n_selected": res.n_selected, "steps": rep.steps, "loss": rep.mean_loss,
                                   "base_test_acc": base_acc, "warmup_test_acc": warm_acc,
                                   "seconds": time.perf_counter() - t0, "seconds_test_base": t_sample - t_test,
                                   "seconds_sample": t_train - t_sample, "seconds_train": t_test2 - t_train,
                                   "seconds_test": t_end - t_test2})
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    ctx.console.say(f"warm-up: {res.n_prompts_kept}/{res.n_prompts} prompts gave a correct response "
                    f"({res.n_correct} distinct correct of {res.n_samples}); SFT on {len(pairs)} for {rep.steps} "
                    f"steps; test acc {pct(base_acc)} -> {pct(warm_acc)}")
    ctx.world.barrier()
    return str(out)
