"""Stage 2 of the recipe: the PRM (Monte-Carlo step labels from the warm-up policy's responses, then PRM
training, once; fixed afterwards). The PRM itself (data, training, loading, scoring) lives in
:mod:`mstar_fast.prm`; this module runs it inside a run directory."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

from mstar_fast.config import PRMConfig
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.prm import PRMScorer, load_prm, monte_carlo_labels, train_prm
from mstar_fast.protocols import Scorer
from mstar_fast.recipe.context import RunContext
from mstar_fast.recipe.prompts import RunData
from mstar_fast.recipe.sample import sample_to_file
from mstar_fast.rewards import grade_samples
from mstar_fast.train.distributed import World

__all__ = ["RoundedScorer", "prm_stage"]

log = logging.getLogger("mstar_fast")


class RoundedScorer:
    """A PRM scorer whose scores are rounded to ``decimals`` places (``Sample.score`` and ``step_scores``).

    Why: CPU matmul kernels are not bit-reproducible across processes for every shape (their blocking can
    depend on buffer alignment), so a PRM score can move in the 6th decimal between an uninterrupted run and
    a resumed one, and near-ties would then rank differently (a different top-2, a different Reward-Pass@2).
    Differences below 1e-3 in P(good step) carry no signal; rounding makes such ties exact, and exact ties
    rank by sample index everywhere (selection and Reward-Pass@2), so resumed runs select the same samples.
    """

    def __init__(self, scorer: Scorer, decimals: int = 3) -> None:
        self.scorer = scorer
        self.decimals = decimals

    def _round(self, v: float | None) -> float | None:
        return v if v is None or math.isnan(v) else round(float(v), self.decimals)

    def __call__(self, samples: Sequence[Sample],
                 prompts: Sequence[Prompt] | Mapping[str, Prompt] | None = None) -> list[float]:
        raw = self.scorer(samples, prompts=prompts)
        for s in samples:
            if s.score is not None:
                s.score = self._round(s.score)
            if s.step_scores is not None:
                s.step_scores = [self._round(v) for v in s.step_scores]
        return [self._round(v) for v in raw]  # type: ignore[misc]


def _checked_scorer(scorer: PRMScorer, data: RunData) -> RoundedScorer:
    """Use the scorer's shared-prefix path (one prompt forward per prompt) where it works on this model;
    fall back to one full forward per response where it does not (a model whose positions a cached
    continuation gets wrong: the probe compares both paths on one gold response)."""
    probe = next((p for p in data.val + data.train if p.meta.get("cot")), None)
    if probe is None or not scorer.share_prefix:
        return RoundedScorer(scorer)
    try:
        shared = scorer.score(probe, [probe.meta["cot"]], share_prefix=True).scores
        full = scorer.score(probe, [probe.meta["cot"]], share_prefix=False).scores
        ok = all(abs(a - b) < 1e-3 for a, b in zip(shared, full))
    except (RuntimeError, ValueError) as e:
        log.warning("mstar_fast: PRM shared-prefix scoring fails on this model (%s); scoring each response with "
                    "its own forward", str(e).splitlines()[0][:200])
        ok = False
    scorer.share_prefix = ok
    return RoundedScorer(scorer)


def prm_stage(p: PRMConfig, ctx: RunContext, data: RunData, warm_path: str, start_model: str | None,
              data_only: bool = False) -> RoundedScorer | None:
    """Monte-Carlo step labels + PRM training (rank 0, the other ranks wait), then every rank loads the
    scorer. ``start_model`` (``model.prm``): the PRM's starting weights (None: the warm-up policy). Returns
    None when no PRM is used, or with ``data_only`` (stop after the labels)."""
    if p.path is not None:
        return _checked_scorer(load_prm(p.path, device=ctx.models.device, prompts=data.lookup()), data)
    if not p.enabled:
        return None
    out = ctx.run.path / "prm"
    if not (out / "prm_config.json").is_file() and ctx.world.is_main:
        t0 = time.perf_counter()
        model, processor = ctx.models.load(warm_path)
        rollout = ctx.models.rollout_engine(model, processor)
        # The last train prompts: the first ones are where the iterations start.
        prompts = data.train[-p.n_prompts:] if p.n_prompts else data.train
        by_id = {q.id: q for q in prompts}
        # Rank 0 alone (World.single(): no collective), while the other ranks wait at the barrier below.
        responses = sample_to_file(rollout, prompts, p.samples, ctx.run.path / "prm_data" / "responses.jsonl",
                                   temperature=p.temperature, max_new_tokens=ctx.rollout.max_new_tokens,
                                   seed=ctx.seed + 2, transform=lambda o: grade_samples(o, by_id),
                                   chunk_size=ctx.rollout.chunk_prompts, progress=ctx.progress,
                                   desc="PRM responses", world=World.single())
        examples = monte_carlo_labels(rollout, prompts, responses, m=p.m, temperature=p.temperature,
                                      max_new_tokens=ctx.rollout.max_new_tokens, seed=ctx.seed + 3, soft=p.soft,
                                      out_path=ctx.run.path / "prm_data" / "labels.jsonl", chunk_size=64)
        n_steps = sum(len(e.labels) for e in examples)
        mean_label = sum(sum(e.labels) for e in examples) / max(1, n_steps)
        t1 = time.perf_counter()
        ctx.console.say(f"PRM data: {len(examples)} responses, {n_steps} steps labelled (m={p.m}, "
                        f"{'soft' if p.soft else 'hard'}, mean label {mean_label:.2f}) -> {ctx.run.path / 'prm_data'}")
        if data_only:
            ctx.world.barrier()
            return None
        if start_model is not None:  # the labels came from the warm-up policy; the PRM starts from this model
            del rollout, model
            model, processor = ctx.models.load(start_model)
        train_prm(model, processor, prompts, examples, head=p.head, step_tag=p.step_tag,
                  reward_tokens=(p.reward_tokens[0], p.reward_tokens[1]), lr=p.lr, epochs=p.epochs,
                  batch_size=p.batch_size, micro_batch_size=min(p.batch_size, 16), seed=ctx.seed, out_dir=out)
        ctx.run.write_stage("prm", {"n_prompts": len(prompts), "n_responses": len(responses),
                                    "n_examples": len(examples), "n_steps": n_steps, "mean_label": mean_label,
                                    "seconds_data": t1 - t0, "seconds_train": time.perf_counter() - t1})
        ctx.console.say(f"PRM trained in {time.perf_counter() - t1:.0f}s -> {out}")
        del model
    elif data_only:
        ctx.world.barrier()
        return None
    ctx.world.barrier()
    return _checked_scorer(load_prm(out, device=ctx.models.device, prompts=data.lookup()), data)
