"""The whole M-STaR recipe, top to bottom (PAPER.md, DESIGN.md):

    0. data (labeled train / val / test, optional unlabeled) and the base policy
       (``model.policy: tiny`` builds the demo's tiny VLM and makes it a weak base model by a short SFT
       on part of the gold reasoning)
    1. warm-up: sample with the gold answer in the prompt, keep the correct responses, SFT without it
    2. PRM: Monte-Carlo step labels from the warm-up policy's responses, then PRM training (once; fixed)
    3. iterations: next chunk of prompts -> K samples at T -> reward -> de-dupe -> PRM -> top-2 -> SFT,
       then the monitor on the validation set, the temperature controller, a metrics.jsonl line and a
       checkpoint (weights, optimizer, scheduler, RNG, data cursor, temperature) per iteration

Every stage writes into the run directory and is skipped when its output is already there (models are
saved atomically; sample files are append-only and resumable), so ``mstar run --resume RUN_DIR`` after a
``kill -9`` continues where the run stopped, with no sample written twice or lost, and ends with the same
metrics as an uninterrupted run (CPU, same seed).

Under ``torchrun`` every rank runs this file: sampling and PRM scoring of the iterations (and the
warm-up's sampling) are sharded over ranks and gathered on rank 0, training runs under DDP
(:mod:`mstar_fast.train.distributed`; FSDP2 is refused: each rank samples with its whole policy), and rank 0
alone writes files, trains the PRM and runs the monitor (the other ranks wait for its results).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mstar_fast.config import RunConfig, load_config, save_config
from mstar_fast.data.jsonl import JsonlWriter, iter_jsonl
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.train import distributed as D

__all__ = ["RunData", "RoundedScorer", "STOP_AFTER", "run", "resume", "load_data", "prepare_base", "read_metrics",
           "save_model_dir", "STAGES_FILE", "METRICS_FILE"]

log = logging.getLogger("mstar_fast")

METRICS_FILE = "metrics.jsonl"
STAGES_FILE = "stages.json"
MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json", "model.safetensors.index.json")


# ---------------------------------------------------------------------------------------------- helpers
def _main() -> bool:
    return D.is_main_process()


def _print(*args: Any) -> None:
    if _main():
        print(*args, flush=True)


def _device(cfg: RunConfig, dist: D.DistInfo) -> torch.device:
    if cfg.model.device == "auto":
        return dist.device
    return torch.device(cfg.model.device)


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_stages(run_dir: Path) -> dict[str, Any]:
    p = run_dir / STAGES_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_stage(run_dir: Path, name: str, info: dict[str, Any]) -> None:
    if _main():
        stages = _read_stages(run_dir)
        stages[name] = info
        _atomic_json(run_dir / STAGES_FILE, stages)


def _model_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def save_model_dir(model: Any, source_dir: str | os.PathLike, out_dir: Path) -> Path:
    """Save ``model`` (``save_pretrained``) plus the processor files of ``source_dir`` (tokenizer, image
    processor, chat template) to ``out_dir`` atomically: a temporary directory, then one rename."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    src = Path(source_dir)
    if src.is_dir():
        for f in src.iterdir():
            if f.is_file() and f.name not in MODEL_FILES and not f.name.endswith(".safetensors"):
                shutil.copy2(f, tmp / f.name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of ``RUN_DIR/metrics.jsonl``."""
    return list(iter_jsonl(Path(run_dir) / METRICS_FILE))


def _truncate_metrics(run_dir: Path, last_iteration: int) -> None:
    """Drop metrics lines after the checkpointed iteration (written before a kill that came before the
    checkpoint), so a resumed run writes each iteration's line exactly once."""
    p = run_dir / METRICS_FILE
    if not _main() or not p.is_file():
        return
    rows = [r for r in iter_jsonl(p, errors="skip") if int(r.get("iteration", -1)) <= last_iteration]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, p)


class _Loggers:
    """TensorBoard (when installed and enabled) and W&B (when enabled) scalars, rank 0 only."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.tb = self.wandb = None
        if not _main():
            return
        if cfg.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                log.info("mstar_fast: tensorboard is not installed; scalars go to metrics.jsonl only")
        if cfg.log.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ValueError("log.wandb is true but wandb is not installed (pip install wandb)") from e
            self.wandb = wandb.init(project=cfg.log.wandb_project, dir=str(run_dir), name=run_dir.name,
                                    config=json.loads(json.dumps(cfg, default=lambda o: vars(o))), resume="allow")

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("iteration", 0))
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and v is not None and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """The prompts of a run. ``train`` is in the order iterations chunk it (shuffled once by the seed)."""

    train: list[Prompt]
    val: list[Prompt]
    test: list[Prompt] = field(default_factory=list)
    unlabeled: list[Prompt] = field(default_factory=list)


def _synthetic(cfg: RunConfig, split: str, n: int, start: int = 0) -> list[Prompt]:
    from mstar_fast.data import SyntheticConfig, make_synthetic_split

    d = cfg.data
    if n < 1:
        raise ValueError(f"config: data.n_{split} must be >= 1 for synthetic data, got {n}")
    sc = SyntheticConfig(families=tuple(d.synthetic_families), levels=tuple(d.synthetic_levels),
                         image_size=d.synthetic_image_size, seed=d.synthetic_seed)
    return make_synthetic_split(split, n, sc, start=start)


def _read(cfg: RunConfig, source: str, limit: int, require_answer: bool, what: str) -> list[Prompt]:
    from mstar_fast.data import load_prompts

    if not Path(source).exists():
        raise ValueError(f"config: data.{what} = {source!r} does not exist")
    prompts, report = load_prompts(source, limit=limit or None, require_answer=require_answer,
                                   check_images="exists")
    if report.n_skipped:
        log.warning("mstar_fast: data.%s: %s", what, report.summary())
    if not prompts:
        raise ValueError(f"config: data.{what} = {source!r} holds no usable prompts ({report.summary()})")
    return prompts


def load_data(cfg: RunConfig) -> RunData:
    """Train / val / test / unlabeled prompts from the config (synthetic or files)."""
    d = cfg.data

    def get(source: str | None, split: str, n: int, what: str, labeled: bool = True) -> list[Prompt]:
        if source is None:
            return []
        if source == "synthetic":
            return _synthetic(cfg, split, n)
        return _read(cfg, source, n, labeled, what)

    train = get(d.train, "train", d.n_train, "train")
    val = get(d.val, "val", d.n_val, "val")
    test = get(d.test, "test", d.n_test, "test")
    unlabeled: list[Prompt] = []
    if d.unlabeled == "synthetic":
        # Train-split problems beyond the labeled ones, with their answers hidden.
        import dataclasses

        extra = _synthetic(cfg, "train", max(1, d.n_train), start=d.n_train)
        unlabeled = [dataclasses.replace(p, id=p.id + "-u", answer=None) for p in extra]
    elif d.unlabeled is not None:
        unlabeled = _read(cfg, d.unlabeled, 0, False, "unlabeled")
    if cfg.iterate.shuffle_prompts:
        random.Random(f"mstar-order/{cfg.seed}").shuffle(train)
    return RunData(train, val, test, unlabeled)


# ---------------------------------------------------------------------------------------------- models
def _load(path: str | os.PathLike, cfg: RunConfig, device: torch.device) -> tuple[Any, Any]:
    from mstar_fast.models import load_policy

    return load_policy(path, dtype=cfg.model.dtype, device=device, trust_remote_code=cfg.model.trust_remote_code,
                       attn_implementation=cfg.model.attn_implementation)


def _rollout(cfg: RunConfig, model: Any, processor: Any) -> Any:
    from mstar_fast.rollout import RolloutEngine

    r = cfg.rollout
    return RolloutEngine(model, processor, backend=r.backend, max_batch_tokens=r.max_batch_tokens,
                         max_batch_rows=r.max_batch_rows, progress=False, instruction=cfg.data.instruction,
                         include_choices=cfg.data.include_choices)


def _trainer(cfg: RunConfig, model: Any, processor: Any, **overrides: Any) -> Any:
    import dataclasses

    from mstar_fast.train import SFTCollator, SFTEngine, eos_token_id_for

    collator = SFTCollator(processor, eos_token_id=eos_token_id_for(model, processor),
                           instruction=cfg.data.instruction, include_choices=cfg.data.include_choices)
    sft = dataclasses.replace(cfg.train, **overrides)
    return SFTEngine(model, sft, collator=collator)


def _train_bar(total: int, desc: str, enabled: bool = True):
    """A tqdm bar over optimizer steps (rank 0), opened at the first step (so it does not sit above the
    sampling bar), and the on_step callback that advances it. Returns ``(closer, on_step)``."""
    if not enabled or not _main() or total <= 0:
        return None, None
    from tqdm.auto import tqdm

    box: list[Any] = []

    def on_step(engine: Any, info: Any) -> None:
        if not box:
            box.append(tqdm(total=info.call_steps, desc=desc, unit="step", leave=False))
        box[0].update(1)
        box[0].set_postfix(loss=f"{info.loss:.3f}")

    class _Closer:
        def close(self) -> None:
            if box:
                box[0].close()

    return _Closer(), on_step


def _steps_for(n_items: int, batch: int, epochs: int, steps: int | None) -> int:
    return steps if steps is not None else epochs * math.ceil(n_items / batch)


def _spread(i: int, k: int, n: int) -> bool:
    """True for k of the indices 0..n-1, spread evenly (i*k // n changes at exactly k of them)."""
    return k > 0 and (i * k) // n != ((i + 1) * k) // n


def prepare_base(cfg: RunConfig, run_dir: Path, data: RunData, device: torch.device) -> str:
    """The base policy's directory: ``model.policy``, or for ``tiny`` the demo's weak base model
    (``RUN_DIR/base``): a tiny random VLM fine-tuned for a few steps on the gold reasoning of the first
    ``model.tiny.base_prompts`` train prompts (standing in for a pre-trained VLM)."""
    if cfg.model.policy != "tiny":
        return cfg.model.policy
    base = run_dir / "base"
    if _model_complete(base):
        return str(base)
    from mstar_fast.models import make_tiny_vlm

    t = cfg.model.tiny
    init = run_dir / "base-init"
    if _main():
        # The tokenizer learns merges from the task's own texts, so responses take fewer tokens.
        corpus = [p.meta.get("cot", "") for p in data.train[:400]] + [p.question for p in data.train[:400]]
        make_tiny_vlm(t.arch, init, vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_layers=t.num_layers,
                      num_heads=t.num_heads, image_size=t.image_size, patch_size=t.patch_size,
                      vision_layers=t.vision_layers, seed=t.seed, tokenizer_corpus=corpus,
                      max_position_embeddings=512)
    D.barrier()
    t0 = time.perf_counter()
    model, processor = _load(init, cfg, device)
    gold = [p for p in sorted(data.train, key=lambda p: p.id)[: t.base_prompts] if p.meta.get("cot")]
    if not gold:
        raise ValueError("model.policy: tiny needs train prompts with gold reasoning (meta['cot']); the synthetic "
                         "task has it")
    from mstar_fast.recipe.warmup import hinted_prompt

    # A base_hint_fraction share of the gold examples (spread evenly) carries the warm-up hint in its question, so the
    # base model, like a pre-trained VLM, can make use of an answer it is given during the warm-up.
    n_hint = round(t.base_hint_fraction * len(gold))
    pairs = [(hinted_prompt(p, cfg.warmup.hint) if _spread(i, n_hint, len(gold)) else p,
              Sample(prompt_id=p.id, index=0, text=p.meta["cot"])) for i, p in enumerate(gold)]
    trainer = _trainer(cfg, model, processor, mode="continuous", lr=t.base_lr, global_batch_size=t.base_batch_size,
                       lr_schedule="constant", warmup_steps=min(10, t.base_steps // 4), total_steps=None,
                       log_every=0)
    bar, on_step = _train_bar(t.base_steps, "base model SFT", cfg.log.progress)
    rep = trainer.train_on(pairs, steps=t.base_steps, on_step=on_step)
    if bar is not None:
        bar.close()
    if _main():
        save_model_dir(model, init, base)
        _write_stage(run_dir, "base", {"steps": rep.steps, "loss": rep.mean_loss, "prompts": len(gold),
                                       "seconds": time.perf_counter() - t0})
        _print(f"base model: {rep.steps} SFT steps on the gold reasoning of {len(gold)} prompts, "
               f"loss {rep.mean_loss:.3f}")
    D.barrier()
    return str(base)


def _test_accuracy(cfg: RunConfig, rollout: Any, test: list[Prompt], seed: int) -> float | None:
    """Greedy test accuracy (rank 0 computes, every rank gets it)."""
    from mstar_fast.evaluate import evaluate

    acc = None
    if test and _main():
        res = evaluate(None, None, test, k=1, temperature=0.0, max_new_tokens=_monitor_tokens(cfg), seed=seed,
                       engine=rollout, progress=False)
        acc = res.accuracy
    return D.broadcast_object(acc)


def _monitor_tokens(cfg: RunConfig) -> int:
    return cfg.monitor.max_new_tokens or cfg.rollout.max_new_tokens


# ---------------------------------------------------------------------------------------------- stages
def warmup_stage(cfg: RunConfig, run_dir: Path, data: RunData, base_path: str, device: torch.device) -> str:
    """Stage 1 (skipped when ``RUN_DIR/warmup`` exists or ``warmup.enabled`` is false)."""
    from mstar_fast.recipe.warmup import warmup_pairs, warmup_samples

    out = run_dir / "warmup"
    if not cfg.warmup.enabled:
        return base_path
    if _model_complete(out):
        return str(out)
    w = cfg.warmup
    t0 = time.perf_counter()
    model, processor = _load(base_path, cfg, device)
    rollout = _rollout(cfg, model, processor)
    prompts = data.train[: w.n_prompts] if w.n_prompts else data.train
    base_acc = _test_accuracy(cfg, rollout, data.test, cfg.seed)
    kept, res = warmup_samples(rollout, prompts, run_dir / "samples" / "warmup.jsonl", hint=w.hint, n=w.samples,
                               temperature=w.temperature, keep_per_prompt=w.keep_per_prompt,
                               max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed + 1,
                               chunk_size=cfg.rollout.chunk_prompts, progress=cfg.log.progress)
    from mstar_fast.recipe.iteration import special_token_ids, trainable

    special = special_token_ids(processor)
    pairs = [(p, s) for p, s in warmup_pairs(prompts, kept) if trainable(s, special)]
    trainer = _trainer(cfg, model, processor, mode="continuous", lr=w.lr if w.lr is not None else cfg.train.lr,
                       lr_schedule="constant", total_steps=None)
    if not pairs:  # nothing to learn from: the base model is the warm-up model (said loudly, not hidden)
        log.warning("mstar_fast: warm-up: no correct response with the answer in the prompt; the base model is "
                    "used as the warm-up model (raise warmup.samples / warmup.n_prompts, or use a stronger base)")
    bar, on_step = _train_bar(_steps_for(len(pairs), cfg.train.global_batch_size, w.epochs, None), "warm-up SFT",
                              cfg.log.progress)
    rep = trainer.train_on(pairs, epochs=w.epochs, on_step=on_step)
    if bar is not None:
        bar.close()
    warm_acc = _test_accuracy(cfg, rollout, data.test, cfg.seed)
    if _main():
        save_model_dir(model, base_path, out)
        _write_stage(run_dir, "warmup", {"n_prompts": res.n_prompts, "n_samples": res.n_samples,
                                         "n_correct": res.n_correct, "n_prompts_kept": res.n_prompts_kept,
                                         "n_selected": res.n_selected, "steps": rep.steps, "loss": rep.mean_loss,
                                         "base_test_acc": base_acc, "warmup_test_acc": warm_acc,
                                         "seconds": time.perf_counter() - t0})
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        _print(f"warm-up: {res.n_prompts_kept}/{res.n_prompts} prompts gave a correct response "
               f"({res.n_correct} distinct correct of {res.n_samples}); SFT on {len(pairs)} for {rep.steps} steps; "
               f"test acc {pct(base_acc)} -> {pct(warm_acc)}")
    D.barrier()
    del trainer, model
    return str(out)


def prm_stage(cfg: RunConfig, run_dir: Path, data: RunData, warm_path: str, device: torch.device,
              data_only: bool = False) -> Any:
    """Stage 2: Monte-Carlo step labels + PRM training (rank 0), then every rank loads the scorer.
    Returns None when no PRM is used (or ``data_only``: stop after the labels)."""
    from mstar_fast.recipe.prm_train import load_prm

    p = cfg.prm
    lookup = data.train + data.val + data.unlabeled
    if p.path is not None:
        return _checked_scorer(load_prm(p.path, device=device, prompts=lookup), data)
    if not p.enabled:
        return None
    out = run_dir / "prm"
    if not (out / "prm_config.json").is_file() and _main():
        from mstar_fast.evaluate import grade_samples
        from mstar_fast.recipe.prm_data import monte_carlo_labels
        from mstar_fast.recipe.prm_train import train_prm
        from mstar_fast.recipe.sample import sample_to_file

        t0 = time.perf_counter()
        model, processor = _load(warm_path, cfg, device)
        rollout = _rollout(cfg, model, processor)
        # The last train prompts: the first ones are where the iterations start.
        prompts = data.train[-p.n_prompts:] if p.n_prompts else data.train
        by_id = {q.id: q for q in prompts}
        # Rank 0 alone: the other ranks wait at the barrier below, so nothing here may be collective.
        with _single_process():
            responses = sample_to_file(rollout, prompts, p.samples, run_dir / "prm_data" / "responses.jsonl",
                                       temperature=p.temperature, max_new_tokens=cfg.rollout.max_new_tokens,
                                       seed=cfg.seed + 2, transform=lambda o: grade_samples(o, by_id),
                                       chunk_size=cfg.rollout.chunk_prompts, progress=cfg.log.progress,
                                       desc="PRM responses")
        examples = monte_carlo_labels(rollout, prompts, responses, m=p.m, temperature=p.temperature,
                                      max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed + 3, soft=p.soft,
                                      out_path=run_dir / "prm_data" / "labels.jsonl", chunk_size=64)
        n_steps = sum(len(e.labels) for e in examples)
        mean_label = sum(sum(e.labels) for e in examples) / max(1, n_steps)
        t1 = time.perf_counter()
        _print(f"PRM data: {len(examples)} responses, {n_steps} steps labelled (m={p.m}, "
               f"{'soft' if p.soft else 'hard'}, mean label {mean_label:.2f}) -> {run_dir / 'prm_data'}")
        if data_only:
            D.barrier()
            return None
        if cfg.model.prm is not None:  # the labels came from the warm-up policy; the PRM starts from this model
            del rollout, model
            model, processor = _load(cfg.model.prm, cfg, device)
        train_prm(model, processor, prompts, examples, head=p.head, step_tag=p.step_tag,
                  reward_tokens=tuple(p.reward_tokens), lr=p.lr, epochs=p.epochs, batch_size=p.batch_size,
                  micro_batch_size=min(p.batch_size, 16), seed=cfg.seed, out_dir=out)
        _write_stage(run_dir, "prm", {"n_prompts": len(prompts), "n_responses": len(responses),
                                      "n_examples": len(examples), "n_steps": n_steps, "mean_label": mean_label,
                                      "seconds_data": t1 - t0, "seconds_train": time.perf_counter() - t1})
        _print(f"PRM trained in {time.perf_counter() - t1:.0f}s -> {out}")
        del model
    elif data_only:
        D.barrier()
        return None
    D.barrier()
    return _checked_scorer(load_prm(out, device=device, prompts=lookup), data)


class RoundedScorer:
    """A PRM scorer whose scores are rounded to ``decimals`` places (``Sample.score`` and ``step_scores``).

    Why: CPU matmul kernels are not bit-reproducible across processes for every shape (their blocking can
    depend on buffer alignment), so a PRM score can move in the 6th decimal between an uninterrupted run and
    a resumed one, and near-ties would then rank differently (a different top-2, a different Reward-Pass@2).
    Differences below 1e-3 in P(good step) carry no signal; rounding makes such ties exact, and exact ties
    rank by sample index everywhere (selection and Reward-Pass@2), so resumed runs select the same samples.
    """

    def __init__(self, scorer: Any, decimals: int = 3) -> None:
        self.scorer = scorer
        self.decimals = decimals

    def __getattr__(self, name: str) -> Any:  # score(), share_prefix, prompts, ... of the wrapped scorer
        return getattr(self.scorer, name)

    def __call__(self, samples: list[Sample], prompts: Any = None) -> list[float]:
        raw = self.scorer(samples, prompts=prompts)
        r = lambda v: v if v is None or math.isnan(v) else round(float(v), self.decimals)  # noqa: E731
        for s in samples:
            if s.score is not None:
                s.score = r(s.score)
            if s.step_scores is not None:
                s.step_scores = [r(v) for v in s.step_scores]
        return [r(v) for v in raw]


def _checked_scorer(scorer: Any, data: RunData) -> Any:
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


class _single_process:
    """Make the distributed helpers act as one process (rank 0 working alone while others wait)."""

    def __enter__(self) -> None:
        self._saved = D.is_distributed
        D.is_distributed = lambda: False  # type: ignore[assignment]
        self._rank, self._world = D.get_rank, D.get_world_size
        D.get_rank = lambda: 0  # type: ignore[assignment]
        D.get_world_size = lambda: 1  # type: ignore[assignment]

    def __exit__(self, *exc: object) -> None:
        D.is_distributed = self._saved  # type: ignore[assignment]
        D.get_rank, D.get_world_size = self._rank, self._world  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- the loop
def _summary(row: dict[str, Any], res: Any) -> str:
    pct = lambda v: "   -" if v is None else f"{100 * v:5.1f}%"  # noqa: E731
    s = res.selection
    lines = [
        f"── iteration {row['iteration']} ── T={row['temperature']:.2f} -> next {row['next_temperature']:.2f}  "
        f"step {row['step']}  loss {row['train_loss']:.3f}",
        f"   samples: {res.n_prompts} prompts x {res.n_samples // max(1, res.n_prompts)} = {res.n_samples}, "
        f"correct {pct(res.train_accuracy)}, duplicates {s.n_duplicates}, prompts with a correct answer "
        f"{s.n_prompts_with_correct}/{s.n_prompts}, selected {s.n_selected}",
        f"   val: greedy {pct(row['val_greedy_acc'])}  Pass@K {pct(row['val_pass_at_k'])}  "
        f"Reward-Pass@2 {pct(row['val_reward_pass_at_2'])}  Pass@K-greedy {pct(row.get('val_pass_at_k_minus_greedy'))}"
        + (f"  | test greedy {pct(row['test_greedy_acc'])}" if row.get("test_greedy_acc") is not None else ""),
        f"   time: sample+score {res.seconds.get('sample', 0):.0f}s, train {res.seconds.get('train', 0):.0f}s, "
        f"monitor {row.get('seconds_monitor', 0):.0f}s",
    ]
    return "\n".join(lines)


STOP_AFTER = ("base", "warmup", "prm-data", "prm")


def run(cfg: RunConfig, resume: bool = False, stop_after: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the recipe described by ``cfg``; returns the metrics.jsonl rows.

    ``stop_after``: ``base`` | ``warmup`` | ``prm-data`` | ``prm`` runs the stages up to that one only
    (``mstar warmup`` / ``prm-data`` / ``prm-train``); a later call on the same run directory continues.

    Raises:
        ValueError: ``resume`` is False but the run directory already holds a run (use resume), or a
            config / data problem (named in the message).
    """
    from mstar_fast.recipe.iteration import chunk_size, iteration_seed, next_chunk, run_iteration, special_token_ids
    from mstar_fast.recipe.monitor import ValidationReport, validate
    from mstar_fast.recipe.pseudo import pseudo_labeled_samples
    from mstar_fast.recipe.temperature import TemperatureController
    from mstar_fast.train.checkpoint import resume_latest

    if stop_after is not None and stop_after not in STOP_AFTER:
        raise ValueError(f"run: stop_after must be one of {STOP_AFTER} or None, got {stop_after!r}")
    t_start = time.perf_counter()
    dist = D.init_distributed()
    device = _device(cfg, dist)
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    run_dir = Path(cfg.run_dir)
    if _main():
        if not resume and stop_after is None and (run_dir / "config.yaml").exists():
            raise ValueError(f"{run_dir} already holds a run; resume it with `mstar run --resume {run_dir}` or pick "
                             "another run_dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    D.barrier()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # 0. data and base model --------------------------------------------------------------------------
    data = load_data(cfg)
    _print(f"run {run_dir}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test prompts, "
           f"{D.get_world_size()} process(es), device {device}")
    base_path = prepare_base(cfg, run_dir, data, device)
    if stop_after == "base":
        return []

    # 1. warm-up ---------------------------------------------------------------------------------------
    warm_path = warmup_stage(cfg, run_dir, data, base_path, device)
    if stop_after == "warmup":
        return []

    # 2. PRM: Monte-Carlo step labels, then training (fixed afterwards) ----------------------------------
    scorer = prm_stage(cfg, run_dir, data, warm_path, device, data_only=stop_after == "prm-data")
    if stop_after in ("prm-data", "prm"):
        return []

    # 3. self-evolving iterations ------------------------------------------------------------------------
    model, processor = _load(warm_path, cfg, device)
    rollout = _rollout(cfg, model, processor)
    trainer = _trainer(cfg, model, processor, seed=cfg.seed)
    if trainer.parallel == "fsdp":
        # Each rank samples its own share of prompts with the policy; FSDP2 all-gathers parameters inside
        # every forward, so ranks running different numbers of forwards would wait on each other forever.
        raise ValueError("train.parallel=fsdp: sampling from an FSDP-sharded policy is not supported yet; use "
                         "train.parallel=ddp (each rank holds the whole policy)")
    t = cfg.temperature
    controller = TemperatureController(t.grid, initial=t.initial, adapt_every=t.adapt_every, criterion=t.criterion)
    it, mon = cfg.iterate, cfg.monitor
    size = chunk_size(len(data.train), it.interval)
    val = data.val[: mon.n_val] if mon.n_val else data.val
    cursor, unl_cursor, start = 0, 0, 0
    ckpt_dir = run_dir / "checkpoints"
    resumed = resume_latest(trainer, ckpt_dir)  # a damaged newest checkpoint: the previous one, with a warning
    if resumed is not None:
        ckpt, extra = resumed
        start, cursor, unl_cursor = extra["iteration"] + 1, extra["cursor"], extra.get("unlabeled_cursor", 0)
        controller.load_state_dict(extra["temperature"])
        _truncate_metrics(run_dir, extra["iteration"])
        _print(f"resumed from {ckpt} (iteration {extra['iteration']}, step {trainer.global_step})")
    else:
        _truncate_metrics(run_dir, -1)
    stages = D.broadcast_object(_read_stages(run_dir))
    loggers = _Loggers(cfg, run_dir)

    def monitor(i: int) -> tuple[dict[str, Any], Any]:
        """Validation dynamics after iteration i (rank 0; broadcast), at the grid on adapt iterations."""
        t0 = time.perf_counter()
        report = None
        if _main():
            report = validate(rollout, val, k=mon.k, temperatures=controller.grid_to_sample(i), scorer=scorer,
                              seed=iteration_seed(cfg.seed, i) + 2, max_new_tokens=_monitor_tokens(cfg))
            report = report.to_dict()
        report = D.broadcast_object(report)
        return {"seconds_monitor": time.perf_counter() - t0}, ValidationReport.from_dict(report)

    def save(i: int) -> None:
        extra = {"iteration": i, "cursor": cursor, "unlabeled_cursor": unl_cursor,
                 "temperature": controller.state_dict()}
        trainer.save_checkpoint(ckpt_dir / f"iter-{i:03d}", extra=extra)
        if _main():  # keep the newest few
            old = sorted(p for p in ckpt_dir.iterdir() if p.name.startswith("iter-"))
            for p in old[: -cfg.log.keep_checkpoints]:
                shutil.rmtree(p, ignore_errors=True)
        D.barrier()

    def write_row(row: dict[str, Any]) -> None:
        if _main():
            with JsonlWriter(run_dir / METRICS_FILE) as w:
                w.write(row)
            loggers.log(row)

    base_acc = stages.get("warmup", {}).get("base_test_acc")
    warm_acc = stages.get("warmup", {}).get("warmup_test_acc")
    if start == 0:
        # Iteration 0: the warm-up policy before any self-evolving step (the start of the dynamics plots).
        extra_row, report = monitor(0)
        T = controller.temperature
        row = {"iteration": 0, "step": trainer.global_step, "temperature": T, "next_temperature": T,
               **report.metrics_row(T), "n_selected": 0, "n_samples": 0, "train_loss": None,
               "test_greedy_acc": warm_acc if warm_acc is not None else _test_accuracy(cfg, rollout, data.test,
                                                                                       cfg.seed),
               **extra_row, "elapsed": time.perf_counter() - t_start}
        if it.iterations == 0:
            row.update(stage="final", warmup_test_acc=warm_acc, base_test_acc=base_acc)
        write_row(row)
        save(0)
        start = 1
    for i in range(start, it.iterations + 1):
        T = controller.temperature
        chunk, cursor = next_chunk(data.train, cursor, size)
        extra_samples: list[Sample] = []
        extra_prompts: list[Prompt] = []
        if cfg.pseudo.enabled and i - 1 >= cfg.pseudo.start_iteration and data.unlabeled:
            n_unl = max(1, round(cfg.pseudo.ratio * len(chunk)))
            unl, unl_cursor = next_chunk(data.unlabeled, unl_cursor, n_unl)
            extra_samples, extra_prompts = pseudo_labeled_samples(
                i, unl, rollout=rollout, run_dir=run_dir, temperature=T, k=it.k,
                max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed, scorer=scorer,
                weighted=cfg.pseudo.weighted, min_agreement=cfg.pseudo.min_agreement, progress=cfg.log.progress)
        n_steps = _steps_for(len(chunk) * it.select_k, cfg.train.global_batch_size, it.epochs, it.steps)
        bar, on_step = _train_bar(n_steps, f"iteration {i}: SFT", cfg.log.progress)
        res = run_iteration(i, chunk, rollout=rollout, trainer=trainer, run_dir=run_dir, temperature=T, k=it.k,
                            max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed, scorer=scorer,
                            select_method=it.select, select_k=it.select_k, threshold=it.threshold, dedup=it.dedupe,
                            require_format=it.require_format,
                            epochs=it.epochs, steps=it.steps, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                            min_p=cfg.rollout.min_p, chunk_prompts=cfg.rollout.chunk_prompts,
                            progress=cfg.log.progress, extra_samples=extra_samples,
                            extra_prompts=extra_prompts, on_step=on_step, special_ids=special_token_ids(processor))
        if bar is not None:
            bar.close()
        extra_row, report = monitor(i)
        next_T = controller.update(i, report)
        final = i == it.iterations
        test_acc = None
        if final or (mon.test_every and i % mon.test_every == 0):
            test_acc = _test_accuracy(cfg, rollout, data.test, cfg.seed)
        row = {"iteration": i, "step": trainer.global_step, "temperature": T, "next_temperature": next_T,
               **report.metrics_row(T), "n_selected": res.selection.n_selected, "n_samples": res.n_samples,
               "n_prompts": res.n_prompts, "n_duplicates": res.selection.n_duplicates,
               "train_sample_acc": res.train_accuracy, "train_loss": res.loss, "train_steps": res.steps,
               "test_greedy_acc": test_acc, "seconds_sample": res.seconds.get("sample"),
               "seconds_train": res.seconds.get("train"), **extra_row, "elapsed": time.perf_counter() - t_start}
        if controller.should_adapt(i):
            row["val_reward_pass_at_2_by_t"] = {f"{k:g}": v for k, v in report.metric("reward_pass_at_2").items()}
            row["val_pass_at_k_by_t"] = {f"{k:g}": v for k, v in report.metric("pass_at_k").items()}
        if final:
            row.update(stage="final", warmup_test_acc=warm_acc, base_test_acc=base_acc)
        write_row(row)
        _print(_summary(row, res))
        save(i)
    loggers.close()
    rows = read_metrics(run_dir) if _main() else []
    return D.broadcast_object(rows)


def resume(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Resume the run in ``run_dir`` with its saved ``config.yaml``."""
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise ValueError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    cfg = load_config(p)
    cfg.run_dir = str(run_dir)
    return run(cfg, resume=True)
