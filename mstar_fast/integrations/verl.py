"""verl adapters: the outcome reward as verl's custom reward function, and a batched PRM reward.

verl loads a custom reward function from a file (``custom_reward_function.path`` / ``.name``) and calls
it with keyword arguments, one response at a time (``naive`` reward manager)::

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)  # -> float | dict

or, with ``reward_model.reward_manager=batch``, once per batch::

    compute_score(data_sources=[...], solution_strs=[...], ground_truths=[...], extra_infos=[...],
                  **custom_reward_function.reward_kwargs)  # -> list of float | dict

verl need not be installed for this module: it imports nothing from verl. Config snippet (Hydra
overrides of verl's PPO/GRPO trainer), with a file ``mstar_reward.py`` next to the run::

    # mstar_reward.py
    from mstar_fast.integrations.verl import PRMBatchReward, compute_score  # noqa: F401  (outcome reward)
    prm_compute_score = PRMBatchReward(lambda: build_my_prm_scorer())       # batched PRM reward

    # outcome reward, one response per call (default naive reward manager)
    custom_reward_function.path=mstar_reward.py custom_reward_function.name=compute_score
    # PRM reward (+ outcome accuracy as an extra metric), one call per batch
    custom_reward_function.path=mstar_reward.py custom_reward_function.name=prm_compute_score \\
        reward_model.reward_manager=batch

The PRM needs each response's question (and images): put them in the dataset's ``extra_info`` (verl's
data preprocessing examples already store ``extra_info["question"]``); image paths go in
``extra_info["images"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from mstar_fast.data.records import Prompt
from mstar_fast.rewards import answers_match, extract_answer


def _gold(ground_truth: Any) -> tuple[str | None, Sequence[str] | None, Any]:
    """``(answer, choices, precision)`` from a ground truth: a string / number, or a dict with ``answer``
    (or ``ground_truth``) and optional ``choices`` / ``precision``."""
    if isinstance(ground_truth, dict):
        ans = ground_truth.get("answer", ground_truth.get("ground_truth"))
        return (None if ans is None else str(ans)), ground_truth.get("choices"), ground_truth.get("precision")
    return (None if ground_truth is None else str(ground_truth)), None, None


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> float:
    """verl's custom reward function: 1.0 when the response's final answer matches, else 0.0.

    Args:
        data_source: the sample's ``data_source`` (not used: one rule for every source).
        solution_str: the decoded response.
        ground_truth: the gold answer (``reward_model.ground_truth``): a string or number, or a dict with
            ``answer`` and optional ``choices`` (option texts) and ``precision`` (decimal places).
        extra_info: the sample's ``extra_info``; its ``choices`` / ``precision`` are used when the ground
            truth does not give them.
        **kwargs: ``custom_reward_function.reward_kwargs`` (ignored), for forward compatibility.

    Returns:
        1.0 or 0.0 (the answer is read by :func:`mstar_fast.rewards.extract_answer` and compared by
        :func:`mstar_fast.rewards.answers_match`).
    """
    gold, choices, precision = _gold(ground_truth)
    info = extra_info if isinstance(extra_info, dict) else {}
    choices = choices if choices is not None else info.get("choices")
    precision = precision if precision is not None else info.get("precision")
    return 1.0 if answers_match(extract_answer(solution_str), gold, choices, precision) else 0.0


class PRMBatchReward:
    """A batched PRM reward for verl's ``batch`` reward manager (``reward_model.reward_manager=batch``).

    Responses that share a question (and images) are scored together by one
    :meth:`PRMScorer.score <mstar_fast.prm.PRMScorer.score>` call (one prefix forward per prompt).

    Args:
        scorer: a :class:`mstar_fast.prm.PRMScorer`, or a zero-argument callable building one on first use
            (verl imports the reward file in every worker; building lazily keeps that import cheap).
        question_key: the ``extra_info`` key holding the question text.
        images_key: the ``extra_info`` key holding the image paths (a list, or one path).
        no_steps: score of a response without steps.
        with_accuracy: return dicts ``{"score": prm, "acc": outcome}`` (verl logs the extra keys) instead of
            floats; ``acc`` is :func:`compute_score` against the ground truth.

    Call: ``(data_sources, solution_strs, ground_truths, extra_infos, **reward_kwargs)`` -> one float (or
    dict) per response, the PRM score = min over the response's steps of P(good step).

    Raises:
        ValueError (at call time): lists of different lengths, or an ``extra_info`` without the question.
    """

    def __init__(self, scorer: Any | Callable[[], Any], *, question_key: str = "question", images_key: str = "images",
                 no_steps: float = 0.0, with_accuracy: bool = False) -> None:
        self._scorer = scorer if hasattr(scorer, "score") else None
        self._factory = None if self._scorer is not None else scorer
        if self._scorer is None and not callable(scorer):
            raise ValueError(f"PRMBatchReward: scorer must be a PRMScorer or a callable building one, got "
                             f"{type(scorer).__name__}")
        self.question_key, self.images_key = question_key, images_key
        self.no_steps, self.with_accuracy = no_steps, with_accuracy

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = self._factory()
        return self._scorer

    def __call__(self, data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                 extra_infos: Sequence[dict | None] | None = None, **reward_kwargs: Any) -> list[float] | list[dict]:
        n = len(solution_strs)
        extra_infos = [None] * n if extra_infos is None else list(extra_infos)
        if not (len(data_sources) == len(ground_truths) == len(extra_infos) == n):
            raise ValueError(f"PRMBatchReward: {len(data_sources)} data_sources, {n} solution_strs, "
                             f"{len(ground_truths)} ground_truths, {len(extra_infos)} extra_infos")
        groups: dict[tuple, tuple[Prompt, list[int]]] = {}
        for i, info in enumerate(extra_infos):
            info = info if isinstance(info, dict) else {}
            question = info.get(self.question_key)
            if question is None:
                raise ValueError(f"PRMBatchReward: extra_info of response {i} has no {self.question_key!r} "
                                 f"(keys: {sorted(info)}); the PRM needs the question")
            images = info.get(self.images_key) or []
            images = [images] if isinstance(images, str) else list(images)
            key = (str(question), tuple(str(im) for im in images))
            if key not in groups:
                groups[key] = (Prompt(id=f"verl-{len(groups)}", question=str(question), images=images), [])
            groups[key][1].append(i)
        scores = [self.no_steps] * n
        for prompt, idx in groups.values():
            result = self.scorer.score(prompt, [solution_strs[i] for i in idx])
            for j, i in enumerate(idx):
                v = result.scores[j]
                scores[i] = self.no_steps if math.isnan(v) else float(v)
        if not self.with_accuracy:
            return scores
        return [{"score": s, "acc": compute_score(d, r, g, e)}
                for s, d, r, g, e in zip(scores, data_sources, solution_strs, ground_truths, extra_infos)]
