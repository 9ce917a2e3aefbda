"""The whole M-STaR recipe, top to bottom; :func:`run` reads in the order the stages run:

    0. processes, device, run directory (``config.yaml``), seeds
    1. data (labeled train / val / test, optional unlabeled) and the base policy (a model directory, or a
       named one such as the demo's ``tiny``, built into the run directory)
    2. warm-up: sample with the gold answer in the prompt, keep the correct responses, SFT without it
    3. PRM: Monte-Carlo step labels from the warm-up policy's responses, then PRM training (once; fixed)
    4. iterations (:func:`self_evolve`): next chunk of prompts -> K samples at T -> reward -> de-dupe -> PRM
       -> top-2 -> SFT, then the monitor on the validation set, the temperature controller, a metrics.jsonl
       line and a checkpoint (weights, optimizer, scheduler, RNG, data cursor, temperature) per iteration

Every stage writes into the run directory (:mod:`mstar_fast.recipe.run_dir`) and is skipped when its output is
already there (models are saved atomically; sample files are append-only and resumable), so
``mstar run --resume RUN_DIR`` after a ``kill -9`` continues where the run stopped, with no sample written
twice or lost, and ends with the same metrics as an uninterrupted run (CPU, same seed).

Under ``torchrun`` every rank runs this file: sampling and PRM scoring of the iterations (and the warm-up's
sampling) are sharded over ranks and gathered on rank 0 (the :class:`~mstar_fast.train.distributed.World`
each stage is handed), training runs under DDP or FSDP2 (``train.parallel``; under FSDP2 rollouts run on
an unsharded inference copy of the policy, :mod:`mstar_fast.recipe.policy`, docs/scaling.md), and rank 0
alone writes files, trains the PRM and runs the monitor (the other ranks wait for its results).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from mstar_fast.config import RunConfig, load_config
from mstar_fast.constants import BASE_POLICIES, STOP_AFTER, resolve
from mstar_fast.errors import UserError
from mstar_fast.protocols import Scorer
from mstar_fast.models import resolve_device
from mstar_fast.recipe.context import RunContext, special_token_ids, steps_for
from mstar_fast.recipe.iteration import IterationResult, chunk_size, iteration_seed, next_chunk, run_iteration
from mstar_fast.recipe.monitor import ValidationReport, greedy_test_accuracy, monitor_stage
from mstar_fast.recipe.policy import RolloutPolicy
from mstar_fast.recipe.prm_stage import prm_stage
from mstar_fast.recipe.prompts import RunData, load_data
from mstar_fast.recipe.pseudo import pseudo_labeled_samples
from mstar_fast.recipe.run_dir import Loggers, time_table
from mstar_fast.recipe.select import SelectionStats
from mstar_fast.recipe.temperature import TemperatureController
from mstar_fast.recipe.warmup import warmup_stage
from mstar_fast.train import resume_latest, save_checkpoint
from mstar_fast.train.distributed import World, init_distributed

__all__ = ["STOP_AFTER", "metrics_row", "resume", "run", "self_evolve"]


def metrics_row(i: int, T: float, next_T: float, step: int, report: ValidationReport, res: IterationResult | None,
                test_acc: float | None, seconds_monitor: float, elapsed: float,
                seconds_test: float | None = None) -> dict[str, Any]:
    """Iteration ``i``'s line of metrics.jsonl (``res`` None for iteration 0: the warm-up policy). Wall seconds
    per stage: ``seconds_sample`` (generation), ``seconds_score`` (grading + PRM scoring), ``seconds_train``
    (selection + SFT), ``seconds_monitor``, ``seconds_test`` (None where nothing ran)."""
    sel = res.selection if res is not None else SelectionStats()
    sec = res.seconds if res is not None else {}
    return {"iteration": i, "step": step, "temperature": T, "next_temperature": next_T, **report.metrics_row(T),
            "n_selected": sel.n_selected, "n_samples": res.n_samples if res else 0,
            "n_prompts": res.n_prompts if res else 0, "n_duplicates": sel.n_duplicates,
            "train_sample_acc": res.train_accuracy if res else None, "train_loss": res.loss if res else None,
            "train_steps": res.steps if res else 0, "test_greedy_acc": test_acc,
            "seconds_sample": sec.get("sample"), "seconds_score": sec.get("score"), "seconds_train": sec.get("train"),
            "seconds_monitor": seconds_monitor, "seconds_test": seconds_test, "elapsed": elapsed}


def _summary(row: dict[str, Any], res: IterationResult) -> str:
    pct = lambda v: "   -" if v is None else f"{100 * v:5.1f}%"  # noqa: E731
    s = res.selection
    return "\n".join([
        f"── iteration {row['iteration']} ── T={row['temperature']:.2f} -> next {row['next_temperature']:.2f}  "
        f"step {row['step']}  loss {row['train_loss']:.3f}",
        f"   samples: {res.n_prompts} prompts x {res.n_samples // max(1, res.n_prompts)} = {res.n_samples}, "
        f"correct {pct(res.train_accuracy)}, duplicates {s.n_duplicates}, prompts with an eligible correct answer "
        f"(well-formed, de-duplicated) {s.n_prompts_with_correct}/{s.n_prompts}, selected {s.n_selected}",
        f"   val: greedy {pct(row['val_greedy_acc'])}  Pass@K {pct(row['val_pass_at_k'])}  "
        f"Reward-Pass@2 {pct(row['val_reward_pass_at_2'])}  Pass@K-greedy {pct(row.get('val_pass_at_k_minus_greedy'))}"
        + (f"  | test greedy {pct(row['test_greedy_acc'])}" if row.get("test_greedy_acc") is not None else ""),
        f"   time: sampling {res.seconds.get('sample', 0):.0f}s, PRM scoring {res.seconds.get('score', 0):.0f}s, "
        f"training {res.seconds.get('train', 0):.0f}s, monitor {row.get('seconds_monitor') or 0:.0f}s"
        + (f", test eval {row['seconds_test']:.0f}s" if row.get("seconds_test") is not None else "")])


def self_evolve(cfg: RunConfig, ctx: RunContext, data: RunData, warm_path: str, scorer: Scorer | None,
                t_start: float) -> None:
    """Stage 4: iteration 0 (the warm-up policy, measured) and iterations 1..``iterate.iterations``, from the
    newest checkpoint on; one metrics.jsonl line and one checkpoint per iteration."""
    it, mon, run, world = cfg.iterate, cfg.monitor, ctx.run, ctx.world
    model, processor = ctx.models.load(warm_path)
    trainer = ctx.models.trainer(model, processor, seed=cfg.seed)
    # The trained model itself, or under FSDP2 an unsharded copy refreshed after each training call.
    policy = RolloutPolicy.create(trainer, lambda: ctx.models.load(warm_path)[0],
                                  max_batch_tokens=cfg.rollout.max_batch_tokens)
    rollout = ctx.models.rollout_engine(policy.model, processor)
    t = cfg.temperature
    # No grid after the last iteration: no iteration would sample at the T it chooses.
    controller = TemperatureController(t.grid, initial=t.initial, adapt_every=t.adapt_every, criterion=t.criterion,
                                       last_iteration=it.iterations)
    size, special = chunk_size(len(data.train), it.interval), special_token_ids(processor)
    tokens = mon.max_new_tokens or cfg.rollout.max_new_tokens
    start, cursor, unl_cursor = 0, 0, 0
    resumed = resume_latest(trainer, run.checkpoints)  # past a damaged newest checkpoint, with a warning
    if resumed is not None:
        ckpt, extra = resumed
        start, cursor, unl_cursor = extra["iteration"] + 1, extra["cursor"], extra.get("unlabeled_cursor", 0)
        controller.load_state_dict(extra["temperature"])
        policy.refresh()
        ctx.console.say(f"resumed from {ckpt} (iteration {extra['iteration']}, step {trainer.global_step})")
        if start > it.iterations:
            ctx.console.say(f"run {run.path} is complete: all {it.iterations} iterations are done, nothing to run")
    run.truncate_metrics(start - 1)
    warmup = world.broadcast(run.stages() if world.is_main else {}).get("warmup", {})
    loggers = Loggers(cfg.log, cfg, run)
    for i in range(start, it.iterations + 1):
        T, res, final = controller.temperature, None, i == it.iterations
        if i > 0:
            chunk, cursor = next_chunk(data.train, cursor, size)
            extra_pool: tuple[list, list] = ([], [])
            if cfg.pseudo.enabled and i - 1 >= cfg.pseudo.start_iteration and data.unlabeled:
                unl, unl_cursor = next_chunk(data.unlabeled, unl_cursor, max(1, round(cfg.pseudo.ratio * len(chunk))))
                extra_pool = pseudo_labeled_samples(
                    i, unl, cfg.pseudo, rollout=rollout, run_dir=run.path, temperature=T, k=it.k,
                    max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed, scorer=scorer, progress=ctx.progress,
                    world=world)
            close, on_step = ctx.console.train_bar(
                steps_for(len(chunk) * it.select_k, cfg.train.global_batch_size, it.epochs, it.steps),
                f"iteration {i}: SFT")
            res = run_iteration(i, chunk, it, cfg.rollout, rollout=rollout, trainer=trainer, scorer=scorer,
                                run_dir=run.path, temperature=T, seed=cfg.seed, special_ids=special,
                                progress=ctx.progress, extra=extra_pool, on_step=on_step, world=world)
            close()
            policy.refresh()
        t0 = time.perf_counter()
        report = monitor_stage(mon, rollout, data.val, temperatures=controller.grid_to_sample(i), scorer=scorer,
                               seed=iteration_seed(cfg.seed, i) + 2, max_new_tokens=tokens, world=world)
        seconds_monitor = time.perf_counter() - t0
        next_T = controller.update(i, report)
        test_acc, seconds_test = None, None
        if i == 0 and warmup.get("warmup_test_acc") is not None:
            test_acc = warmup["warmup_test_acc"]
        elif i == 0 or final or (mon.test_every and i % mon.test_every == 0):
            t0 = time.perf_counter()
            test_acc = greedy_test_accuracy(rollout, data.test, tokens, cfg.seed, world)
            seconds_test = time.perf_counter() - t0
        row = metrics_row(i, T, next_T, trainer.global_step, report, res, test_acc, seconds_monitor,
                          time.perf_counter() - t_start, seconds_test)
        if controller.should_adapt(i):
            row["val_reward_pass_at_2_by_t"] = {f"{k:g}": v for k, v in report.metric("reward_pass_at_2").items()}
            row["val_pass_at_k_by_t"] = {f"{k:g}": v for k, v in report.metric("pass_at_k").items()}
        if final:
            row.update(stage="final", warmup_test_acc=warmup.get("warmup_test_acc"),
                       base_test_acc=warmup.get("base_test_acc"))
        run.append_metrics(row)
        if world.is_main:
            loggers.log(row)
        if res is not None:
            ctx.console.say(_summary(row, res))
        save_checkpoint(trainer, run.checkpoints / f"iter-{i:03d}", extra={
            "iteration": i, "cursor": cursor, "unlabeled_cursor": unl_cursor, "temperature": controller.state_dict()})
        run.prune_checkpoints(cfg.log.keep_checkpoints)
        world.barrier()
    loggers.close()


def run(cfg: RunConfig, resume: bool = False, stop_after: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the recipe described by ``cfg``; returns the metrics.jsonl rows.

    ``stop_after``: ``base`` | ``warmup`` | ``prm-data`` | ``prm`` runs the stages up to that one only
    (``mstar warmup`` / ``prm-data`` / ``prm-train``); a later call on the same run directory continues.

    Raises:
        ValueError: an unknown ``stop_after``.
        UserError: ``resume`` is False but the run directory already holds a run (use resume), a stage
            command on a directory that holds a different run, or a config / data / device problem (named
            in the message).
    """
    # 0. processes, device, run directory, seeds ---------------------------------------------------------
    if stop_after is not None and stop_after not in STOP_AFTER:
        raise ValueError(f"run: stop_after must be one of {STOP_AFTER} or None, got {stop_after!r}")
    t_start = time.perf_counter()
    dist = init_distributed()
    world = World.current()
    device = resolve_device(cfg.model.device, dist.device, what="config: model.device")
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    ctx = RunContext.create(cfg, world, device)
    with ctx.run.locked():  # one writer per run directory: a second command fails with the holder's pid
        ctx.run.claim(cfg, resume=resume, stop_after=stop_after)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # 1. data and base policy ----------------------------------------------------------------------------
        data = load_data(cfg.data, cfg.iterate.shuffle_prompts, cfg.seed)
        ctx.console.say(f"run {ctx.run.path}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
                        f"prompts, {world.size} process(es), device {device}")
        base_path = cfg.model.policy
        if base_path in BASE_POLICIES:  # a named base policy (the demo's tiny VLM) is built into the run directory
            base_path = resolve(BASE_POLICIES[base_path])(cfg, ctx, data)
        if stop_after == "base":
            return []

        # 2. warm-up -------------------------------------------------------------------------------------------
        max_tokens = cfg.monitor.max_new_tokens or cfg.rollout.max_new_tokens
        warm_path = warmup_stage(cfg.warmup, ctx, data, base_path, max_tokens)
        if stop_after == "warmup":
            return []

        # 3. PRM: Monte-Carlo step labels, then training (fixed afterwards) --------------------------------------
        scorer = prm_stage(cfg.prm, ctx, data, warm_path, cfg.model.prm, data_only=stop_after == "prm-data")
        if stop_after in ("prm-data", "prm"):
            return []

        # 4. self-evolving iterations --------------------------------------------------------------------------
        self_evolve(cfg, ctx, data, warm_path, scorer, t_start)
        rows = ctx.run.metrics()
        if ctx.world.is_main:
            ctx.console.say(time_table(ctx.run.stages(), rows))
        return rows


def resume(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Resume the run in ``run_dir`` with its saved ``config.yaml``.

    Raises:
        UserError: ``run_dir`` holds no ``config.yaml``.
    """
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise UserError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    cfg = load_config(p)
    cfg.run_dir = str(run_dir)
    return run(cfg, resume=True)
