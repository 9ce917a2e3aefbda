"""TRL adapters: PRM and outcome rewards with TRL's reward-function signature, a ``rollout_func`` for
``GRPOTrainer`` backed by the package's rollout engine, and step-level PRM rewards placed on tokens.

Nothing here imports TRL: the functions only follow its calling conventions (checked against TRL 1.16):

* a reward function is called as ``f(prompts=..., completions=..., completion_ids=..., **columns)`` where
  ``prompts`` / ``completions`` are strings (plain datasets) or chat messages (conversational datasets:
  ``[{"role": "user", "content": ...}]`` and ``[{"role": "assistant", "content": "..."}]``), every other
  dataset column arrives as a keyword argument holding one value per completion (``answer``, ``image``,
  ``images``, ...), plus ``trainer_state`` and logging hooks; it returns one float (or None) per completion;
* ``GRPOTrainer(rollout_func=f)`` calls ``f(prompts, trainer)`` with the per-process batch of prompts, in
  which each prompt appears ``num_generations`` times in a row (TRL's repeat sampler), and expects a dict
  with ``prompt_ids``, ``completion_ids`` and ``logprobs`` (one list per completion; ``logprobs`` may be
  None); other keys are forwarded to the reward functions.

Example::

    from trl import GRPOConfig, GRPOTrainer
    from mstar_fast.integrations.trl import outcome_reward, prm_reward, rollout_func
    from mstar_fast.prm import PRMScorer
    from mstar_fast.rollout import RolloutEngine

    scorer = PRMScorer(prm_model, prm_processor)
    engine = RolloutEngine(policy, processor)
    trainer = GRPOTrainer(model=policy, processing_class=processor, args=GRPOConfig(...),
                          reward_funcs=[prm_reward(scorer), outcome_reward()], rollout_func=rollout_func(engine),
                          train_dataset=dataset)  # columns: prompt, image (or images), answer
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from mstar_fast.data.records import Prompt
from mstar_fast.models.prompting import encode_prompt, format_prompt
from mstar_fast.rewards import answers_match, extract_answer

RewardFunc = Callable[..., list]
_REDUCTIONS = ("min", "last", "mean", "prod")
_DEFAULT: Any = object()  # "extract_answer's own default marker"


# ---------------------------------------------------------------------------------------------- helpers
def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or a list of messages (the assistant contents joined).

    Raises:
        ValueError: neither form.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and all(isinstance(m, dict) for m in completion):
        return "".join(_content_text(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
    raise ValueError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _content_images(content: Any) -> list[Any]:
    if not isinstance(content, Sequence) or isinstance(content, str):
        return []
    return [p["image"] for p in content if isinstance(p, dict) and p.get("type") == "image" and p.get("image") is not None]


def prompt_question(prompt: Any) -> tuple[str, list[Any]]:
    """``(question text, images embedded in the messages)`` of one TRL prompt.

    A plain prompt is its own question. A conversational prompt must end with a user turn; its text parts
    are the question and its ``{"type": "image", "image": ...}`` parts the images (TRL inserts the dataset's
    images there). Earlier turns (e.g. a system prompt) are not part of the question.

    Raises:
        ValueError: a conversational prompt whose last message is not a user turn, or another type.
    """
    if isinstance(prompt, str):
        return prompt, []
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        last = prompt[-1]
        if last.get("role") != "user":
            raise ValueError(f"conversational prompt must end with a user message, got role {last.get('role')!r}")
        return _content_text(last.get("content", "")), _content_images(last.get("content"))
    raise ValueError(f"prompt must be a string or a non-empty list of chat messages, got {type(prompt).__name__}")


def _row_images(i: int, embedded: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """Images of completion ``i``: the ``images`` column, else the ``image`` column, else those embedded in
    the prompt messages."""
    if kwargs.get("images") is not None:
        v = kwargs["images"][i]
        return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
    if kwargs.get("image") is not None:
        v = kwargs["image"][i]
        return [] if v is None else [v]
    return list(embedded)


def _image_key(im: Any) -> str:
    if isinstance(im, str):
        return im
    tobytes = getattr(im, "tobytes", None)
    if tobytes is None:
        return f"id:{id(im)}"
    h = hashlib.blake2b(tobytes(), digest_size=16)
    h.update(repr((getattr(im, "mode", None), getattr(im, "size", None))).encode())
    return h.hexdigest()


def group_by_prompt(prompts: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[Prompt, list[int]]]:
    """Group completions whose (question, images) are equal: ``[(Prompt, completion indices)]`` in order
    of first appearance. TRL repeats each prompt ``num_generations`` times with separately decoded images,
    so images are compared by content (a hash of their pixels), paths by name."""
    groups: dict[tuple, tuple[Prompt, list[int]]] = {}
    for i, p in enumerate(prompts):
        question, embedded = prompt_question(p)
        images = _row_images(i, embedded, kwargs)
        key = (question, tuple(_image_key(im) for im in images))
        if key not in groups:
            groups[key] = (Prompt(id=f"trl-{len(groups)}", question=question, images=images), [])
        groups[key][1].append(i)
    return list(groups.values())


def _reduce(steps: list[float], how: str) -> float:
    if not steps:
        return math.nan
    if how == "min":
        return min(steps)
    if how == "last":
        return steps[-1]
    if how == "mean":
        return sum(steps) / len(steps)
    return math.prod(steps)


# ---------------------------------------------------------------------------------------------- rewards
def prm_reward(scorer: Any, *, reduce: str = "min", no_steps: float | None = 0.0, name: str = "prm_reward") -> RewardFunc:
    """A TRL reward function scoring completions with a process reward model.

    Completions of the same prompt (same question and images) are scored together with one
    :meth:`PRMScorer.score <mstar_fast.prm.PRMScorer.score>` call, so each prompt (image encoder included)
    is prefilled once for all its completions.

    Args:
        scorer: a :class:`mstar_fast.prm.PRMScorer` (or anything with its ``score(prompt, texts)``).
        reduce: how step scores make the completion's reward: ``"min"`` (M-STaR; the scorer's own score),
            ``"last"``, ``"mean"`` or ``"prod"``.
        no_steps: reward of a completion without any step (empty text); ``None`` tells TRL it is
            unscorable.
        name: the function's ``__name__`` (TRL logs rewards under it).

    Returns:
        ``f(prompts, completions, **kwargs) -> list[float | None]``, one value in [0, 1] per completion.
        Images come from the ``images`` column (a list per row), else the ``image`` column, else the
        image parts of the prompt messages.

    Raises:
        ValueError: an unknown ``reduce``; at call time, prompts and completions of different lengths or a
            malformed prompt.
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"prm_reward: reduce must be one of {_REDUCTIONS}, got {reduce!r}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"prm_reward: {len(prompts)} prompts but {len(completions)} completions")
        texts = [completion_text(c) for c in completions]
        out: list[float | None] = [None] * len(texts)
        for prompt, idx in group_by_prompt(prompts, kwargs):
            result = scorer.score(prompt, [texts[i] for i in idx])
            for j, i in enumerate(idx):
                v = _reduce(result.step_scores[j], reduce)
                out[i] = no_steps if math.isnan(v) else float(v)
        return out

    reward.__name__ = reward.__qualname__ = name
    return reward


def outcome_reward(*, marker: str | None = _DEFAULT, answer_column: str = "answer",
                   name: str = "outcome_reward") -> RewardFunc:
    """A TRL reward function: 1.0 when the completion's final answer matches the gold answer, else 0.0.

    The answer is read with :func:`mstar_fast.rewards.extract_answer` (its ``marker`` rule, default
    ``"# Answer"``, then the fallbacks)
    and compared with :func:`mstar_fast.rewards.answers_match` against the dataset's ``answer_column``,
    with the optional ``choices`` (option texts, so ``"B"`` means the second) and ``precision`` (decimal
    places) columns, all arriving as TRL's per-completion keyword arguments. A row whose gold answer is
    None scores 0.0.

    Raises:
        KeyError: at call time, when the dataset has no ``answer_column`` column (the message lists the
            columns it has).
    """

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if answer_column not in kwargs:
            cols = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids"))
            raise KeyError(f"outcome_reward: the dataset has no {answer_column!r} column (columns: {cols})")
        gold = kwargs[answer_column]
        choices = kwargs.get("choices") or [None] * len(completions)
        precision = kwargs.get("precision") or [None] * len(completions)
        out = []
        for c, g, ch, pr in zip(completions, gold, choices, precision):
            text = completion_text(c)
            pred = extract_answer(text) if marker is _DEFAULT else extract_answer(text, marker=marker)
            out.append(1.0 if answers_match(pred, None if g is None else str(g), ch, pr) else 0.0)
        return out

    reward.__name__ = reward.__qualname__ = name
    return reward


# ---------------------------------------------------------------------------------------------- rollouts
def _runs(prompts: Sequence[Any]) -> list[tuple[int, int]]:
    """``(start, length)`` of each run of consecutive equal prompts (TRL repeats a prompt G times in a row)."""
    runs: list[tuple[int, int]] = []
    for i, p in enumerate(prompts):
        if runs and prompts[runs[-1][0]] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def _sampling_args(args: Any) -> dict[str, Any]:
    top_k = getattr(args, "top_k", None)
    min_p = getattr(args, "min_p", None)
    return {
        "temperature": float(getattr(args, "temperature", 1.0)),
        "top_p": float(getattr(args, "top_p", 1.0) or 1.0),
        "top_k": int(top_k) if top_k and top_k > 0 else 0,
        "min_p": float(min_p) if min_p else 0.0,
        "max_new_tokens": int(getattr(args, "max_completion_length", 256) or 256),
    }


def rollout_func(engine: Any, *, seed: int | None = None, check_template: bool = True) -> Callable[[list, Any], dict]:
    """A ``GRPOTrainer(rollout_func=...)`` that samples with :class:`~mstar_fast.rollout.RolloutEngine`.

    Each distinct prompt is encoded and prefilled once for its ``num_generations`` completions (TRL's own
    generation prefills every copy). Sampling settings come from the trainer's config: ``temperature``,
    ``top_p``, ``top_k``, ``min_p``, ``max_completion_length``. Sample ``k`` of a prompt uses the engine's
    per-sample seed, derived from ``seed`` (default ``args.seed``) and the trainer's global step, so a
    run is reproducible and every step draws fresh samples. As in TRL's own generation, the model's image
    and video placeholder tokens are never sampled (added to ``engine.suppress_token_ids``).

    Args:
        engine: a ``RolloutEngine`` built on the trainer's policy object (``engine.model`` must be the
            trainer's unwrapped model, else rollouts would come from stale weights) and its processor.
        seed: base seed; default the trainer's ``args.seed``.
        check_template: verify that the engine renders each prompt exactly as the trainer's processing
            class does (the trainer recomputes the image features from its own rendering, so both must
            agree on the image placeholder tokens).

    Returns:
        ``f(prompts, trainer) -> {"prompt_ids", "completion_ids", "logprobs"}``: one list per completion,
        ``prompt_ids`` being the tokens the engine conditioned on, ``completion_ids`` the sampled tokens
        (EOS included when generated) and ``logprobs`` the sampler's per-token log-probabilities
        (``Sample.token_logprobs``; None when the engine fell back to ``model.generate``).

    Raises:
        ValueError / RuntimeError (at call time): the engine's model is not the trainer's, a prompt is not
        a single user turn (plain strings are used as the question), the rendering differs from the
        trainer's, or a prompt failed in the engine (the message says why).
    """
    def rollout(prompts: list, trainer: Any) -> dict[str, Any]:
        unwrap = getattr(getattr(trainer, "accelerator", None), "unwrap_model", lambda m: m)
        if unwrap(trainer.model) is not engine.model:
            raise ValueError("rollout_func: the engine's model is not the trainer's model; build the RolloutEngine "
                             "on the same model object you pass to GRPOTrainer")
        # As TRL's own generation: never sample an image / video placeholder token (the trainer would count it
        # as an image slot and fail to match the image features).
        cfg = engine.model.config
        for name in ("image_token_id", "video_token_id", "image_token_index"):
            tid = getattr(cfg, name, None)
            if isinstance(tid, int) and tid >= 0 and tid not in engine.suppress_token_ids:
                engine.suppress_token_ids.append(tid)
        args = trainer.args
        params = _sampling_args(args)
        step = int(getattr(getattr(trainer, "state", None), "global_step", 0))
        base = int(args.seed if seed is None else seed)
        records: list[Prompt] = []
        runs = _runs(prompts)
        for r, (start, _) in enumerate(runs):
            p = prompts[start]
            if not isinstance(p, str) and len(p) != 1:
                raise ValueError(f"rollout_func: prompt {start} has {len(p)} messages; the rollout engine takes one "
                                 "user turn (question + images)")
            question, images = prompt_question(p)
            records.append(Prompt(id=f"step{step}-p{r}", question=question, images=images))
            if check_template and not isinstance(p, str):
                ours, _ = format_prompt(engine.processor, records[-1], **engine.format_kwargs)
                theirs = trainer.processing_class.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                if ours != theirs:
                    raise ValueError(f"rollout_func: the engine renders prompt {start} as {ours!r} but the trainer as "
                                     f"{theirs!r}; give the engine the trainer's processor and no instruction")
        by_n: dict[int, list[int]] = {}
        for r, (_, length) in enumerate(runs):
            by_n.setdefault(length, []).append(r)
        samples: list[list[Any]] = [[] for _ in runs]
        for n, rs in by_n.items():
            out = engine.generate([records[r] for r in rs], n=n, seed=base + step, **params)
            for j, r in enumerate(rs):
                samples[r] = out[j * n:(j + 1) * n]
        prompt_ids, completion_ids, logprobs = [], [], []
        have_lp = True
        for r, (start, length) in enumerate(runs):
            failed = [s for s in samples[r] if s.finish_reason == "error"]
            if failed:
                raise RuntimeError(f"rollout_func: prompt {start} failed in the rollout engine: {failed[0].meta.get('error')}")
            ids = encode_prompt(engine.processor, records[r], **engine.format_kwargs)["input_ids"][0].tolist()
            for s in samples[r]:
                prompt_ids.append(ids)
                completion_ids.append(list(s.token_ids))
                have_lp = have_lp and s.token_logprobs is not None
                logprobs.append(s.token_logprobs)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs if have_lp else None}

    return rollout


# ---------------------------------------------------------------------------------------------- step rewards
def _step_ends(text: str, separator: str, answer_marker: str | None, step_tag: str) -> list[int]:
    """Character offset (exclusive) where each step of ``text`` ends, the steps being those of
    :func:`mstar_fast.prm.split_steps` after the scorer drops the tag and blank steps."""
    ends: list[int] = []
    parts, pos = [], 0
    for piece in text.split(separator):
        parts.append((piece, pos))
        pos += len(piece) + len(separator)
    nonblank = [(p, o) for p, o in parts if p.strip()]
    i = 0
    while i < len(nonblank):
        piece, off = nonblank[i]
        if answer_marker is not None and piece.strip() == answer_marker and i + 1 < len(nonblank):
            i += 1
            piece, off = nonblank[i]
        if piece.replace(step_tag, "").strip():
            ends.append(off + len(piece.rstrip()))
        i += 1
    return ends


def _token_at(ends: list[int], ids: list[int], tokenizer: Any) -> list[int]:
    """For each character offset, the first token whose decoded prefix reaches it (binary search)."""
    out = []
    lo = 0
    for e in ends:
        a, b = lo, len(ids) - 1
        while a < b:
            mid = (a + b) // 2
            if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=True)) >= e:
                b = mid
            else:
                a = mid + 1
        out.append(a)
        lo = a
    return out


def prm_step_rewards(scorer: Any, prompts: Sequence[Any], completion_ids: Sequence[Sequence[int]],
                     tokenizer: Any | None = None, **columns: Any) -> list[list[float]]:
    """Dense step rewards for PPO-style trainers: each step's PRM score at the token that ends the step.

    Args:
        scorer: a :class:`mstar_fast.prm.PRMScorer`.
        prompts: one TRL prompt (string or messages) per completion.
        completion_ids: the sampled token ids of each completion.
        tokenizer: decodes ``completion_ids`` (default the scorer's tokenizer); the text is split into
            steps exactly as the scorer splits it.
        **columns: ``images`` / ``image`` columns, as TRL passes them to reward functions.

    Returns:
        Per completion a list of ``len(completion_ids[i])`` floats: 0.0 everywhere except at the last
        token of each step (the token whose decoding completes the step's text), which holds that step's
        P(good). Several steps ending in one token add up.

    Raises:
        ValueError: lengths differ, or the step split does not match the scorer's (should not happen).
    """
    if len(prompts) != len(completion_ids):
        raise ValueError(f"prm_step_rewards: {len(prompts)} prompts but {len(completion_ids)} completions")
    tok = tokenizer if tokenizer is not None else scorer.tokenizer
    texts = [tok.decode(list(ids), skip_special_tokens=True) for ids in completion_ids]
    out = [[0.0] * len(ids) for ids in completion_ids]
    for prompt, idx in group_by_prompt(prompts, columns):
        result = scorer.score(prompt, [texts[i] for i in idx])
        for j, i in enumerate(idx):
            steps = result.step_scores[j]
            if not steps:
                continue
            ends = _step_ends(texts[i], scorer.step_separator, scorer.answer_marker, scorer.step_tag)
            if len(ends) != len(steps):
                raise ValueError(f"prm_step_rewards: completion {i} has {len(steps)} scored steps but {len(ends)} "
                                 "step ends in its text")
            for t, s in zip(_token_at(ends, list(completion_ids[i]), tok), steps):
                out[i][t] += float(s)
    return out


# ---------------------------------------------------------------------------------------------- SFT
def use_model_loss(trainer: Any) -> Any:
    """Make a TRL trainer (e.g. ``SFTTrainer``) train on the model's own ``forward(labels=...).loss``.

    TRL >= 1.16's ``SFTTrainer`` computes its loss with its own fused LM head, which bypasses
    :func:`mstar_fast.patch.apply_fused_linear_cross_entropy`. After this call the trainer's
    ``compute_loss`` is ``transformers.Trainer.compute_loss`` (labels and ``num_items_in_batch`` go to the
    model), so a patched model trains with the package's fused loss. TRL's per-step entropy and token
    accuracy metrics are not logged then.

    Returns:
        The same trainer.
    """
    from transformers import Trainer

    def compute_loss(model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        inputs = {k: v for k, v in inputs.items() if k != "fused_lm_head"}
        return Trainer.compute_loss(trainer, model, inputs, return_outputs, num_items_in_batch)

    trainer.compute_loss = compute_loss
    return trainer
