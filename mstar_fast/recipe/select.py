"""Which sampled responses an iteration trains on (PAPER.md "Reward model", Table 2).

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

Functions are pure over :class:`~mstar_fast.data.Sample` lists: they set ``Sample.selected`` (and
``meta["duplicate"]`` on removed duplicates) and return the selected samples in input order.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from mstar_fast.data.records import Sample

__all__ = ["SELECTIONS", "SelectionStats", "dedupe", "select", "group_by_prompt", "well_formed"]

SELECTIONS = ("topk", "threshold", "random", "all")


@dataclass
class SelectionStats:
    """Counts of one selection pass (for the iteration summary and metrics.jsonl)."""

    n_prompts: int = 0
    n_samples: int = 0
    n_duplicates: int = 0
    n_correct: int = 0  # distinct correct (and, with require_format, well-formed) responses
    n_prompts_with_correct: int = 0
    n_selected: int = 0


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
    """True for a response in the warm-up output format (PAPER.md): at least one reasoning step, then the
    answer marker exactly once, then a non-empty answer with no further step (``step\n\n...\n\n# Answer\n\n42``).

    A weak policy reaches the right final answer in degenerate ways (the marker repeated, no reasoning);
    training on those teaches the degeneration, so selection can require the format (ours).
    """
    body, sep, answer = text.strip().rpartition(separator + marker + separator)
    return bool(sep) and bool(body.strip()) and bool(answer.strip()) and marker not in body \
        and separator not in answer.strip()


def _rank_key(s: Sample) -> tuple[float, int]:
    # Highest score first; NaN / missing scores last; ties by sample index (the earlier sample wins).
    sc = s.score
    bad = sc is None or (isinstance(sc, float) and math.isnan(sc))
    return (math.inf if bad else -float(sc), s.index)  # type: ignore[arg-type]


def _rng(seed: int, prompt_id: str, iteration: int) -> random.Random:
    h = hashlib.sha256(f"mstar-select/{seed}/{iteration}/{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def select(samples: Sequence[Sample], method: str = "topk", k: int = 2, threshold: float = 0.5,
           dedup: bool = True, seed: int = 0, iteration: int = 0,
           require_format: bool = False) -> tuple[list[Sample], SelectionStats]:
    """Mark and return the responses to train on.

    Args:
        samples: graded samples (``correct`` set) of any number of prompts; ``score`` holds the PRM
            score for ``topk`` / ``threshold``.
        method: ``topk`` | ``threshold`` | ``random`` | ``all`` (see the module doc).
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
    if method not in SELECTIONS:
        raise ValueError(f"select: method must be one of {SELECTIONS}, got {method!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"select: k must be an int >= 1, got {k!r}")
    stats = SelectionStats(n_samples=len(samples))
    for s in samples:
        s.selected = False
    groups = group_by_prompt(samples)
    stats.n_prompts = len(groups)
    chosen: set[int] = set()  # id() of the selected samples
    for pid, group in groups.items():
        kept = dedupe(group) if dedup else list(group)
        stats.n_duplicates += len(group) - len(kept)
        correct = [s for s in kept if s.correct and (not require_format or well_formed(s.text))]
        stats.n_correct += len(correct)
        if not correct:
            continue  # no correct response: the prompt is dropped
        stats.n_prompts_with_correct += 1
        if method in ("topk", "threshold"):
            missing = [s.index for s in correct if s.score is None]
            if missing:
                raise ValueError(f"select: method {method!r} needs PRM scores, but sample {missing[0]} of prompt "
                                 f"{pid!r} has none; score the samples first or use select 'random' / 'all'")
        if method == "all" or len(correct) <= k and method in ("topk", "random"):
            pick = correct
        elif method == "topk":
            pick = sorted(correct, key=_rank_key)[:k]
        elif method == "random":
            pick = _rng(seed, pid, iteration).sample(correct, k)
        else:  # threshold: NaN scores never pass
            pick = [s for s in correct if s.score is not None and float(s.score) > threshold]
        for s in pick:
            s.selected = True
            chosen.add(id(s))
    out = [s for s in samples if id(s) in chosen]
    stats.n_selected = len(out)
    return out, stats
