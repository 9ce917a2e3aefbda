"""The built-in rollout engine (backend ``"hf"``): prefix-sharing batched sampling for any ``transformers``
causal LM or vision-language model.

For every prompt the image encoder and the prefill run **once** (batch of 1, exactly as
``model.generate`` would for that prompt). The prompt's n rows then join the running batch with other
prompts' rows, in one of two cache layouts:

* shared prefix (default where a one-step probe passes): one copy of the prompt's keys/values for its n
  samples, decoded with cascade attention (:mod:`mstar_fast.rollout.shared_prefix`);
* padded (any model with a ``transformers`` cache): the 1-row cache repeated to n rows and left-padded
  next to the other prompts' rows (:class:`mstar_fast.rollout.kv.PaddedStore`).

Each decode step is one model call over all live rows with explicit per-row position ids, then one
``ops.sample_from_logits`` call with per-row temperature / filters and per-sample seeds (Philox offset =
the row's decode step), so a sample depends on (seed, prompt id, sample index), not on what else is in
the batch. Finished rows leave the batch and the cache; waiting prompts are admitted while the token
budget allows (:mod:`mstar_fast.rollout.scheduler`). Models without a reusable cache fall back to their
own ``generate`` (:mod:`mstar_fast.rollout.fallback`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from mstar_fast.constants import ROLLOUT_BACKENDS
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.families import family_capabilities, log_no_prefix_sharing
from mstar_fast.models.prompting import PLAIN_TEMPLATE, get_tokenizer
from mstar_fast.rollout import kv, shared_prefix
from mstar_fast.rollout.params import check_generate_args, resolve_params
from mstar_fast.rollout.scheduler import Run
from mstar_fast.rollout.stopping import normalize_stop
from mstar_fast.rollout.vllm_engine import VLLMRolloutEngine

log = logging.getLogger("mstar_fast.rollout.engine")

BACKENDS = ROLLOUT_BACKENDS


def _context_length(model: Any) -> int | None:
    cfg = model.config
    for c in (getattr(cfg, "text_config", None), cfg):
        v = getattr(c, "max_position_embeddings", None) if c is not None else None
        if isinstance(v, int) and v > 0:
            return v
    return None


def _eos_ids(model: Any, tokenizer: Any, override: int | Sequence[int] | None) -> list[int]:
    e = override
    if e is None:
        gc = getattr(model, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
    if e is None:
        e = getattr(tokenizer, "eos_token_id", None)
    if e is None:
        return []
    return [int(e)] if isinstance(e, int) else [int(x) for x in e]


class RolloutEngine:
    """Sample ``n`` responses per prompt from a policy.

    Args:
        model: a ``transformers`` causal LM or image-text-to-text model (eval mode); for
            ``backend="vllm"`` a model path or a ``vllm.LLM``.
        processor: its processor (or tokenizer, for text-only models), e.g. from
            :func:`mstar_fast.models.load_policy`.
        backend: ``"hf"`` (this engine) or ``"vllm"`` (:class:`~mstar_fast.rollout.vllm_engine.VLLMRolloutEngine`).
        max_batch_tokens: KV-cache budget of the running batch, in positions: per prompt, its prompt
            tokens (once with ``shared_prefix``, else once per row) plus max new tokens per row. A prompt
            is admitted when its rows fit (always when the batch is empty).
        max_batch_rows: at most this many live rows (samples) at once.
        max_prefill_tokens: prompts of equal token length admitted together are prefilled in one forward
            (vision encoder included) of at most this many tokens, instead of one forward each; 0: one
            prompt per forward. Decided once, by a probe prefill at the first ``generate`` (the cache must
            merge), so batching depends only on each call's prompts: a resumed run samples exactly what an
            uninterrupted one did.
        max_model_len: context length; default the model config's ``max_position_embeddings``. A prompt
            that fills it gets an error sample; generation stops (``"length"``) when it is reached.
        eos_token_id: id(s) that end a sample; default the model's generation config, else the tokenizer's.
        use_prefix_sharing: None (auto: on when the model returns a ``transformers`` cache whose rows can
            be repeated; off, with the reason logged, for caches with linear-attention / conv layers), False
            to always use the model's own ``generate`` (one call per prompt, ``num_return_sequences=n``).
        shared_prefix: keep one copy of each prompt's KV cache for all its samples and decode with
            cascade attention (:mod:`~mstar_fast.rollout.shared_prefix`). None (auto: on when a one-step
            probe shows the model's attention goes through ``AttentionInterface`` and matches), True
            (probe must pass), or False (every row holds its own copy, left-padded).
        progress: None (a tqdm bar for >= 64 samples on a terminal), True or False.
        instruction, include_choices, template: prompt formatting, see
            :func:`mstar_fast.models.prompting.encode_prompt`.
    """

    def __new__(cls, model: Any = None, processor: Any = None, backend: str = "hf", **options: Any):
        if backend == "vllm":
            return VLLMRolloutEngine(model, processor, **options)
        if backend != "hf":
            raise ValueError(f"RolloutEngine: unknown backend {backend!r}; expected one of {BACKENDS}")
        return super().__new__(cls)

    def __init__(self, model: Any, processor: Any, backend: str = "hf", *, max_batch_tokens: int = 65536,
                 max_batch_rows: int = 256, max_prefill_tokens: int = 8192, max_model_len: int | None = None,
                 eos_token_id: int | Sequence[int] | None = None, use_prefix_sharing: bool | None = None,
                 shared_prefix: bool | None = None,
                 progress: bool | None = None, instruction: str | None = None, include_choices: bool = False,
                 template: str = PLAIN_TEMPLATE):
        if max_batch_tokens < 1 or max_batch_rows < 1:
            raise ValueError(f"RolloutEngine: max_batch_tokens ({max_batch_tokens}) and max_batch_rows "
                             f"({max_batch_rows}) must be >= 1")
        if isinstance(max_prefill_tokens, bool) or not isinstance(max_prefill_tokens, int) or max_prefill_tokens < 0:
            raise ValueError(f"RolloutEngine: max_prefill_tokens must be an int >= 0, got {max_prefill_tokens!r}")
        self.model, self.processor = model, processor
        self.tokenizer = get_tokenizer(processor)
        self.max_batch_tokens, self.max_batch_rows = max_batch_tokens, max_batch_rows
        self.max_prefill_tokens = max_prefill_tokens
        self.max_model_len = max_model_len or _context_length(model) or 1 << 30
        self.eos_ids = _eos_ids(model, self.tokenizer, eos_token_id)
        self.progress = progress
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        params = inspect.signature(model.forward).parameters
        self._cache_kw = kv.cache_kwarg(model)
        self._extra_kw = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        self._input_names = set(params)
        has_cache_arg = self._cache_kw in params
        # The rollout reads the model's own logits, so only the family's inputs and cache matter here.
        self.capabilities = family_capabilities(model, processor, reads_logits=False, engine="rollout")
        if use_prefix_sharing and not self.capabilities.prefix_sharing:
            raise ValueError(f"RolloutEngine: use_prefix_sharing=True but {self.capabilities.family}: "
                             f"{self.capabilities.prefix_sharing_reason}; use use_prefix_sharing=None or False")
        if use_prefix_sharing is None and has_cache_arg and not self.capabilities.prefix_sharing:
            log_no_prefix_sharing("RolloutEngine", self.capabilities)
            use_prefix_sharing = False
        self.prefix_sharing = has_cache_arg if use_prefix_sharing is None else bool(use_prefix_sharing)
        self.format_kwargs = {"instruction": instruction, "include_choices": include_choices, "template": template,
                              "processor_prompt_end": self.capabilities.processor_prompt_end}
        self.mergeable: bool | None = None  # can rows of several prompts share a cache? (known after a prefill)
        self.batch_prefill: bool | None = None if max_prefill_tokens else False  # decided at the first generate
        self.shared_prefix = shared_prefix
        self._shared_checked = shared_prefix is False
        # Token ids never sampled (e.g. image placeholders, which a trainer would mistake for image slots);
        # set by callers such as integrations.trl.rollout_func.
        self.suppress_token_ids: list[int] = []
        # M-RoPE models (Qwen2-VL family) keep the prompt's position offset in a `rope_deltas` attribute.
        self._rope_holders = [m for m in model.modules() if "rope_deltas" in vars(m)]

    # ------------------------------------------------------------------ public API
    def generate(self, prompts: Sequence[Prompt], n: int, temperature: Any = 1.0, top_p: Any = 1.0, top_k: Any = 0,
                 min_p: Any = 0.0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None,
                 seed: int = 0) -> list[Sample]:
        """Sample ``n`` responses for each prompt.

        Args:
            prompts: the prompts (ids should be unique: seeds derive from them).
            n: samples per prompt (>= 1).
            temperature, top_p, top_k, min_p: a scalar, or one value per prompt (sequence or 1-D tensor).
                ``temperature=0`` is greedy (the n samples are then identical and decoded once).
            max_new_tokens: most tokens generated per sample (EOS included).
            stop: stop string(s); the text ends before the first one (``meta["stop"]`` names it).
            seed: run seed; sample i of prompt p uses ``sample_seed(seed, p.id, i)`` (``Sample.seed``).

        Returns:
            ``len(prompts) * n`` samples grouped by prompt in input order, ``index`` 0..n-1 within each.
            ``token_ids`` holds the generated ids (with the final EOS, if any); ``text`` their decoding
            without special tokens; ``token_logprobs`` the sampler's logprob of each of those ids under
            ``log_softmax(logits / T)`` (None on the ``generate`` fallback). A prompt that cannot be run (image that cannot be opened, prompt
            longer than the context) gives n samples with ``finish_reason="error"`` and ``meta["error"]``.

        Raises:
            ValueError: n < 1, max_new_tokens < 1, a sampling parameter out of range or of the wrong length.
        """
        prompts = list(prompts)
        check_generate_args(n, max_new_tokens)
        params = resolve_params(len(prompts), temperature, top_p, top_k, min_p)
        stop = normalize_stop(stop)
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling (or probing), even when called between training steps
        try:
            if self.prefix_sharing and not self._shared_checked:
                self._check_shared_prefix()
            if self.batch_prefill is None:
                self._check_batch_prefill()
            run = Run(self, prompts, n, params, max_new_tokens, stop, int(seed))
            with torch.inference_mode(), run.progress_bar():
                run.execute()
        finally:
            self.model.train(was_training)
        return [s for group in run.results for s in group]

    def _check_batch_prefill(self) -> None:
        """Decide once whether prompts of one length may share a prefill: the model must return a cache whose
        layers merge (plain full-attention layers; a two-token text probe). Decided before any prompt runs,
        so no call's batching depends on what earlier calls did."""
        ok = False
        if self.prefix_sharing:
            ids = torch.tensor([list(self.tokenizer.encode("The answer", add_special_tokens=False))[:2] or [0, 1]],
                               device=self.device)
            try:
                with torch.inference_mode():
                    for m in self._rope_holders:
                        m.rope_deltas = None
                    cache = kv.output_cache(self.model(input_ids=ids, use_cache=True, **self._extra_kw))
                ok = cache is not None and kv.supports_merge(cache)
            except Exception as e:  # noqa: BLE001 - e.g. a family that needs an image: one prompt per prefill
                log.info("rollout: one prompt per prefill for %s (probe: %s)", type(self.model).__name__, e)
        self.batch_prefill = ok

    def _check_shared_prefix(self) -> None:
        """Decide once whether decode steps can use shared-prefix attention (probe on a short text)."""
        ok = shared_prefix.supported(self.model)
        if ok:
            ids = list(self.tokenizer.encode("The answer is 42. So", add_special_tokens=False))[:8]
            ids = ids if len(ids) >= 2 else [0, 1, 2]
            with torch.inference_mode():
                for m in self._rope_holders:
                    m.rope_deltas = None
                ok = shared_prefix.probe(self.model, self._cache_kw, ids)
        if self.shared_prefix and not ok:
            raise ValueError(f"RolloutEngine: shared_prefix=True but {type(self.model).__name__} does not pass the "
                             "shared-prefix probe (sliding-window or soft-capped attention, or attention outside "
                             "transformers' AttentionInterface); use shared_prefix=None or False")
        self.shared_prefix, self._shared_checked = ok, True
