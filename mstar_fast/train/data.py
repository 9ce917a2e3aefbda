"""Training data for the SFT engine: encoding (prompt, response) pairs with response-only labels,
padding them into micro-batches, and the batch plan (shuffle, global batches, length-sorted micro-batches,
shares per rank).

An item of ``SFTEngine.train_on`` is one of:
- a ``(Prompt, Sample)`` pair: the prompt is formatted and encoded exactly as the rollout engine does
  (:func:`mstar_fast.models.prompting.encode_prompt`, images included), the response is
  ``Sample.token_ids`` (the sampled ids) when present, else ``Sample.text`` tokenized plus EOS;
- an encoded example: a dict with 1-D ``input_ids`` and ``labels`` (``-100`` where no loss is taken),
  optional 1-D per-token tensors of the same length (``mm_token_type_ids``, ...) and model inputs with
  a leading batch-of-one or image dimension (``pixel_values``, ``image_grid_thw``, ...);
- a pre-collated batch: the same dict with 2-D ``[B, T]`` ``input_ids``/``labels`` whose every tensor
  has ``B`` rows; it is split into ``B`` encoded examples (padding removed via ``attention_mask``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.families import FamilyCapabilities, extend_token_inputs
from mstar_fast.models.prompting import PLAIN_TEMPLATE, RESPONSE_PREFIX_KEY, encode_prompt, get_tokenizer

logger = logging.getLogger("mstar_fast")

IGNORE_INDEX = -100
_CORE = ("input_ids", "labels", "attention_mask")


@dataclass
class EncodedExample:
    """One training sequence. ``input_ids`` / ``labels``: ``[T]`` int64 (labels ``-100`` outside the
    response); ``token_extras``: ``[T, ...]`` per-token model inputs (``[T]`` token types, Mllama's
    ``[T, images, tiles]`` cross-attention mask; padded with 0); ``extras``: other model inputs,
    concatenated along dim 0 when batched (processor outputs of a batch of one)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    token_extras: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_response_tokens(self) -> int:
        """Tokens that carry loss (labels at positions 1.., since position t predicts token t + 1)."""
        return int((self.labels[1:] != IGNORE_INDEX).sum())


def eos_token_id_for(model: Any, processor: Any) -> int | None:
    """The id a response should end with: the first of the model's generation EOS ids (the end-of-turn
    token for chat models), else the tokenizer's EOS."""
    gc = getattr(model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if e is None:
        tok = getattr(processor, "tokenizer", None) or processor
        e = getattr(tok, "eos_token_id", None)
    if isinstance(e, (list, tuple)):
        e = e[0] if e else None
    return None if e is None else int(e)


def _as_long_1d(name: str, v: Any) -> torch.Tensor:
    t = torch.as_tensor(v)
    if t.dim() != 1:
        raise ValueError(f"encoded example: {name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"encoded example: {name} must hold integers, got {t.dtype}")
    return t.to(torch.int64)


def example_from_dict(d: dict[str, Any]) -> EncodedExample:
    """An :class:`EncodedExample` from a dict with 1-D ``input_ids`` and ``labels`` (see module doc)."""
    if "input_ids" not in d or "labels" not in d:
        raise ValueError(f"an encoded example needs 'input_ids' and 'labels', got keys {sorted(d)}")
    ids = _as_long_1d("input_ids", d["input_ids"])
    labels = _as_long_1d("labels", d["labels"])
    if ids.shape != labels.shape:
        raise ValueError(f"encoded example: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} differ")
    tok, extra = {}, {}
    for k, v in d.items():
        if k in _CORE:
            continue
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"encoded example: {k!r} must be a tensor, got {type(v).__name__}")
        if v.dim() == 1 and v.shape[0] == ids.shape[0] and not v.is_floating_point():
            tok[k] = v
        else:
            extra[k] = v
    return EncodedExample(ids, labels, tok, extra)


def split_batch(batch: dict[str, Any]) -> list[EncodedExample]:
    """Split a pre-collated ``[B, T]`` batch into its ``B`` examples (padding dropped by attention_mask)."""
    ids = torch.as_tensor(batch["input_ids"])
    labels = torch.as_tensor(batch["labels"])
    if ids.dim() != 2 or labels.shape != ids.shape:
        raise ValueError(f"a pre-collated batch needs [B, T] input_ids and labels, got {tuple(ids.shape)} and "
                         f"{tuple(labels.shape)}")
    B = ids.shape[0]
    mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids))).bool()
    out = []
    for b in range(B):
        keep = mask[b]
        d: dict[str, Any] = {"input_ids": ids[b][keep], "labels": labels[b][keep]}
        for k, v in batch.items():
            if k in _CORE:
                continue
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != B:
                raise ValueError(
                    f"pre-collated batch: {k!r} has no row per example (shape "
                    f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}); pass examples "
                    "((Prompt, Sample) pairs or 1-D encoded dicts) instead"
                )
            if v.dim() == 2 and v.shape[1] == ids.shape[1]:
                d[k] = v[b][keep]
            else:
                d[k] = v[b : b + 1]
        out.append(example_from_dict(d))
    return out


class SFTCollator:
    """Encodes ``(Prompt, Sample)`` pairs with a model's processor and pads examples into micro-batches.

    Args:
        processor: the policy's processor (or tokenizer, for text-only models).
        eos_token_id: appended to responses tokenized from text (not cut by ``max_new_tokens``); default:
            the tokenizer's EOS. Use :func:`eos_token_id_for` ``(model, processor)`` for chat models,
            whose turns end with their own token.
        instruction, include_choices, template: prompt formatting, the same arguments the rollout
            engine takes (:func:`mstar_fast.models.prompting.encode_prompt`), so training sees the
            prompt the samples were generated from.
        max_length: longest sequence kept; longer ones lose the end of their response, and an example
            whose prompt alone reaches it is dropped (with a warning).
        use_token_ids: train on ``Sample.token_ids`` (the exact sampled ids) when present and no stop
            string cut the text; otherwise re-tokenize ``Sample.text``.
        pad_to_multiple_of: pad micro-batch lengths up to a multiple of this.
        capabilities: the model family's needs (:func:`mstar_fast.models.families.family_capabilities`):
            how per-token inputs continue over the response (PaliGemma's token types are 1 there, Mllama's
            cross-attention mask repeats its last prompt row; default 0). :class:`SFTEngine` sets it from
            its model when left None.
        prompt_cache_mb: MiB of processor outputs (token ids, pixel values) kept per prompt, least recently
            used dropped first; 0 disables. A prompt is encoded once for all its selected responses and
            epochs instead of once per example (measured on the demo: the processor was 27% of an SFT
            step).
    """

    def __init__(self, processor: Any, *, eos_token_id: int | None = None, instruction: str | None = None,
                 include_choices: bool = False, template: str | None = None, max_length: int | None = None,
                 use_token_ids: bool = True, pad_to_multiple_of: int | None = None,
                 capabilities: FamilyCapabilities | None = None, prompt_cache_mb: float = 256):
        self.processor = processor
        self.capabilities = capabilities
        self.tokenizer = get_tokenizer(processor)
        self.eos_token_id = eos_token_id if eos_token_id is not None else getattr(self.tokenizer, "eos_token_id", None)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = int(pad if pad is not None else (self.eos_token_id or 0))
        self.format_kwargs = {"instruction": instruction, "include_choices": include_choices,
                              "template": template or PLAIN_TEMPLATE}
        if max_length is not None and max_length < 2:
            raise ValueError(f"SFTCollator: max_length must be >= 2 or None, got {max_length}")
        self.max_length = max_length
        self.use_token_ids = use_token_ids
        self.pad_to_multiple_of = pad_to_multiple_of
        if not prompt_cache_mb >= 0:
            raise ValueError(f"SFTCollator: prompt_cache_mb must be >= 0, got {prompt_cache_mb}")
        self._prompts = _PromptCache(int(prompt_cache_mb * 2**20))

    # ---------------------------------------------------------------- encoding
    def response_ids(self, sample: Sample) -> list[int]:
        """The token ids trained on for ``sample`` (see ``use_token_ids``)."""
        if self.use_token_ids and sample.token_ids and "stop" not in (sample.meta or {}):
            return [int(t) for t in sample.token_ids]
        ids = list(self.tokenizer(sample.text, add_special_tokens=False)["input_ids"])
        if sample.finish_reason != "length" and self.eos_token_id is not None:
            ids.append(int(self.eos_token_id))
        return ids

    def length(self, item: Any) -> int:
        """A cheap length estimate for grouping (text tokens; image tokens are not counted)."""
        if isinstance(item, EncodedExample):
            return len(item)
        prompt, sample = item
        if self.use_token_ids and sample.token_ids and "stop" not in (sample.meta or {}):
            n_resp = len(sample.token_ids)
        else:
            n_resp = len(sample.text) // 3 + 1  # ~3 characters per token: grouping only needs an order
        return len(prompt.question) // 3 + n_resp

    def encode(self, prompt: Prompt, sample: Sample) -> EncodedExample | None:
        """Prompt (images included) + response, with ``labels = -100`` on every prompt and image token.
        Returns None when the prompt alone does not fit ``max_length``."""
        if sample.prompt_id != prompt.id:
            raise ValueError(f"SFTCollator: sample of prompt {sample.prompt_id!r} paired with prompt {prompt.id!r}")
        caps = self.capabilities or FamilyCapabilities(family="")
        enc = self._prompts.get(prompt, caps.processor_prompt_end)
        if enc is None:
            enc = encode_prompt(self.processor, prompt, **self.format_kwargs,
                                processor_prompt_end=caps.processor_prompt_end)
            self._prompts.put(prompt, caps.processor_prompt_end, enc)
        p_ids = torch.as_tensor(enc["input_ids"])
        if p_ids.dim() != 2 or p_ids.shape[0] != 1:
            raise ValueError(f"SFTCollator: expected the processor to return input_ids [1, P], got {tuple(p_ids.shape)}")
        P = p_ids.shape[1]
        resp = torch.tensor(self.response_ids(sample), dtype=torch.int64)
        if self.max_length is not None:
            if P >= self.max_length:
                logger.warning("mstar_fast: prompt %r has %d tokens >= max_length=%d; example dropped",
                               prompt.id, P, self.max_length)
                return None
            resp = resp[: self.max_length - P]
        ids = torch.cat([p_ids[0].to(torch.int64), resp])
        labels = torch.cat([torch.full((P,), IGNORE_INDEX, dtype=torch.int64), resp])
        tok, extra = {}, {}
        for k, v in enc.items():
            if k in _CORE or k in caps.drop_inputs or not isinstance(v, torch.Tensor):
                continue
            if v.dim() >= 2 and tuple(v.shape[:2]) == (1, P):  # per-token: continued as the family needs
                tok[k] = extend_token_inputs(k, v, len(resp), caps)[0]
            else:
                extra[k] = v
        return EncodedExample(ids, labels, tok, extra)

    def to_example(self, item: Any) -> EncodedExample | None:
        if isinstance(item, EncodedExample):
            return item
        if isinstance(item, tuple) and len(item) == 2:
            return self.encode(*item)
        raise ValueError(f"SFTCollator: cannot encode a {type(item).__name__}")

    # ---------------------------------------------------------------- batching
    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_token_id, self.pad_to_multiple_of)

    __call__ = collate


class _PromptCache:
    """Processor outputs of prompts, keyed by the prompt object and what formatting reads from it (question,
    choices, images, the ``meta`` keys it reads), so an edited prompt is encoded again. Entries hold the prompt itself, so its
    ``id()`` cannot be reused while cached. Least recently used entries leave first past ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._entries: OrderedDict[tuple, tuple[Prompt, dict[str, Any], int]] = OrderedDict()

    @staticmethod
    def _key(prompt: Prompt, end: str) -> tuple:
        return (id(prompt), end, prompt.id, prompt.question, tuple(prompt.choices or ()),
                tuple(im if isinstance(im, str) else id(im) for im in prompt.images),
                *(repr((prompt.meta or {}).get(k)) for k in (RESPONSE_PREFIX_KEY, "choices_in_question")))

    def get(self, prompt: Prompt, end: str) -> dict[str, Any] | None:
        if not self.max_bytes:
            return None
        key = self._key(prompt, end)
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return dict(hit[1])  # a new dict: callers may add or drop keys

    def put(self, prompt: Prompt, end: str, enc: dict[str, Any]) -> None:
        size = sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor))
        if not self.max_bytes or size > self.max_bytes:
            return
        key = self._key(prompt, end)
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[2]
        self._entries[key] = (prompt, dict(enc), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][2]


def _pad_cat(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0; tensors that differ in a later dim are zero-padded to the largest (e.g.
    Idefics3's [1, n_images, 3, H, W] with different image counts: all-zero images are its padding)."""
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) == 1:
        return torch.cat(tensors, dim=0)
    dims = {t.dim() for t in tensors}
    if len(dims) != 1:
        raise ValueError(f"cannot batch {name!r}: examples give tensors of different ranks {sorted(dims)}")
    size = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = []
    for t in tensors:
        pad = torch.zeros((t.shape[0], *size), dtype=t.dtype)
        pad[(slice(None),) + tuple(slice(0, s) for s in t.shape[1:])] = t
        out.append(pad)
    return torch.cat(out, dim=0)


def collate(examples: Sequence[EncodedExample], pad_token_id: int = 0,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad examples into ``input_ids``/``attention_mask``/``labels`` ``[B, T]`` (labels ``-100`` on
    padding), per-token extras ``[B, T, ...]`` (0 on padding) and concatenated other extras."""
    if not examples:
        raise ValueError("collate: no examples")
    B = len(examples)
    T = max(len(e) for e in examples)
    if pad_to_multiple_of:
        T = int(math.ceil(T / pad_to_multiple_of) * pad_to_multiple_of)
    ids = torch.full((B, T), pad_token_id, dtype=torch.int64)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.int64)
    tok_keys = sorted({k for e in examples for k in e.token_extras})
    toks = {}
    for k in tok_keys:
        parts = [e.token_extras[k] for e in examples if k in e.token_extras]
        # [T, ...] per example; trailing dims (Mllama's images x tiles) zero-padded to the largest
        trailing = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        toks[k] = torch.zeros((B, T, *trailing), dtype=parts[0].dtype)
    for b, e in enumerate(examples):
        n = len(e)
        ids[b, :n] = e.input_ids
        labels[b, :n] = e.labels
        mask[b, :n] = 1
        for k in tok_keys:
            if k in e.token_extras:
                v = e.token_extras[k]
                toks[k][(b, slice(0, n), *(slice(0, s) for s in v.shape[1:]))] = v
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, **toks}
    for k in sorted({k for e in examples for k in e.extras}):
        out[k] = _pad_cat(k, [e.extras[k] for e in examples if k in e.extras])
    return out


# -------------------------------------------------------------------- batch plan
def epoch_order(n: int, seed: int, call: int, epoch: int, shuffle: bool) -> list[int]:
    """The item order of one epoch: a permutation that depends only on (seed, call, epoch)."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed((seed * 1_000_003 + call) * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def plan_steps(n: int, global_batch_size: int, steps: int | None, epochs: int, seed: int, call: int,
               shuffle: bool) -> list[list[int]]:
    """Item indices of each optimizer step of one ``train_on`` call.

    ``steps=None``: ``epochs`` passes, each cut into global batches (the last one may be smaller).
    ``steps=k``: exactly ``k`` global batches, taking further epochs (new orders) as needed.
    """
    if n == 0:
        return []
    plan: list[list[int]] = []
    epoch = 0
    while True:
        order = epoch_order(n, seed, call, epoch, shuffle)
        for s in range(0, n, global_batch_size):
            plan.append(order[s : s + global_batch_size])
            if steps is not None and len(plan) == steps:
                return plan
        epoch += 1
        if steps is None and epoch == epochs:
            return plan


def rank_micro_batches(batch: list[int], lengths: Sequence[int], world: int, rank: int, micro_batch_size: int,
                       group_by_length: bool) -> list[list[int]]:
    """This rank's micro-batches of one global batch.

    Every rank gets the same number of micro-batches (collectives must match); a rank with nothing
    left gets an empty list for that slot (the engine runs a zero-weight dummy there). With
    ``group_by_length`` the batch is sorted by length first and cut into consecutive groups of at most
    ``world * micro_batch_size`` examples, dealt round-robin to the ranks: each micro-batch holds similar
    lengths (less padding) and ranks get similar token counts. The batch's membership never changes.
    """
    items = sorted(batch, key=lambda i: (-lengths[i], i)) if group_by_length else list(batch)
    n_micro = max(1, math.ceil(len(items) / (world * micro_batch_size)))
    base, extra = divmod(len(items), n_micro)
    out, start = [], 0
    for m in range(n_micro):
        size = base + (1 if m < extra else 0)
        group = items[start : start + size]
        start += size
        out.append(group[rank::world])
    return out
