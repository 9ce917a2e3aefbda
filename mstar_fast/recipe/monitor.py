"""Validation monitor: the training dynamics of docs/recipe.md ("Dynamics and the automatic temperature").

On a held-out labeled set (the paper: 250 prompts), with K samples per prompt at each temperature asked for:

* greedy accuracy;
* Pass@K (``metrics.pass_at_k`` with k = K: some sample correct) and Pass@K minus greedy accuracy;
* Reward-Pass@2 (``metrics.reward_pass_at_k``, k = 2): rank **all** K samples of a prompt by their PRM score
  (min over steps), with no answer filter; a hit when one of the top 2 is correct. None without a scorer;
* the mean sample accuracy (unbiased Pass@1 at that temperature).

**One engine call.** Every temperature of the grid and the greedy pass are sampled in a single batched
``engine.generate`` call with per-prompt temperatures: each validation prompt is replicated once per
temperature under the id ``"<id>@T<t>"`` (and once as ``"<id>@greedy"`` at temperature 0), K samples each.
The distinct ids give each temperature its own sample seeds (the engine derives seeds from
``(seed, prompt id, index)``), and the rollout engine encodes and prefills every replica's image and
prompt and keeps all rows in one running batch, instead of one pass per temperature.

Greedy is folded into that call as temperature 0 with the same n = K (the engine takes one n per call).
The built-in engine decodes a temperature-0 prompt once and copies it, so this costs one greedy decode per
prompt; only sample index 0 of each greedy replica is kept in the report.

PRM scoring runs once, with the *original* prompt ids, so a :class:`~mstar_fast.prm.PRMScorer` finds its
prompts and prefills each prompt once for all temperatures. It scores only what can change Reward-Pass@2:
the K samples of a prompt at one temperature whose correctness is mixed (when all K are correct, or all
wrong, the top 2 hold a correct one or not whatever the scores), and a response text repeated among those
K once (a PRM gives one text one score). On the demo most blocks at the high temperatures of the grid are
all wrong, so this removes most of the grid's PRM forwards; the metrics are the same.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mstar_fast import metrics
from mstar_fast.config import MonitorConfig
from mstar_fast.constants import REWARD_K
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.evaluate import evaluate
from mstar_fast.protocols import Rollout, Scorer
from mstar_fast.rewards import grade_samples
from mstar_fast.train.distributed import World

__all__ = ["GREEDY_SUFFIX", "TemperatureMetrics", "ValidationReport", "greedy_test_accuracy", "monitor_stage",
           "replica_id", "validate"]

GREEDY_SUFFIX = "@greedy"
_METRICS = ("pass_at_k", "reward_pass_at_2", "sample_accuracy", "pass_at_k_minus_greedy")


def replica_id(prompt_id: str, temperature: float) -> str:
    """Id of a prompt's replica at ``temperature`` in the batched validation call (0 = greedy)."""
    return prompt_id + GREEDY_SUFFIX if temperature == 0 else f"{prompt_id}@T{temperature:g}"


@dataclass
class TemperatureMetrics:
    """Validation metrics at one temperature (fractions in [0, 1]).

    Attributes:
        temperature: the sampling temperature.
        pass_at_k: share of prompts with a correct sample among the K.
        reward_pass_at_2: share of prompts where one of the 2 highest-PRM-scored samples (over all K) is
            correct; None when no scorer was given.
        sample_accuracy: mean correctness of the samples (each prompt weighs the same: K samples each).
        pass_at_k_minus_greedy: ``pass_at_k - greedy_accuracy`` (the exploration headroom).
    """

    temperature: float
    pass_at_k: float
    reward_pass_at_2: float | None
    sample_accuracy: float
    pass_at_k_minus_greedy: float


def _key(t: Any) -> str:
    return f"{float(t):g}"


@dataclass
class ValidationReport:
    """What :func:`validate` measured. ``to_dict()`` / ``from_dict()`` round-trip through JSON (samples
    excluded).

    Attributes:
        k: samples per prompt and temperature.
        n_prompts: validation prompts.
        greedy_accuracy: accuracy of greedy decoding.
        per_temperature: temperature -> :class:`TemperatureMetrics`, ascending.
        seed: the run seed of the sampling call.
        samples: graded samples: one greedy sample per prompt (temperature 0.0, id ``"<id>@greedy"``), then
            K per prompt for each temperature (id ``"<id>@T<t>"``), with ``meta["source_id"]`` the original
            prompt id and ``score`` / ``step_scores`` set where the scorer scored them (samples of
            temperature blocks whose K samples are all correct or all wrong are not scored: module doc).
    """

    k: int
    n_prompts: int
    greedy_accuracy: float
    per_temperature: dict[float, TemperatureMetrics]
    seed: int = 0
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def temperatures(self) -> list[float]:
        return sorted(self.per_temperature)

    def at(self, temperature: float) -> TemperatureMetrics:
        """The metrics at ``temperature`` (matched within 1e-6).

        Raises:
            KeyError: the temperature was not validated.
        """
        for t, m in self.per_temperature.items():
            if abs(t - float(temperature)) <= 1e-6:
                return m
        raise KeyError(f"ValidationReport: temperature {temperature} was not validated (have {self.temperatures})")

    def metric(self, name: str) -> dict[float, float | None]:
        """``temperature -> value`` of one metric: ``pass_at_k``, ``reward_pass_at_2``,
        ``sample_accuracy`` or ``pass_at_k_minus_greedy`` (what the temperature controller ranks)."""
        if name not in _METRICS:
            raise ValueError(f"ValidationReport.metric: unknown metric {name!r}; expected one of {_METRICS}")
        return {t: getattr(m, name) for t, m in sorted(self.per_temperature.items())}

    @property
    def pass_at_k_minus_greedy(self) -> dict[float, float]:
        """``temperature -> Pass@K - greedy accuracy``."""
        return self.metric("pass_at_k_minus_greedy")  # type: ignore[return-value]

    def metrics_row(self, temperature: float) -> dict[str, float | None]:
        """The ``metrics.jsonl`` fields (README, "The recipe on your model and data") at the temperature the policy samples at:
        ``val_greedy_acc``, ``val_pass_at_k``, ``val_reward_pass_at_2``, plus ``val_pass_at_k_minus_greedy``
        and ``val_sample_acc``."""
        m = self.at(temperature)
        return {"val_greedy_acc": self.greedy_accuracy, "val_pass_at_k": m.pass_at_k,
                "val_reward_pass_at_2": m.reward_pass_at_2, "val_pass_at_k_minus_greedy": m.pass_at_k_minus_greedy,
                "val_sample_acc": m.sample_accuracy}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; temperatures become string keys (``"0.7"``)."""
        return {"k": self.k, "n_prompts": self.n_prompts, "seed": self.seed, "greedy_accuracy": self.greedy_accuracy,
                "per_temperature": {_key(t): dataclasses.asdict(m) for t, m in sorted(self.per_temperature.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidationReport:
        per = {float(t): TemperatureMetrics(**m) for t, m in d["per_temperature"].items()}
        return cls(k=int(d["k"]), n_prompts=int(d["n_prompts"]), greedy_accuracy=float(d["greedy_accuracy"]),
                   per_temperature=per, seed=int(d.get("seed", 0)))


def _check_temperatures(temperatures: Sequence[float]) -> list[float]:
    temps = [temperatures] if isinstance(temperatures, numbers.Real) else list(temperatures)
    if not temps:
        raise ValueError("validate: temperatures is empty")
    out = []
    for t in temps:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"validate: temperatures must be finite and > 0 (greedy is always measured), got {t!r}")
        if any(abs(float(t) - u) <= 1e-6 for u in out):
            raise ValueError(f"validate: temperature {t} appears twice")
        out.append(float(t))
    return sorted(out)


def _score(scorer: Scorer, samples: list[Sample], prompts: list[Prompt], k: int) -> list[float]:
    """PRM scores of ``samples`` (graded, replica ids, ``k`` per replica in order) computed under the original
    prompt ids, for the samples whose ranking can change Reward-Pass@2 (module doc: blocks of mixed
    correctness, each distinct text of a block once); the other samples get NaN here and keep
    ``score = None``."""
    todo: list[list[Sample]] = []  # samples sharing one scorer call: a block's copies of one text
    for a in range(0, len(samples), k):
        block = samples[a:a + k]
        if 0 < sum(bool(s.correct) for s in block) < len(block):
            by_text: dict[str, list[Sample]] = {}
            for s in block:
                by_text.setdefault(s.text, []).append(s)
            todo.extend(by_text.values())
    views = [dataclasses.replace(group[0], prompt_id=group[0].meta["source_id"]) for group in todo]
    raw = scorer(views, prompts=prompts) if views else []
    if len(raw) != len(views):
        raise ValueError(f"validate: the scorer returned {len(raw)} scores for {len(views)} samples")
    position = {id(s): i for i, s in enumerate(samples)}
    scores = [math.nan] * len(samples)
    for group, view, v in zip(todo, views, raw):
        sc = math.nan if v is None else float(v)
        for s in group:
            s.score = sc
            # a PRMScorer writes step scores on the objects it was given
            s.step_scores = None if view.step_scores is None else list(view.step_scores)
            scores[position[id(s)]] = sc
    return scores


def validate(
    engine: Rollout,
    prompts: Sequence[Prompt],
    *,
    k: int,
    temperatures: Sequence[float],
    scorer: Scorer | None = None,
    seed: int = 0,
    max_new_tokens: int = 256,
    stop: str | Sequence[str] | None = None,
) -> ValidationReport:
    """Greedy accuracy and, per temperature, Pass@K, Reward-Pass@2 and sample accuracy on labeled prompts,
    sampled in one batched ``engine.generate`` call (see the module docstring).

    Args:
        engine: a rollout engine (``generate(prompts, n, temperature=<per-prompt list>, max_new_tokens=,
            stop=, seed=) -> list[Sample]``, grouped by prompt in input order).
        prompts: validation prompts with gold answers and unique ids.
        k: samples per prompt and temperature (the paper: K = 16).
        temperatures: temperatures to sample (each > 0), e.g. ``TemperatureController.grid_to_sample(i)``.
        scorer: a PRM scorer (:class:`~mstar_fast.protocols.Scorer`: ``scorer(samples, prompts=) -> [L]
            floats``, response score = min over steps), given the samples with their original prompt ids
            and the original prompts. None: Reward-Pass@2 is None.
        seed: run seed (use a different one per iteration for fresh samples).
        max_new_tokens: most tokens per response.
        stop: stop string(s) passed to the engine.

    Returns:
        A :class:`ValidationReport`.

    Raises:
        ValueError: k < 1, no prompts, repeated prompt ids, a prompt without a gold answer, an empty,
            repeated or non-positive temperature, or a scorer returning the wrong number of scores.
    """
    prompts = list(prompts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"validate: k must be an int >= 1, got {k!r}")
    if not prompts:
        raise ValueError("validate: no prompts")
    temps = _check_temperatures(temperatures)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("validate: prompt ids must be unique (sample seeds derive from them)")
    unlabeled = [p.id for p in prompts if p.answer is None]
    if unlabeled:
        raise ValueError(f"validate: {len(unlabeled)} prompts have no gold answer (first: {unlabeled[0]!r}); "
                         "the validation set must be labeled")

    # Replicas: all greedy ones first, then temperature by temperature; prompt order kept inside each block.
    blocks = [0.0, *temps]
    replicas = [dataclasses.replace(p, id=replica_id(p.id, t)) for t in blocks for p in prompts]
    per_prompt_t = [t for t in blocks for _ in prompts]
    out = engine.generate(replicas, n=k, temperature=per_prompt_t, max_new_tokens=max_new_tokens, stop=stop,
                          seed=seed)
    if len(out) != len(replicas) * k:
        raise ValueError(f"validate: the engine returned {len(out)} samples for {len(replicas)} prompts x {k}")
    for i, s in enumerate(out):
        s.meta["source_id"] = prompts[(i // k) % len(prompts)].id
    grade_samples(out, {r.id: r for r in replicas})

    n = len(prompts)
    greedy = [out[i * k] for i in range(n)]  # index 0 of each greedy replica; the other k-1 are copies
    sampled = out[n * k:]
    greedy_acc = metrics.greedy_accuracy([bool(s.correct) for s in greedy])
    scores = _score(scorer, sampled, prompts, k) if scorer is not None else None

    offsets = list(range(0, n * k + 1, k))
    per_t: dict[float, TemperatureMetrics] = {}
    for j, t in enumerate(temps):
        block = slice(j * n * k, (j + 1) * n * k)
        correct = [bool(s.correct) for s in sampled[block]]
        pak = float(metrics.pass_at_k(correct, offsets, k))
        rp2 = float(metrics.reward_pass_at_k(scores[block], correct, offsets, k=REWARD_K)) if scores is not None \
            else None
        per_t[t] = TemperatureMetrics(temperature=t, pass_at_k=pak, reward_pass_at_2=rp2,
                                      sample_accuracy=sum(correct) / len(correct),
                                      pass_at_k_minus_greedy=pak - greedy_acc)
    return ValidationReport(k=k, n_prompts=n, greedy_accuracy=greedy_acc, per_temperature=per_t, seed=int(seed),
                            samples=greedy + sampled)


def greedy_test_accuracy(rollout: Rollout, test: Sequence[Prompt], max_new_tokens: int, seed: int,
                  world: World) -> float | None:
    """Greedy accuracy on ``test`` (rank 0 computes, every rank gets it); None without test prompts."""
    acc = None
    if test and world.is_main:
        acc = evaluate(None, None, test, k=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed,
                       engine=rollout, progress=False).accuracy
    return world.broadcast(acc)


def monitor_stage(mon: MonitorConfig, rollout: Rollout, val: Sequence[Prompt], *, temperatures: Sequence[float],
                  scorer: Scorer | None, seed: int, max_new_tokens: int, world: World) -> ValidationReport:
    """:func:`validate` with the ``monitor`` section's K on the first ``monitor.n_val`` prompts of ``val`` (0:
    all), on rank 0; its report on every rank (through JSON on every rank alike, so all ranks hold the same
    floats). ``max_new_tokens``: used when ``monitor.max_new_tokens`` is None."""
    report = None
    if world.is_main:
        report = validate(rollout, val[: mon.n_val] if mon.n_val else val, k=mon.k, temperatures=temperatures,
                          scorer=scorer, seed=seed, max_new_tokens=mon.max_new_tokens or max_new_tokens).to_dict()
    return ValidationReport.from_dict(world.broadcast(report))
