"""Step-wise PRM scoring of the K responses of a prompt with one forward on their shared prefix.

A process reward model (PRM) reads (image, question, response with a step tag after every step) and
predicts, at each tag, whether the step is good: P(good) = softmax over the LM-head logits of two reward
tokens (or the sigmoid of a value head). The usual code runs the whole model K times and projects every
position on every vocabulary row to read two columns at a few positions. ``PRMScorer`` instead

1. encodes the prompt (image + question) once and runs the backbone (no LM head) once on it, keeping
   its KV cache;
2. runs the K tagged continuations as one right-padded batch against copies of that cache;
3. takes the final hidden states at the tag positions only and calls ``ops.prm_step_scores`` (two LM-head
   rows, fp32 softmax) and ``ops.segment_reduce(..., "min")`` for the response score (M-STaR: min over
   steps).

The LM head's full-vocabulary projection is never called.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mstar_fast import ops
from mstar_fast.data.images import load_image
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.families import (
    cast_floating_inputs,
    extend_token_inputs,
    family_capabilities,
    log_no_prefix_sharing,
    rope_deltas,
    stack_encodings,
)
from mstar_fast.rollout import kv

# Contexts in which the step tag must stay one token (checked at construction).
_TAG_PROBES = ("1 + 1 = 2.", "Step 1: x", "so the answer is 5", "\\frac{1}{2}", "B", "angle ABC")


class _NotGatherable(ValueError):
    """The prefix cache of several prompts cannot be split into rows (only plain full-attention layers can)."""


@dataclass
class PRMScores:
    """Scores of the responses of one prompt: ``step_scores[i]`` holds P(good step) of each step of
    response i; ``scores[i]`` is their minimum (NaN for a response without steps)."""

    step_scores: list[list[float]]
    scores: list[float]


def split_steps(text: str, separator: str = "\n\n", answer_marker: str | None = "# Answer") -> list[str]:
    """Split a response into steps at ``separator``, dropping blank steps and surrounding whitespace.

    A step that is exactly ``answer_marker`` (the warm-up format ends with ``# Answer\\n\\n<answer>``) is
    merged with the step after it, so the final answer is one step. ``answer_marker=None`` turns that off.

    >>> split_steps("Add: 2 + 3 = 5.\\n\\nSo x = 5.\\n\\n# Answer\\n\\n5")
    ['Add: 2 + 3 = 5.', 'So x = 5.', '# Answer\\n\\n5']
    """
    parts = [p.strip() for p in text.split(separator)]
    parts = [p for p in parts if p]
    steps: list[str] = []
    i = 0
    while i < len(parts):
        if answer_marker is not None and parts[i] == answer_marker and i + 1 < len(parts):
            steps.append(parts[i] + separator + parts[i + 1])
            i += 2
        else:
            steps.append(parts[i])
            i += 1
    return steps


def _one_token(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    return list(tokenizer.convert_ids_to_tokens(ids))


def _load_image(image: Any) -> Any:
    return load_image(image)


class PRMScorer:
    """Score responses with a Hugging Face PRM, one prefix forward per prompt.

    Args:
        model: a ``transformers`` causal LM (``...ForCausalLM``) or image-text-to-text model
            (``...ForConditionalGeneration``) used as a PRM, already on its device and dtype. Its backbone
            (``model.<base_model_prefix>``) must accept a KV cache; its LM head is only read for the two
            reward-token rows.
        processor: the model's processor (for images) or tokenizer (text-only PRMs).
        step_tag: the text inserted after every step; must be one token of the tokenizer wherever it is
            placed (checked here). Occurrences of it inside a response are removed before tagging.
        reward_tokens: ``(good, bad)`` texts, each one token: P(good step) = softmax over their two logits
            at the tag. Ignored when ``value_head`` is given.
        value_head: a ``torch.nn.Linear(H, 1)`` (or a ``[1, H]`` weight tensor) applied at the tag instead,
            P(good step) = sigmoid of its output.
        step_separator: the separator between steps, both for splitting responses and for joining the
            tagged steps (``"step 1<tag><sep>step 2<tag>"``).
        answer_marker: see ``split_steps``.
        prompt_format: ``f(prompt, processor) -> str`` giving the prompt text the PRM was trained with
            (image placeholders included). Default: the processor's chat template with one image entry per
            image and the question as a user turn plus the generation prompt; without a chat template,
            one image token per image, then the question and a newline.
        share_prefix: True (default) runs the prompt once and the responses against its KV cache; False
            runs one full forward per response (the baseline; used to check the shared path).
        max_batch_tokens: bound on ``responses x (prefix + longest continuation)`` tokens per forward;
            responses are batched (longest first) under it, at least one per forward.
        prompts: Prompt records that ``__call__`` can look samples' ``prompt_id`` up in.

    Raises:
        ValueError: at construction, when the step tag or a reward token is not one token (the message
            says which string failed and how it tokenized), or when the model has no LM head and no value
            head is given.
        UnsupportedFamilyError: (a ValueError) the model family cannot be scored exactly
            (:func:`mstar_fast.models.families.family_capabilities` says why).

    Families whose forward transforms the logits after the head get the same transform on the two reward
    logits: a scale (Granite, Cohere) is folded into the two head rows, a soft-cap (Gemma 2) is applied to
    the two logits. Families whose cache cannot be shared by several continuations (linear-attention
    layers) run with ``share_prefix=False``, with the reason logged.

    Example (a tiny random LLaVA, so the scores themselves mean nothing):

    >>> from mstar_fast.data import Prompt
    >>> from mstar_fast.prm import PRMScorer
    >>> from mstar_fast.prm.testing import tiny_image, tiny_llava_prm
    >>> model, processor = tiny_llava_prm(seed=0)
    >>> scorer = PRMScorer(model, processor, step_tag="ки", reward_tokens=("+", "-"))
    >>> prompt = Prompt(id="p0", question="What is 1 + 2?", images=[tiny_image(0)])
    >>> out = scorer.score(prompt, ["1 + 2 = 3.\\n\\n# Answer\\n\\n3", "1 + 2 = 4.\\n\\nSo 4.\\n\\n# Answer\\n\\n4"])
    >>> [len(s) for s in out.step_scores]
    [2, 3]
    >>> all(0.0 < p < 1.0 for s in out.step_scores for p in s)
    True
    >>> out.scores[1] == min(out.step_scores[1])
    True
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        *,
        step_tag: str = "ки",
        reward_tokens: tuple[str, str] = ("+", "-"),
        value_head: torch.nn.Module | torch.Tensor | None = None,
        step_separator: str = "\n\n",
        answer_marker: str | None = "# Answer",
        prompt_format: Callable[[Prompt, Any], str] | None = None,
        share_prefix: bool = True,
        max_batch_tokens: int = 32768,
        prompts: Sequence[Prompt] | Mapping[str, Prompt] | None = None,
    ) -> None:
        self.model = model
        self.processor = processor
        tokenizer = getattr(processor, "tokenizer", None)
        self.tokenizer = tokenizer if tokenizer is not None else processor
        self.step_tag = step_tag
        self.step_separator = step_separator
        self.answer_marker = answer_marker
        self.prompt_format = prompt_format
        self.capabilities = family_capabilities(model, processor, engine="prm")
        if share_prefix and not self.capabilities.prefix_sharing:
            log_no_prefix_sharing("PRMScorer", self.capabilities)
            share_prefix = False
        self.share_prefix = share_prefix
        if max_batch_tokens < 1:
            raise ValueError(f"PRMScorer: max_batch_tokens must be >= 1, got {max_batch_tokens}")
        self.max_batch_tokens = max_batch_tokens
        self._gather_rows = True  # several prompts per forward (off once a cache's rows cannot be gathered)
        self.prompts: dict[str, Prompt] = self._prompt_map(prompts) if prompts is not None else {}

        self.tag_id = self._check_step_tag(step_tag, step_separator)
        self.backbone = self._find_backbone(model)
        self._rope_holders = [m for m in model.modules() if "rope_deltas" in vars(m)]
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"
        self.reward_token_ids: tuple[int, int] | None = None
        if value_head is not None:
            if isinstance(value_head, torch.nn.Linear):
                weight, bias = value_head.weight, value_head.bias
            else:
                weight, bias = value_head, None
            if weight.dim() != 2 or weight.shape[0] != 1:
                raise ValueError(f"PRMScorer: value_head must map H -> 1, got a weight of shape {tuple(weight.shape)}")
        else:
            good, bad = (self._check_reward_token(t) for t in reward_tokens)
            if good == bad:
                raise ValueError(f"PRMScorer: the reward tokens {reward_tokens!r} are the same token (id {good})")
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if head is None or getattr(head, "weight", None) is None:
                raise ValueError(f"PRMScorer: model family {self.capabilities.family!r} ({type(model).__name__}) has no "
                                 "LM head (get_output_embeddings); pass value_head=")
            self.reward_token_ids = (good, bad)
            rows = torch.tensor([good, bad], device=head.weight.device)
            weight = head.weight.detach().index_select(0, rows)  # 2 rows, never the [V, H] projection
            bias = head.bias.detach().index_select(0, rows) if getattr(head, "bias", None) is not None else None
            # The model's logits are softcap(scale * (h @ W.T + b)): the scale is folded into the two rows
            # (exact up to rounding); a soft-cap is applied to the two logits in `_step_scores`.
            scale = self.capabilities.logit_scale
            if scale != 1.0:
                weight = weight * scale
                bias = bias * scale if bias is not None else None
        self.logit_softcap = self.capabilities.logit_softcap if value_head is None else None
        self.head_weight = weight.detach().clone()
        self.head_bias = bias.detach().clone() if bias is not None else None

    # -- construction checks ---------------------------------------------------------------------------

    def _check_step_tag(self, tag: str, sep: str) -> int:
        ids = _one_token(self.tokenizer, tag)
        if len(ids) != 1:
            raise ValueError(
                f"PRMScorer: step tag {tag!r} must encode to one token, but it encodes to {len(ids)}: "
                f"{_pieces(self.tokenizer, ids)} (ids {ids}); add it to the tokenizer or pick another tag"
            )
        tag_id = ids[0]
        for probe in _TAG_PROBES:
            text = probe + tag + sep + probe + tag
            got = _one_token(self.tokenizer, text)
            if got.count(tag_id) != 2 or got[-1] != tag_id:
                raise ValueError(
                    f"PRMScorer: step tag {tag!r} (token id {tag_id}) does not stay one token in context: "
                    f"{text!r} tokenizes as {_pieces(self.tokenizer, got)}, with the tag token "
                    f"{got.count(tag_id)} times instead of 2; step scores would be read at the wrong positions"
                )
        return tag_id

    def _check_reward_token(self, text: str) -> int:
        ids = _one_token(self.tokenizer, text)
        if len(ids) != 1:
            raise ValueError(
                f"PRMScorer: reward token {text!r} must encode to one token, but it encodes to {len(ids)}: "
                f"{_pieces(self.tokenizer, ids)} (ids {ids})"
            )
        return ids[0]

    @staticmethod
    def _find_backbone(model: torch.nn.Module) -> torch.nn.Module:
        prefix = getattr(model, "base_model_prefix", "")
        inner = getattr(model, prefix, None) if prefix else None
        return inner if isinstance(inner, torch.nn.Module) and inner is not model else model

    @staticmethod
    def _prompt_map(prompts: Sequence[Prompt] | Mapping[str, Prompt]) -> dict[str, Prompt]:
        return dict(prompts) if isinstance(prompts, Mapping) else {p.id: p for p in prompts}

    # -- encoding ------------------------------------------------------------------------------------------

    def format_prompt(self, prompt: Prompt) -> str:
        """The prompt text fed to the PRM (see ``prompt_format``)."""
        if self.prompt_format is not None:
            return self.prompt_format(prompt, self.processor)
        end = self.capabilities.processor_prompt_end
        text = self._default_format(prompt)
        # A processor that appends its own prompt end (PaliGemma: "\n") must not get a second one.
        return text.removesuffix(end) if end else text

    def _default_format(self, prompt: Prompt) -> str:
        n_images = len(prompt.images)
        template_owner = self.processor if getattr(self.processor, "chat_template", None) else None
        if template_owner is not None:
            if n_images or template_owner is not self.tokenizer:
                content: Any = [{"type": "image"}] * n_images + [{"type": "text", "text": prompt.question}]
            else:
                content = prompt.question
            return template_owner.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        return image_token * n_images + prompt.question + "\n"

    def encode_prompt(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        """Model inputs of the shared prefix (batch 1): ``input_ids``, plus ``pixel_values`` etc. for images."""
        if self.capabilities.needs_image and not prompt.images:
            raise ValueError(f"PRMScorer: prompt {prompt.id!r} has no image, which model family "
                             f"{self.capabilities.family!r} needs (its prefix-LM mask comes from the image tokens)")
        text = self.format_prompt(prompt)
        if prompt.images:
            images = [_load_image(im) for im in prompt.images]
            enc = self.processor(text=text, images=images, return_tensors="pt")
        else:
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        drop = self.capabilities.drop_inputs
        return cast_floating_inputs({k: v for k, v in enc.items() if isinstance(v, torch.Tensor) and k not in drop},
                                    self._dtype)

    def encode_response(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of a response with the step tag after every step, and the tag positions in them.

        Raises ValueError when the number of tag tokens differs from the number of steps (the tokenizer
        merged the tag with a neighbour): scores would silently land on the wrong positions otherwise.
        """
        steps = [s.replace(self.step_tag, "") for s in split_steps(text, self.step_separator, self.answer_marker)]
        steps = [s for s in steps if s.strip()]
        if not steps:
            return [], []
        tagged = self.step_separator.join(s + self.step_tag for s in steps)
        ids = _one_token(self.tokenizer, tagged)
        tags = [i for i, t in enumerate(ids) if t == self.tag_id]
        if len(tags) != len(steps):
            raise ValueError(
                f"PRMScorer: {len(steps)} steps but {len(tags)} step-tag tokens after tokenizing {tagged[:200]!r}: "
                f"the tag {self.step_tag!r} merged with its neighbours"
            )
        return ids, tags

    # -- scoring ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _per_token(self, prefix: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-token prefix inputs other than ids and mask (token types, Mllama's cross-attention mask):
        ``[1, P, ...]`` tensors."""
        shape = tuple(prefix["input_ids"].shape)
        return {k: v for k, v in prefix.items()
                if k not in ("input_ids", "attention_mask") and v.dim() >= 2 and tuple(v.shape[:2]) == shape}

    def _step_scores(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[S]`` float32 P(good step) at ``positions`` of ``hidden`` (see ``ops.prm_step_scores``)."""
        weight, bias = self._head(hidden)
        if self.logit_softcap is None:
            return ops.prm_step_scores(hidden, positions, weight, bias)
        # Soft-capped logits (Gemma 2): the op takes no soft-cap, so the two logits are computed here, exactly
        # as the model's forward does (cap * tanh(logits / cap)), then the same fp32 two-way softmax.
        logits = hidden.index_select(0, positions).float() @ weight.float().T
        if bias is not None:
            logits = logits + bias.float()
        cap = self.logit_softcap
        logits = torch.tanh(logits / cap) * cap
        return torch.softmax(logits, dim=-1)[:, 0]

    def _head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.head_weight.to(device=hidden.device, dtype=hidden.dtype)
        b = self.head_bias.to(device=hidden.device, dtype=hidden.dtype) if self.head_bias is not None else None
        return w, b

    def _forward(self, **inputs: Any) -> Any:
        return self.backbone(**inputs, return_dict=True)

    def _reset_rope_deltas(self) -> None:
        """M-RoPE models (Qwen2-VL family) keep the last prompt's position offset in ``rope_deltas``; a
        stale one would shift the positions of the next prompt."""
        for m in self._rope_holders:
            m.rope_deltas = None

    def _batches(self, lengths: list[int], prefix_len: int) -> list[list[int]]:
        """Response indices, longest first, in batches of at most ``max_batch_tokens`` padded tokens."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            if batches:
                cur = batches[-1]
                width = prefix_len + lengths[cur[0]]  # the first is the longest
                if (len(cur) + 1) * width <= self.max_batch_tokens:
                    cur.append(i)
                    continue
            batches.append([i])
        return batches

    @torch.no_grad()
    def _tag_hidden_shared(
        self, prefix: dict[str, torch.Tensor], encoded: list[tuple[list[int], list[int]]],
        owner: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden rows [N, H], tag row indices [S] in response order) with one prefix forward. ``prefix``
        may hold G prompts of one length (``[G, P]``); ``owner[i]`` is then the prefix row of response i."""
        self._reset_rope_deltas()
        out = self._forward(**prefix, use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise ValueError("PRMScorer: the model returned no KV cache; use share_prefix=False")
        G, P = prefix["input_ids"].shape
        if G > 1 and not kv.supports_merge(cache):
            raise _NotGatherable(f"PRMScorer: rows of {type(cache).__name__} cannot be gathered")
        # Explicit positions: with a cache, some models (M-RoPE) cannot derive them from the mask of a
        # continuation batch; PaliGemma counts them from 1.
        starts = [P + d + self.capabilities.position_offset for d in rope_deltas(self._rope_holders, G)]
        owner = owner if owner is not None else [0] * len(encoded)
        per_token = self._per_token(prefix)  # continued over the response as the family needs
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        chunks, positions_of = [], {}
        base = 0
        for batch in self._batches([len(ids) for ids, _ in encoded], P):
            L = len(encoded[batch[0]][0])
            ids = torch.full((len(batch), L), pad, dtype=torch.long, device=self.device)
            for r, i in enumerate(batch):  # right padding: pads come after every real token
                ids[r, : len(encoded[i][0])] = torch.tensor(encoded[i][0], device=self.device)
                positions_of[i] = [base + r * L + t for t in encoded[i][1]]
            rows = torch.tensor([owner[i] for i in batch], dtype=torch.long, device=self.device)
            if G == 1:
                batch_cache = copy.deepcopy(cache)
                batch_cache.batch_repeat_interleave(len(batch))
            else:
                batch_cache = kv.gather_rows(cache, rows)
            extra = {}
            for k, v in per_token.items():
                tail = extend_token_inputs(k, v, L, self.capabilities)[:, P:]  # [G, L, ...]
                extra[k] = tail.expand(len(batch), *tail.shape[1:]) if G == 1 else tail.index_select(0, rows)
            mask = torch.ones((len(batch), P + L), dtype=torch.long, device=self.device)
            first = torch.tensor(starts, dtype=torch.long, device=self.device).index_select(0, rows)
            pos = first[:, None] + torch.arange(L, device=self.device)
            o = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                              **{self._cache_kwarg: batch_cache}, **extra)
            h = o.last_hidden_state
            chunks.append(h.reshape(-1, h.shape[-1]))
            base += h.shape[0] * h.shape[1]
        positions = [p for i in range(len(encoded)) for p in positions_of[i]]
        hidden = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return hidden, torch.tensor(positions, dtype=torch.long, device=hidden.device)

    @torch.no_grad()
    def _tag_hidden_independent(
        self, prefix: dict[str, torch.Tensor], encoded: list[tuple[list[int], list[int]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden rows, tag row indices) from one full forward (prefix + response) per response."""
        P = prefix["input_ids"].shape[1]
        chunks, positions, base = [], [], 0
        for ids, tags in encoded:
            full = dict(prefix)
            cont = torch.tensor([ids], dtype=torch.long, device=self.device)
            full["input_ids"] = torch.cat([prefix["input_ids"], cont], dim=1)
            if "attention_mask" in prefix:
                full["attention_mask"] = torch.cat([prefix["attention_mask"], torch.ones_like(cont).to(
                    prefix["attention_mask"].dtype)], dim=1)
            for k, v in self._per_token(prefix).items():
                full[k] = extend_token_inputs(k, v, cont.shape[1], self.capabilities)
            self._reset_rope_deltas()
            h = self._forward(**full, use_cache=False).last_hidden_state[0]
            chunks.append(h)
            positions += [base + P + t for t in tags]
            base += h.shape[0]
        hidden = torch.cat(chunks) if chunks else torch.empty(0, self.head_weight.shape[1], device=self.device)
        return hidden, torch.tensor(positions, dtype=torch.long, device=hidden.device)

    def score(self, prompt: Prompt, responses: Sequence[str], share_prefix: bool | None = None) -> PRMScores:
        """Step scores and response scores (min over steps) of ``responses`` to ``prompt``.

        ``share_prefix`` overrides the constructor's choice for this call.
        """
        share = self.share_prefix if share_prefix is None else share_prefix
        share = share and self.capabilities.prefix_sharing  # e.g. linear-attention caches: never shared
        encoded = [self.encode_response(r) for r in responses]
        if not any(tags for _, tags in encoded):
            return PRMScores([[] for _ in responses], [math.nan] * len(responses))
        return self._score_encoded(self.encode_prompt(prompt), encoded, share)

    def _score_encoded(self, prefix: dict[str, torch.Tensor], encoded: list[tuple[list[int], list[int]]],
                       share: bool) -> PRMScores:
        """:meth:`score` of one prompt's encoding ``prefix`` and its encoded responses (some with a step)."""
        counts = [len(tags) for _, tags in encoded]
        prefix = {k: v.to(self.device) for k, v in prefix.items()}
        run = self._tag_hidden_shared if share else self._tag_hidden_independent
        hidden, positions = run(prefix, [e for e, c in zip(encoded, counts) if c > 0])
        return self._collect(self._step_scores(hidden, positions), [counts])[0]

    @staticmethod
    def _collect(step: torch.Tensor, counts: list[list[int]]) -> list[PRMScores]:
        """Split step scores ``[S]`` (all responses of several prompts, in order) into one
        :class:`PRMScores` per prompt; ``counts[j]`` holds the step count of each response of prompt j."""
        flat_counts = [c for cs in counts for c in cs]
        offsets = torch.tensor([0] + flat_counts, dtype=torch.long).cumsum(0).to(step.device)
        per_response = ops.segment_reduce(step, offsets, "min").cpu().tolist()  # NaN for no step
        flat, bounds = step.cpu().tolist(), offsets.cpu().tolist()
        out, r = [], 0
        for cs in counts:
            out.append(PRMScores(step_scores=[flat[bounds[r + i]: bounds[r + i + 1]] for i in range(len(cs))],
                                 scores=per_response[r: r + len(cs)]))
            r += len(cs)
        return out

    def _score_many(self, items: list[tuple[Prompt, list[str]]]) -> list[PRMScores]:
        """:meth:`score` of several prompts; prompts whose encodings have one length share prefix and
        response forwards (about ``max_batch_tokens / 4`` prompt tokens per prefix forward): one forward
        per prompt cost more than the tiny model's arithmetic on the demo (measured: PRM scoring 9 s of a
        60 s iteration). Each prompt's scores equal its own :meth:`score` up to rounding."""
        if not (self.share_prefix and self.capabilities.prefix_sharing and self._gather_rows) or len(items) < 2:
            return [self.score(p, r) for p, r in items]
        out: list[PRMScores | None] = [None] * len(items)
        by_len: dict[int, list[tuple[int, dict[str, torch.Tensor], list[tuple[list[int], list[int]]]]]] = {}
        for j, (prompt, responses) in enumerate(items):
            encoded = [self.encode_response(r) for r in responses]
            if not any(tags for _, tags in encoded):
                out[j] = self.score(prompt, responses)  # nothing to run
                continue
            prefix = self.encode_prompt(prompt)
            by_len.setdefault(int(prefix["input_ids"].shape[1]), []).append((j, prefix, encoded))
        for P, group in by_len.items():
            size = max(1, (self.max_batch_tokens // 4) // P)
            for a in range(0, len(group), size):
                chunk = group[a: a + size]
                results = self._score_stacked(chunk) if len(chunk) > 1 and self._gather_rows else None
                for n, (j, prefix, encoded) in enumerate(chunk):
                    out[j] = results[n] if results is not None else self._score_encoded(prefix, encoded, True)
        return [r for r in out if r is not None]

    def _score_stacked(self, chunk: list[tuple[int, dict[str, torch.Tensor], list[tuple[list[int], list[int]]]]]
                       ) -> list[PRMScores] | None:
        """Scores of ``(index, prompt encoding, encoded responses)`` items of one prompt length, from one prefix
        forward; None when their encodings do not stack or the cache's rows cannot be gathered."""
        stacked = stack_encodings([pre for _, pre, _ in chunk])
        if stacked is None:
            return None
        flat, owner = [], []
        for g, (_, _, encoded) in enumerate(chunk):
            live = [e for e in encoded if e[1]]
            flat += live
            owner += [g] * len(live)
        prefix = {k: v.to(self.device) for k, v in stacked.items()}
        try:
            hidden, positions = self._tag_hidden_shared(prefix, flat, owner)
        except _NotGatherable:  # e.g. sliding-window cache layers: one prompt at a time from now on
            self._gather_rows = False
            return None
        counts = [[len(tags) for _, tags in encoded] for _, _, encoded in chunk]
        return self._collect(self._step_scores(hidden, positions), counts)

    def __call__(
        self, samples: Sequence[Sample], prompts: Sequence[Prompt] | Mapping[str, Prompt] | None = None
    ) -> list[float]:
        """Score samples of any number of prompts; returns one score per sample, in order.

        Samples are grouped by ``prompt_id`` (one prefix forward per prompt). Each prompt is looked up in
        ``prompts``, then in the constructor's ``prompts``, then in ``sample.meta["prompt"]``. Also writes
        ``sample.step_scores`` and ``sample.score`` on each sample.

        Raises:
            ValueError: a sample whose Prompt cannot be found.
        """
        lookup = dict(self.prompts)
        if prompts is not None:
            lookup.update(self._prompt_map(prompts))
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s.prompt_id, []).append(i)
        scores = [math.nan] * len(samples)
        items = []
        for pid, idx in groups.items():
            prompt = lookup.get(pid)
            if prompt is None:
                meta_prompt = samples[idx[0]].meta.get("prompt")
                prompt = meta_prompt if isinstance(meta_prompt, Prompt) else None
            if prompt is None:
                raise ValueError(
                    f"PRMScorer: no Prompt for prompt_id {pid!r}; pass prompts=[...] to the call or the constructor"
                )
            items.append((prompt, [samples[i].text for i in idx]))
        for idx, result in zip(groups.values(), self._score_many(items), strict=True):
            for j, i in enumerate(idx):
                samples[i].step_scores = result.step_scores[j]
                samples[i].score = result.scores[j]
                scores[i] = result.scores[j]
        return scores
