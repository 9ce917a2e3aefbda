"""PRM training data: Monte-Carlo step labels (docs/recipe.md "Reward model").

For every response of the warm-up policy, split into steps with :func:`mstar_fast.prm.split_steps` (the
splitter the PRM scorer uses, so labels land on the steps the PRM will score), the label of step ``j``
estimates how promising the partial response that ends with step ``j`` is: ``M`` completions are sampled
from that prefix and

* **soft** label: the fraction of the ``M`` completions whose final answer matches the gold answer;
* **hard** label: 1 when at least one of them does, else 0.

The **final step** is labelled with the response's own outcome (1 if its final answer is correct, else 0)
and costs no rollouts: the partial response ending with the last step *is* the whole response, so its
value is known exactly (a Monte-Carlo estimate of it would only add noise, and continuing a finished
response is meaningless). A one-step response therefore needs no completions at all. A response cut by
the length limit has no answer, so its final step gets 0.

Cost: every prefix of every response goes to the rollout engine in **one** ``generate`` call (``n=M``),
where the prefix-sharing engine batches them (``chunk_size`` splits the work into several calls, each
followed by a write to ``out_path``). Identical prefixes of the same prompt (duplicate responses, common
first steps) are sampled once and share their completions. A prefix is continued by putting it in the
prompt's ``meta[RESPONSE_PREFIX_KEY]`` (:func:`mstar_fast.models.prompting.format_prompt` appends it after
the generation prompt); its derived prompt id hashes (prompt id, prefix), so completions depend only on
(seed, prompt, prefix), not on how the work was chunked or resumed.

Resume: each finished response is one line of ``out_path`` (append-only, keyed by ``(prompt_id, index)``);
a restarted call skips the responses already written and returns them read back from the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mstar_fast.data.jsonl import JsonlWriter, iter_jsonl
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.prompting import RESPONSE_PREFIX_KEY
from mstar_fast.prm.scorer import split_steps
from mstar_fast.rewards import check_answer, extract_answer

__all__ = ["PRMExample", "monte_carlo_labels", "response_prefix", "default_reward", "read_prm_examples"]

log = logging.getLogger(__name__)


@dataclass
class PRMExample:
    """Step labels of one response, a PRM training example.

    Attributes:
        prompt_id, index: the response's ``Sample.prompt_id`` and ``Sample.index`` (the resume key).
        steps: the response split into steps (``split_steps``), in order.
        labels: one label in [0, 1] per step (soft: fraction of completions reaching the gold answer;
            hard: 1.0 if any did); the last one is the response's own correctness.
        hits: per step, how many of the ``m`` completions reached the gold answer; for the last step,
            1 or 0 (the response's own outcome). Kept so soft/hard labels can be re-derived.
        m: completions sampled per step (the last step uses none).
        soft: whether ``labels`` are soft (else hard).
        correct: whether the response itself reached the gold answer.
    """

    prompt_id: str
    index: int
    steps: list[str]
    labels: list[float]
    hits: list[int] = field(default_factory=list)
    m: int = 0
    soft: bool = True
    correct: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt_id, self.index)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PRMExample:
        """Inverse of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            ValueError: a required field is missing or ``steps`` and ``labels`` differ in length.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("prompt_id", "index", "steps", "labels") if k not in d]
        if missing:
            raise ValueError(f"PRMExample.from_dict: missing fields {missing} in {sorted(d)}")
        ex = cls(**{k: v for k, v in d.items() if k in names})
        ex.index = int(ex.index)
        ex.labels = [float(x) for x in ex.labels]
        if len(ex.steps) != len(ex.labels):
            raise ValueError(f"PRMExample {ex.key}: {len(ex.steps)} steps but {len(ex.labels)} labels")
        return ex


def read_prm_examples(path: str | os.PathLike) -> list[PRMExample]:
    """The examples of a JSONL file written by :func:`monte_carlo_labels` (a torn last line is ignored)."""
    return [PRMExample.from_dict(d) for d in iter_jsonl(path)]


def response_prefix(steps: Sequence[str], j: int, separator: str = "\n\n") -> str:
    """The partial response ending with step ``j`` (0-based), followed by the separator so the policy's
    next token starts step ``j + 1``.

    >>> response_prefix(["a = 1.", "b = 2.", "# Answer\\n\\n3"], 1)
    'a = 1.\\n\\nb = 2.\\n\\n'
    """
    if not 0 <= j < len(steps):
        raise ValueError(f"response_prefix: step {j} out of range for {len(steps)} steps")
    return separator.join(steps[: j + 1]) + separator


def default_reward(text: str, prompt: Prompt) -> bool:
    """The outcome reward: the final answer extracted from ``text`` matches ``prompt``'s gold answer."""
    return check_answer(extract_answer(text, choices=prompt.choices), prompt)


def _prefix_id(prompt_id: str, prefix: str) -> str:
    digest = hashlib.sha1(f"{prompt_id}\x00{prefix}".encode()).hexdigest()[:16]
    return f"{prompt_id}#mc-{digest}"


def _check_args(m: Any, temperature: Any, max_new_tokens: Any, chunk_size: Any, separator: Any) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"monte_carlo_labels: m must be an int >= 1, got {m!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"monte_carlo_labels: temperature must be a number >= 0, got {temperature!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"monte_carlo_labels: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"monte_carlo_labels: chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"monte_carlo_labels: separator must be a non-empty string, got {separator!r}")


def monte_carlo_labels(
    engine: Any,
    prompts: Sequence[Prompt] | Mapping[str, Prompt],
    samples: Sequence[Sample],
    *,
    m: int = 8,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    soft: bool = True,
    separator: str = "\n\n",
    answer_marker: str | None = "# Answer",
    out_path: str | os.PathLike | None = None,
    chunk_size: int | None = None,
    reward_fn: Callable[[str, Prompt], bool] | None = None,
    top_p: float = 1.0,
    top_k: int = 0,
) -> list[PRMExample]:
    """Monte-Carlo step labels of ``samples`` (responses of the warm-up policy), see the module doc.

    Args:
        engine: a rollout engine (``generate(prompts, n, temperature=..., top_p=..., top_k=...,
            max_new_tokens=..., seed=...) -> list[Sample]``, grouped by prompt in input order), e.g.
            :class:`mstar_fast.rollout.RolloutEngine` on the warm-up policy, formatting prompts the way
            the policy answers them after warm-up (no gold answer in the prompt).
        prompts: the labelled prompts the samples answer (a sequence or a mapping by id); each needs a
            gold ``answer``.
        samples: the responses to label; ``finish_reason == "error"`` samples and responses without any
            step are skipped (they have nothing to label).
        m: completions per step prefix (paper/ours: 8).
        temperature, top_p, top_k: sampling of the completions.
        max_new_tokens: longest completion.
        seed: rollout seed; completion k of a prefix uses the engine's per-sample seed of
            (seed, derived prompt id, k).
        soft: soft labels (fraction correct) or hard labels (any correct).
        separator, answer_marker: the step splitter's settings (:func:`mstar_fast.prm.split_steps`); use
            the PRM scorer's, so train and score see the same steps.
        out_path: append-only JSONL of finished examples; a restarted call skips the responses already
            there and returns them too (read back), so no response is lost or labelled twice.
        chunk_size: responses per engine call (each chunk is written to ``out_path`` when done); None:
            all responses in one call (fewest calls, but a kill loses the whole call's work).
        reward_fn: ``f(full_response_text, prompt) -> bool``; default :func:`default_reward`
            (``check_answer(extract_answer(text), prompt)``). A completion is judged on prefix + completion.

    Returns:
        One :class:`PRMExample` per labelled response, in the order of ``samples``.

    Raises:
        ValueError: bad arguments, a sample whose prompt is missing or has no gold answer, two samples with
            the same ``(prompt_id, index)``, an engine that returns the wrong number of completions, or an
            ``out_path`` written with another ``m`` or ``soft``.
    """
    _check_args(m, temperature, max_new_tokens, chunk_size, separator)
    reward = reward_fn or default_reward
    lookup = dict(prompts) if isinstance(prompts, Mapping) else {p.id: p for p in prompts}

    # Responses to label, in input order: (sample, prompt, steps).
    todo: list[tuple[Sample, Prompt, list[str]]] = []
    seen: set[tuple[str, int]] = set()
    for s in samples:
        key = (s.prompt_id, int(s.index))
        if key in seen:
            raise ValueError(f"monte_carlo_labels: two samples with the same (prompt_id, index) {key}")
        seen.add(key)
        if s.finish_reason == "error":
            continue
        prompt = lookup.get(s.prompt_id)
        if prompt is None:
            raise ValueError(f"monte_carlo_labels: no Prompt with id {s.prompt_id!r} (sample {key})")
        if prompt.answer is None:
            raise ValueError(f"monte_carlo_labels: prompt {prompt.id!r} has no gold answer; Monte-Carlo labels "
                             "need labelled prompts")
        steps = split_steps(s.text, separator, answer_marker)
        if steps:
            todo.append((s, prompt, steps))

    done: dict[tuple[str, int], PRMExample] = {}
    if out_path is not None:
        for ex in read_prm_examples(out_path):
            if ex.key in seen and (ex.m != m or ex.soft != soft):
                raise ValueError(f"monte_carlo_labels: {out_path} holds example {ex.key} labelled with m={ex.m}, "
                                 f"soft={ex.soft}; this call asks for m={m}, soft={soft} (use another out_path)")
            done[ex.key] = ex
    pending = [t for t in todo if (t[0].prompt_id, int(t[0].index)) not in done]
    if done:
        log.info("monte_carlo_labels: %d of %d responses already labelled in %s", len(todo) - len(pending),
                 len(todo), out_path)

    writer = JsonlWriter(out_path) if out_path is not None else None
    cache: dict[str, int] = {}  # derived prompt id -> completions reaching the gold answer
    try:
        size = chunk_size or max(1, len(pending))
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            _sample_prefixes(engine, chunk, cache, m=m, temperature=temperature, top_p=top_p, top_k=top_k,
                             max_new_tokens=max_new_tokens, seed=seed, separator=separator, reward=reward)
            for s, prompt, steps in chunk:
                correct = bool(reward(s.text, prompt))
                hits = [cache[_prefix_id(prompt.id, response_prefix(steps, j, separator))]
                        for j in range(len(steps) - 1)] + [int(correct)]
                labels = [(h / m if soft else float(h > 0)) for h in hits[:-1]] + [float(correct)]
                ex = PRMExample(prompt_id=s.prompt_id, index=int(s.index), steps=list(steps), labels=labels,
                                hits=hits, m=m, soft=soft, correct=correct)
                done[ex.key] = ex
                if writer is not None:
                    writer.write(ex)
    finally:
        if writer is not None:
            writer.close()
    return [done[(s.prompt_id, int(s.index))] for s, _, _ in todo]


def _sample_prefixes(engine: Any, chunk: Sequence[tuple[Sample, Prompt, list[str]]], cache: dict[str, int], *,
                     m: int, temperature: float, top_p: float, top_k: int, max_new_tokens: int, seed: int,
                     separator: str, reward: Callable[[str, Prompt], bool]) -> None:
    """One engine call for every not-yet-sampled prefix (all but the last step) of the chunk's responses;
    stores, per derived prompt id, how many of the ``m`` completions reach the gold answer."""
    derived: dict[str, tuple[Prompt, str, Prompt]] = {}  # id -> (query, prefix, original prompt)
    for _, prompt, steps in chunk:
        for j in range(len(steps) - 1):
            prefix = response_prefix(steps, j, separator)
            pid = _prefix_id(prompt.id, prefix)
            if pid not in cache and pid not in derived:
                meta = {**(prompt.meta or {}), RESPONSE_PREFIX_KEY: prefix}
                derived[pid] = (dataclasses.replace(prompt, id=pid, meta=meta), prefix, prompt)
    if not derived:
        return
    queries = [q for q, _, _ in derived.values()]
    out = engine.generate(queries, m, temperature=temperature, top_p=top_p, top_k=top_k,
                          max_new_tokens=max_new_tokens, seed=seed)
    if len(out) != len(queries) * m:
        raise ValueError(f"monte_carlo_labels: the engine returned {len(out)} samples for {len(queries)} prefixes "
                         f"x m={m}")
    errors = 0
    for q, (pid, (_, prefix, original)) in enumerate(derived.items()):
        group = out[q * m : (q + 1) * m]
        if any(c.prompt_id != pid for c in group):
            raise ValueError(f"monte_carlo_labels: the engine's samples are not grouped by prompt in input order "
                             f"(expected prompt id {pid!r})")
        hits = 0
        for c in group:
            if c.finish_reason == "error":  # counts as a miss: the prefix could not be continued
                errors += 1
                continue
            hits += bool(reward(prefix + c.text, original))
        cache[pid] = hits
    if errors:
        log.warning("monte_carlo_labels: %d of %d completions failed (finish_reason='error'); counted as wrong",
                    errors, len(out))

