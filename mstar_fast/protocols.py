"""The typed seams of the recipe: what a stage needs from a rollout engine, a PRM scorer and a trainer.

Structural types (``typing.Protocol``): :class:`mstar_fast.rollout.RolloutEngine`, the vLLM engine,
:class:`mstar_fast.prm.PRMScorer` and :class:`mstar_fast.train.SFTEngine` satisfy them without inheriting
from them, and so can a test's stand-in or another trainer (an adapter for TRL, verl, ...). A leaf: it
imports only the records from the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from mstar_fast.data.records import Prompt, Sample

__all__ = ["Rollout", "Scorer", "Trainer", "TrainResult"]


@runtime_checkable
class Rollout(Protocol):
    """Samples responses: ``generate`` returns ``len(prompts) * n`` samples, grouped by prompt in input
    order, index 0..n-1; sample i of prompt p depends only on ``(seed, p.id, i)``. ``temperature``,
    ``top_p``, ``top_k`` and ``min_p`` are one value or one per prompt."""

    def generate(self, prompts: Sequence[Prompt], n: int, temperature: float | Sequence[float] = 1.0,
                 top_p: float | Sequence[float] = 1.0, top_k: int | Sequence[int] = 0,
                 min_p: float | Sequence[float] = 0.0, max_new_tokens: int = 256,
                 stop: str | Sequence[str] | None = None, seed: int = 0) -> list[Sample]: ...


@runtime_checkable
class Scorer(Protocol):
    """A PRM: one score per sample (the response score, min over its steps; NaN for a response without
    steps), in order; also writes ``sample.score`` and ``sample.step_scores``. ``prompts`` are the prompts
    the samples answer (looked up by ``sample.prompt_id``)."""

    def __call__(self, samples: Sequence[Sample],
                 prompts: Sequence[Prompt] | Mapping[str, Prompt] | None = None) -> list[float]: ...


class TrainResult(Protocol):
    """What one training call reports."""

    steps: int

    @property
    def mean_loss(self) -> float: ...


@runtime_checkable
class Trainer(Protocol):
    """Trains the policy on (prompt, response) pairs; lives for the whole run.

    ``on_step(trainer, info)`` is called after every optimizer step (``info`` has ``call_steps`` and
    ``loss``); ``global_step`` counts optimizer steps over the run; ``parallel`` is the data-parallel
    mode in use (``none`` | ``ddp`` | ``fsdp``)."""

    global_step: int
    parallel: str

    def train_on(self, data: Iterable[tuple[Prompt, Sample]], steps: int | None = None, epochs: int = 1,
                 on_step: Callable[[Any, Any], bool | None] | None = None) -> TrainResult: ...
