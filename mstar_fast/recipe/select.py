"""Which sampled responses an iteration trains on (docs/recipe.md "Reward model", Table 2).

Per prompt, after the binary answer reward:

1. **de-duplicate** (ours): identical responses (same text after stripping surrounding whitespace) keep
   only their first occurrence, so a prompt whose K samples collapsed onto one answer does not train on
   it K times, and top-2 picks two *different* responses;
2. keep the **correct** ones; a prompt with none is dropped (ours);
3. **select** among them:

   ==============  =================================================================================
   ``topk``        the ``k`` highest PRM scores (M-STaR: k = 2); NaN scores rank lowest, ties go to
                   the earlier sample
   ``threshold``   those whose PRM score is above ``threshold`` ("PRM > alpha")
   ``random``      ``k`` at random (seeded by run seed, prompt id and iteration)
   ``all``         every correct response
   ==============  =================================================================================

   A prompt with fewer than ``k`` correct responses keeps them all (ours).

Methods are registered by name (``@register_selection("topk")``; the config's ``iterate.select`` names one of
:data:`mstar_fast.constants.SELECTIONS`), and every method picks among the same eligible responses
(:func:`eligible`). ``topk`` ranks with :func:`mstar_fast.ops.group_topk`, the op the monitor's
Reward-Pass@2 ranks with, so selection and Reward-Pass@2 agree on ties and NaN.

Functions are pure over :class:`~mstar_fast.data.Sample` lists: they set ``Sample.selected`` (and
``meta["duplicate"]`` on removed duplicates) and return the selected samples in input order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mstar_fast import ops
from mstar_fast.constants import SELECTIONS
from mstar_fast.data.records import Sample

__all__ = ["SELECTIONS", "SelectionStats", "SelectionMethod", "dedupe", "eligible", "group_by_prompt",
           "register_selection", "select", "selection_methods", "well_formed"]


@dataclass
class SelectionStats:
    """Counts of one selection pass (for the iteration summary and metrics.jsonl)."""

    n_prompts: int = 0
    n_samples: int = 0
    n_duplicates: int = 0
    n_correct: int = 0  # distinct correct (and, with require_format, well-formed) responses
    n_prompts_with_correct: int = 0
    n_selected: int = 0


@dataclass(frozen=True)
class SelectionArgs:
    """What a selection method may use besides the eligible responses."""

    k: int
    threshold: float
    seed: int
    iteration: int


#: ``method(groups, args) -> picks``: ``groups`` holds each prompt's eligible responses (non-empty, in sample
#: index order); the result holds the picked responses of each group, in the same group order.
SelectionMethod = Callable[[list[list[Sample]], SelectionArgs], list[list[Sample]]]
_METHODS: dict[str, SelectionMethod] = {}


def register_selection(name: str) -> Callable[[SelectionMethod], SelectionMethod]:
    """Register a selection method under ``name`` (verl-style decorator).

    Raises:
        ValueError: ``name`` is already registered.
    """
    def deco(fn: SelectionMethod) -> SelectionMethod:
        if name in _METHODS:
            raise ValueError(f"register_selection: {name!r} is already registered")
        _METHODS[name] = fn
        return fn

    return deco


def selection_methods() -> tuple[str, ...]:
    """The registered method names."""
    return tuple(_METHODS)


def group_by_prompt(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by ``prompt_id``, groups in order of first appearance, samples in input order."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_id, []).append(s)
    return groups


def _norm(text: str) -> str:
    return text.strip()


def dedupe(samples: Sequence[Sample]) -> list[Sample]:
    """The samples without repeats of an earlier sample's text *of the same prompt* (input order kept).
    Removed ones get ``meta["duplicate"] = <index of the kept sample>`` and ``selected = False``."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for s in samples:
        key = (s.prompt_id, _norm(s.text))
        if key in seen:
            s.meta["duplicate"] = seen[key]
            s.selected = False
            continue
        seen[key] = s.index
        out.append(s)
    return out


def well_formed(text: str, marker: str = "# Answer", separator: str = "\n\n") -> bool:
    """True for a response in the warm-up output format: at least one reasoning step, then the answer
    marker exactly once, then a non-empty answer with no further step (``step\n\n...\n\n# Answer\n\n42``).

    A weak policy reaches the right final answer in degenerate ways (the marker repeated, no reasoning);
    training on those teaches the degeneration, so selection can require the format (ours).
    """
    body, sep, answer = text.strip().rpartition(separator + marker + separator)
    return bool(sep) and bool(body.strip()) and bool(answer.strip()) and marker not in body \
        and separator not in answer.strip()


def eligible(group: Sequence[Sample], dedup: bool = True, require_format: bool = False) -> list[Sample]:
    """The responses of one prompt that selection may pick (and the PRM therefore scores): distinct
    (with ``dedup``; :func:`dedupe` marks the repeats), correct, and with ``require_format``
    :func:`well_formed`; input order kept. The one definition every stage uses."""
    kept = dedupe(group) if dedup else list(group)
    return [s for s in kept if s.correct and (not require_format or well_formed(s.text))]


def _rng(seed: int, prompt_id: str, iteration: int) -> random.Random:
    h = hashlib.sha256(f"mstar-select/{seed}/{iteration}/{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


@register_selection("topk")
def _topk(groups: list[list[Sample]], args: SelectionArgs) -> list[list[Sample]]:
    """The k highest PRM scores per prompt, by :func:`mstar_fast.ops.group_topk` on the flat layout: NaN
    ranks last, ties go to the earlier sample; fewer than k eligible keeps them all."""
    flat = [s for g in groups for s in g]
    if not flat:
        return [[] for _ in groups]
    scores = torch.tensor([float(s.score) for s in flat], dtype=torch.float64)  # type: ignore[arg-type]
    offsets = torch.tensor([0] + [len(g) for g in groups], dtype=torch.int64).cumsum(0)
    keep = ops.group_topk(scores, offsets, args.k).tolist()
    picks, it = [], iter(keep)
    for g in groups:
        picks.append([s for s in g if next(it)])
    return picks


@register_selection("threshold")
def _threshold(groups: list[list[Sample]], args: SelectionArgs) -> list[list[Sample]]:
    """Those whose PRM score is above the threshold; NaN never passes."""
    # NaN > threshold is False: a NaN score never passes.
    return [[s for s in g if float(s.score) > args.threshold] for g in groups]  # type: ignore[arg-type]


@register_selection("random")
def _random(groups: list[list[Sample]], args: SelectionArgs) -> list[list[Sample]]:
    """k at random per prompt (seeded by run seed, prompt id and iteration); fewer than k keeps all."""
    return [g if len(g) <= args.k else _rng(args.seed, g[0].prompt_id, args.iteration).sample(g, args.k)
            for g in groups]


@register_selection("all")
def _all(groups: list[list[Sample]], args: SelectionArgs) -> list[list[Sample]]:
    """Every eligible response."""
    return [list(g) for g in groups]


_NEEDS_SCORES = ("topk", "threshold")


def select(samples: Sequence[Sample], method: str = "topk", k: int = 2, threshold: float = 0.5,
           dedup: bool = True, seed: int = 0, iteration: int = 0,
           require_format: bool = False) -> tuple[list[Sample], SelectionStats]:
    """Mark and return the responses to train on.

    Args:
        samples: graded samples (``correct`` set) of any number of prompts; ``score`` holds the PRM
            score for ``topk`` / ``threshold``.
        method: a registered method: ``topk`` | ``threshold`` | ``random`` | ``all`` (see the module doc).
        k: kept per prompt by ``topk`` and ``random``.
        threshold: the PRM score a response must exceed under ``threshold``.
        dedup: remove identical responses of a prompt first.
        seed, iteration: seed the ``random`` choice (reproducible across resumes).
        require_format: only :func:`well_formed` correct responses are eligible.

    Returns:
        ``(selected samples in input order, SelectionStats)``; every input sample's ``selected`` is set.

    Raises:
        ValueError: unknown method, k < 1, or ``topk`` / ``threshold`` on a correct sample without a
            score (run the PRM first, or use ``random`` / ``all``).
    """
    if method not in _METHODS:
        raise ValueError(f"select: method must be one of {selection_methods()}, got {method!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"select: k must be an int >= 1, got {k!r}")
    stats = SelectionStats(n_samples=len(samples))
    for s in samples:
        s.selected = False
    by_prompt = group_by_prompt(samples)
    stats.n_prompts = len(by_prompt)
    groups: list[list[Sample]] = []
    for pid, group in by_prompt.items():
        good = eligible(group, dedup=dedup, require_format=require_format)
        if dedup:
            stats.n_duplicates += sum("duplicate" in s.meta for s in group)
        stats.n_correct += len(good)
        if not good:
            continue  # no correct response: the prompt is dropped
        if method in _NEEDS_SCORES:
            missing = [s.index for s in good if s.score is None]
            if missing:
                raise ValueError(f"select: method {method!r} needs PRM scores, but sample {missing[0]} of prompt "
                                 f"{pid!r} has none; score the samples first or use select 'random' / 'all'")
        groups.append(sorted(good, key=lambda s: s.index))  # ties go to the earlier sample
    stats.n_prompts_with_correct = len(groups)
    chosen = {id(s) for pick in _METHODS[method](groups, SelectionArgs(k, threshold, seed, iteration)) for s in pick}
    out = [s for s in samples if id(s) in chosen]
    for s in out:
        s.selected = True
    stats.n_selected = len(out)
    return out, stats

