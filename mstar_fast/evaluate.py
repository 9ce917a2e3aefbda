"""Evaluation of a policy on a labeled dataset, and the ``mstar eval`` command.

Greedy decoding when ``k == 1`` and no temperature is given; otherwise K samples per prompt at a
temperature (1.0 by default, the paper's static T). Every response goes through the recipe's own reward:
``rewards.extract_answer`` then ``rewards.check_answer`` against the prompt's gold answer, choices and
precision. Reported, overall and per category (``Prompt.meta["category"]``, e.g. MathVista's FQA / GPS /
MWP / TQA / VQA or the synthetic task's sub-tasks):

* ``accuracy``: the mean over prompts of the share of correct samples (greedy accuracy when k == 1;
  unbiased Pass@1 when k > 1);
* ``pass_at_k``: some sample correct (``metrics.pass_at_k`` with k = K), when k > 1;
* ``majority_vote_accuracy``: the most frequent extracted answer (``rewards.majority_vote``: equivalent
  answers such as ``0.5`` / ``1/2``, or a letter and its option text, are one vote) matches, when k > 1.

Generation goes through :class:`mstar_fast.rollout.RolloutEngine`, which itself falls back to the
model's own ``generate`` for models without a reusable KV cache (:mod:`mstar_fast.rollout.fallback`).
Predictions are appended to a JSONL file chunk by chunk as they are produced
(:class:`mstar_fast.data.JsonlWriter`), so an interrupted evaluation keeps what it finished and
``resume=True`` continues it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mstar_fast import metrics
from mstar_fast.config import DataConfig
from mstar_fast.constants import PROMPT_SOURCES, resolve
from mstar_fast.data.jsonl import JsonlWriter, iter_jsonl
from mstar_fast.data.readers import load_prompts
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.loading import load_policy, resolve_device
from mstar_fast.rewards import check_answer, grade_samples, majority_vote
from mstar_fast.rollout import RolloutEngine

__all__ = ["CategoryStats", "EvalResult", "evaluate", "load_eval_prompts", "register_cli", "run_eval_cli"]

log = logging.getLogger(__name__)

NO_CATEGORY = "(none)"
DEFAULT_SYNTHETIC_N = 500  # the synthetic task's default test size (make_synthetic_dataset)


# ----------------------------------------------------------------------------------------------- results
@dataclass
class CategoryStats:
    """Metrics of one group of prompts (fractions in [0, 1]; None where k == 1)."""

    n: int
    accuracy: float
    pass_at_k: float | None = None
    majority_vote_accuracy: float | None = None


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        n: number of prompts.
        k: samples per prompt.
        temperature: sampling temperature (0.0 = greedy).
        accuracy: mean over prompts of the share of correct samples (greedy accuracy when k == 1).
        pass_at_k: share of prompts with a correct sample among the K (None when k == 1).
        majority_vote_accuracy: share of prompts whose majority answer is correct (None when k == 1).
        per_category: category -> :class:`CategoryStats` (prompts without ``meta["category"]`` go to
            ``"(none)"``), sorted by name.
        n_errors: samples that could not be generated (``finish_reason == "error"``; counted wrong).
        samples: all ``n * k`` samples, grouped by prompt in input order, graded.
    """

    n: int
    k: int
    temperature: float
    accuracy: float
    pass_at_k: float | None
    majority_vote_accuracy: float | None
    per_category: dict[str, CategoryStats] = field(default_factory=dict)
    n_errors: int = 0
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def category_accuracy(self) -> dict[str, float]:
        """category -> accuracy."""
        return {c: s.accuracy for c, s in self.per_category.items()}

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (samples only when asked: they can be large)."""
        d: dict[str, Any] = {
            "n": self.n, "k": self.k, "temperature": self.temperature, "accuracy": self.accuracy,
            "pass_at_k": self.pass_at_k, "majority_vote_accuracy": self.majority_vote_accuracy,
            "n_errors": self.n_errors,
            "per_category": {c: vars(s).copy() for c, s in self.per_category.items()},
        }
        if include_samples:
            d["samples"] = [s.to_dict() for s in self.samples]
        return d

    def to_markdown(self, title: str | None = None) -> str:
        """A Markdown table: one row per category, then the overall row; percentages with one decimal."""
        pct = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
        mode = "greedy" if self.temperature == 0 and self.k == 1 else f"k={self.k}, T={self.temperature:g}"
        cols = ["category", "n", "accuracy"]
        if self.k > 1:
            cols += [f"pass@{self.k}", f"maj@{self.k}"]
        lines = []
        if title:
            lines += [f"### {title}", ""]
        lines += [f"Decoding: {mode}. Accuracies in %."
                  + (f" {self.n_errors} samples failed to generate (counted wrong)." if self.n_errors else ""), ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]

        def row(name: str, s: CategoryStats) -> str:
            cells = [name, str(s.n), pct(s.accuracy)]
            if self.k > 1:
                cells += [pct(s.pass_at_k), pct(s.majority_vote_accuracy)]
            return "| " + " | ".join(cells) + " |"

        if not (len(self.per_category) == 1 and NO_CATEGORY in self.per_category):
            lines += [row(c, s) for c, s in self.per_category.items()]
        lines.append(row("**all**", CategoryStats(self.n, self.accuracy, self.pass_at_k, self.majority_vote_accuracy)))
        return "\n".join(lines) + "\n"


def _stats(prompts: Sequence[Prompt], groups: Sequence[Sequence[Sample]], k: int) -> CategoryStats:
    """Metrics of ``prompts`` whose samples are ``groups`` (one group of k graded samples per prompt)."""
    correct = [bool(s.correct) for g in groups for s in g]
    offsets = [i * k for i in range(len(groups) + 1)]
    if not groups:
        return CategoryStats(0, math.nan, None if k == 1 else math.nan, None if k == 1 else math.nan)
    # greedy_accuracy with offsets is the per-prompt mean, then the mean over prompts.
    acc = metrics.greedy_accuracy(correct, offsets)
    if k == 1:
        return CategoryStats(len(groups), acc)
    pak = metrics.pass_at_k(correct, offsets, k)
    hits = 0
    for p, g in zip(prompts, groups):
        winner = majority_vote([s.extracted for s in g], p.choices)
        hits += bool(check_answer(winner, p))
    return CategoryStats(len(groups), acc, float(pak), hits / len(groups))


def _summarise(prompts: Sequence[Prompt], groups: Sequence[Sequence[Sample]], k: int,
               temperature: float) -> EvalResult:
    overall = _stats(prompts, groups, k)
    cats: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        c = (p.meta or {}).get("category")
        cats.setdefault(NO_CATEGORY if c is None else str(c), []).append(i)
    per_cat = {c: _stats([prompts[i] for i in idx], [groups[i] for i in idx], k) for c, idx in sorted(cats.items())}
    samples = [s for g in groups for s in g]
    return EvalResult(n=len(prompts), k=k, temperature=temperature, accuracy=overall.accuracy,
                      pass_at_k=overall.pass_at_k, majority_vote_accuracy=overall.majority_vote_accuracy,
                      per_category=per_cat, n_errors=sum(s.finish_reason == "error" for s in samples),
                      samples=samples)


# -------------------------------------------------------------------------------------------- evaluation
def _prediction_line(s: Sample, p: Prompt, settings: dict[str, Any]) -> dict[str, Any]:
    """One JSONL line, led by what a user audits a reward with: ``prompt_id``, ``index``, the ``gold`` answer,
    the ``extracted`` answer and the verdict (``correct``); then the rest of the sample (without token ids,
    which only bloat the file), the category and the generation settings (``eval_seed``,
    ``eval_max_new_tokens``; checked on resume), so the file is readable on its own."""
    d: dict[str, Any] = {"prompt_id": s.prompt_id, "index": s.index, "gold": p.answer, "extracted": s.extracted,
                         "correct": s.correct}
    d.update((k, v) for k, v in s.to_dict().items() if k not in d)
    d["token_ids"] = None
    d["category"] = (p.meta or {}).get("category")
    d.update(settings)
    return d


def _read_done(path: Path, prompts: Sequence[Prompt], k: int, temperature: float,
               settings: dict[str, Any]) -> tuple[dict[str, list[Sample]], set[tuple[str, int]]]:
    """What an earlier, interrupted evaluation left in ``path``: the prompts with all k samples written,
    and the ``(prompt_id, index)`` keys of every line (so a partly written prompt, regenerated whole, does
    not get its lines twice)."""
    ids = {p.id for p in prompts}
    found: dict[str, dict[int, Sample]] = {}
    keys: set[tuple[str, int]] = set()
    for d in iter_jsonl(path):
        s = Sample.from_dict(d)
        if s.prompt_id not in ids or not 0 <= s.index < k:
            continue
        for name, value in settings.items():
            if name in d and d[name] != value:
                raise ValueError(f"evaluate(resume=True): {path} was written with {name}={d[name]!r}, not "
                                 f"{value!r}; use another file or resume=False")
        if s.finish_reason != "error" and abs(float(s.temperature) - temperature) > 1e-9:
            raise ValueError(f"evaluate(resume=True): {path} holds samples at temperature {s.temperature}, "
                             f"not {temperature}; use another file or resume=False")
        found.setdefault(s.prompt_id, {})[s.index] = s
        keys.add((s.prompt_id, s.index))
    return {pid: [g[i] for i in range(k)] for pid, g in found.items() if len(g) == k}, keys


def evaluate(
    model: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    k: int = 1,
    temperature: float | None = None,
    max_new_tokens: int = 256,
    seed: int = 0,
    out_jsonl: str | os.PathLike | None = None,
    engine: Any = None,
    progress: bool = True,
    resume: bool = False,
    chunk_size: int = 256,
    stop: str | Sequence[str] | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Evaluate a policy on labeled prompts.

    Args:
        model, processor: the policy (e.g. from :func:`mstar_fast.models.load_policy`); unused when
            ``engine`` is given (may then be None).
        prompts: labeled prompts (unique ids; a prompt without ``answer`` counts as wrong).
        k: samples per prompt (>= 1).
        temperature: None -> greedy (0.0) when k == 1, else 1.0; or an explicit value >= 0.
        max_new_tokens: most tokens per response.
        seed: run seed (sample i of prompt p depends only on (seed, p.id, i)).
        out_jsonl: file that receives one line per prediction (the sample, ``gold`` and ``category``),
            appended chunk by chunk as they are produced. Replaced at the start unless ``resume``.
        engine: an existing rollout engine (anything with ``generate(prompts, n, temperature=,
            max_new_tokens=, stop=, seed=)``); default a new :class:`~mstar_fast.rollout.RolloutEngine`.
        progress: show a progress bar over prompts.
        resume: reuse the prompts already fully written to ``out_jsonl`` (same temperature, seed and
            max_new_tokens, else ValueError) and generate only the rest.
        chunk_size: prompts per engine call; predictions are written after each call.
        stop: stop string(s) passed to the engine.
        engine_options: keyword arguments for the default engine. By default ``include_choices`` is on
            (options appended to the question as ``(A) ...`` lines) unless some prompt already has its
            options written in the question (``meta["choices_in_question"]``, MathV360K style).

    Returns:
        :class:`EvalResult` with the graded samples in prompt order.

    Raises:
        ValueError: k < 1, a negative temperature, chunk_size < 1, repeated prompt ids, ``resume``
            without ``out_jsonl`` or with a file written at another temperature, seed or max_new_tokens.
    """
    prompts = list(prompts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"evaluate: k must be an int >= 1, got {k!r}")
    if temperature is None:
        temperature = 0.0 if k == 1 else 1.0
    if not isinstance(temperature, numbers.Real) or isinstance(temperature, bool) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"evaluate: temperature must be a finite number >= 0, got {temperature!r}")
    temperature = float(temperature)
    if chunk_size < 1:
        raise ValueError(f"evaluate: chunk_size must be >= 1, got {chunk_size}")
    if resume and out_jsonl is None:
        raise ValueError("evaluate: resume=True needs out_jsonl")
    by_id: dict[str, Prompt] = {}
    for p in prompts:
        if p.id in by_id:
            raise ValueError(f"evaluate: prompt id {p.id!r} appears twice; ids must be unique (seeds and the "
                             "predictions file are keyed by them)")
        by_id[p.id] = p

    settings = {"eval_seed": int(seed), "eval_max_new_tokens": int(max_new_tokens)}
    done: dict[str, list[Sample]] = {}
    written: set[tuple[str, int]] = set()
    path = Path(out_jsonl) if out_jsonl is not None else None
    if path is not None:
        if resume and path.exists():
            done, written = _read_done(path, prompts, k, temperature, settings)
            for pid, g in done.items():
                grade_samples(g, by_id)  # re-grade: the answer checker may have improved since
            log.info("evaluate: %d of %d prompts already in %s", len(done), len(prompts), path)
        elif path.exists():
            path.unlink()
    if engine is None:
        opts = dict(engine_options or {})
        opts.setdefault("include_choices", not any(p.choices and (p.meta or {}).get("choices_in_question")
                                                   for p in prompts))
        opts.setdefault("progress", False)  # one bar over the whole evaluation instead of one per chunk
        engine = RolloutEngine(model, processor, **opts)

    todo = [p for p in prompts if p.id not in done]
    groups: dict[str, list[Sample]] = dict(done)
    writer = JsonlWriter(path) if path is not None else None
    try:
        with tqdm(total=len(prompts), initial=len(done), desc="eval", unit="prompt", disable=not progress,
                  leave=False) as bar:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                out = engine.generate(chunk, n=k, temperature=temperature, max_new_tokens=max_new_tokens,
                                      stop=stop, seed=seed)
                if len(out) != len(chunk) * k:
                    raise RuntimeError(f"evaluate: the engine returned {len(out)} samples for {len(chunk)} "
                                       f"prompts x {k}")
                grade_samples(out, by_id)
                for i, p in enumerate(chunk):
                    groups[p.id] = out[i * k:(i + 1) * k]
                if writer is not None:
                    for s in out:
                        if (s.prompt_id, s.index) not in written:  # deterministic: the line is the same
                            writer.write(_prediction_line(s, by_id[s.prompt_id], settings))
                bar.update(len(chunk))
    finally:
        if writer is not None:
            writer.close()
    return _summarise(prompts, [groups[p.id] for p in prompts], k, temperature)


# ---------------------------------------------------------------------------------------------------- CLI
def load_eval_prompts(data: str, *, split: str | None = None, limit: int | None = None,
                      root: str | None = None) -> tuple[list[Prompt], str]:
    """Prompts for ``mstar eval``: a dataset file / directory readable by
    :func:`mstar_fast.data.load_prompts` (rows without a gold answer are skipped and reported), or the
    built-in synthetic task as ``synthetic[:SPLIT[:N]]`` (split default ``--split`` or ``test``; N default
    ``--limit`` or 500).

    Returns:
        ``(prompts, name)``; ``name`` is a short label of the data for output paths and titles.
    """
    m = re.fullmatch(r"synthetic(?::([A-Za-z]+))?(?::(\d+))?", data)
    if m:
        sp = m.group(1) or split or "test"
        n = int(m.group(2)) if m.group(2) else DEFAULT_SYNTHETIC_N
        if limit is not None:
            n = min(n, limit)
        return resolve(PROMPT_SOURCES["synthetic"])(sp, n, DataConfig()), f"synthetic-{sp}"
    prompts, report = load_prompts(data, root=root, split=split, limit=limit, require_answer=True)
    print(report.summary(), file=sys.stderr)
    if not prompts:
        raise ValueError(f"mstar eval: no usable prompts in {data} ({report.summary()})")
    name = Path(data).stem + (f"-{split}" if split else "")
    return prompts, name


def run_eval_cli(args: argparse.Namespace) -> int:
    """Handler of ``mstar eval``: load the model and data, evaluate, print the Markdown table and write
    ``predictions.jsonl``, ``results.md`` and ``results.json`` to ``--out``."""
    prompts, data_name = load_eval_prompts(args.data, split=args.split, limit=args.limit, root=args.root)
    device = resolve_device(args.device, what="--device")
    dtype = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    model, processor = load_policy(args.model_dir, dtype=dtype, device=device,
                                   trust_remote_code=args.trust_remote_code)
    model_name = Path(args.model_dir).resolve().name
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{model_name}__{data_name}"
    out.mkdir(parents=True, exist_ok=True)
    opts: dict[str, Any] = {}
    if args.instruction:
        opts["instruction"] = args.instruction
    if args.include_choices is not None:
        opts["include_choices"] = args.include_choices
    result = evaluate(model, processor, prompts, k=args.k, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, out_jsonl=out / "predictions.jsonl",
                      progress=not args.no_progress, resume=args.resume, engine_options=opts)
    table = result.to_markdown(title=f"{model_name} on {data_name}")
    (out / "results.md").write_text(table, encoding="utf-8")
    summary = dict(result.to_dict(), model=str(args.model_dir), data=args.data, seed=args.seed,
                   max_new_tokens=args.max_new_tokens)
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(f"predictions: {out / 'predictions.jsonl'}\nresults: {out / 'results.md'}")
    return 0


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to an ``argparse`` subparsers object; returns its parser (the handler
    is ``args.func``)."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model directory on a dataset (accuracy per category, Pass@K, majority vote)",
        description="Greedy (--k 1) or K-sample evaluation. DATA is a dataset file or directory "
                    "(JSONL/JSON/Parquet/datasets; MathV360K, flat or MathVista layout) or synthetic[:SPLIT[:N]] "
                    "for the built-in task.")
    p.add_argument("model_dir", help="model directory (or hub id) loadable by mstar_fast.models.load_policy")
    p.add_argument("data", help="dataset path, or synthetic[:SPLIT[:N]] (e.g. synthetic:test)")
    p.add_argument("--k", type=int, default=1, help="samples per prompt (default 1: greedy)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: greedy for k=1, else 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--out", default=None, help="output directory (default runs/eval/<model>__<data>)")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N prompts")
    p.add_argument("--split", default=None, help="split of a saved DatasetDict / Parquet directory, or of the "
                                                 "synthetic task")
    p.add_argument("--root", default=None, help="directory that relative image paths are resolved against")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="weight dtype (default bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code shipped with the checkpoint")
    p.add_argument("--instruction", default=None,
                   help="text appended to every question (use the run's data.instruction)")
    p.add_argument("--include-choices", action=argparse.BooleanOptionalAction, default=None,
                   help="append the options to the question as (A) ... lines; default: on unless the data "
                        "writes them in the question (MathV360K); match the run's data.include_choices")
    p.add_argument("--resume", action="store_true", help="continue an interrupted evaluation in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval_cli)
    return p
