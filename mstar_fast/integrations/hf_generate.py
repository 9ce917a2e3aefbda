"""``model.generate(...)`` with the package's sampler (:func:`mstar_fast.ops.sample_from_logits`).

:class:`SamplerLogitsProcessor` is a ``transformers`` logits processor that draws each row's next token
with per-row temperature / top-k / top-p / min-p and a per-row seed (Philox offset = the decoding step),
then hands ``generate`` a score row that is ``-inf`` everywhere except at the drawn token, so
``generate``'s greedy selection (``do_sample=False``) picks exactly that token. :func:`generate` wraps the
call and checks the arguments that would break this.

What changes against plain ``generate``:

* ``output_scores=True`` is refused: the processed scores would be the one-hot masks. Raw logits still
  come back with ``output_logits=True`` (and ``return_dict_in_generate=True``), and the sampled tokens'
  log-probabilities with ``return_logprobs=True``;
* ``do_sample=True``, beam search (``num_beams > 1``) and ``num_return_sequences > 1`` are refused (repeat
  the input rows instead: each row has its own seed);
* a row's tokens depend only on (its logits, its parameters, its seed), not on the other rows.

Example::

    from mstar_fast.integrations.hf_generate import generate
    out, logprobs = generate(model, **inputs, max_new_tokens=64, temperature=[0.7, 1.0], top_p=0.95,
                             seed=torch.tensor([1, 2]), return_logprobs=True)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

from mstar_fast import ops

Param = float | int | Sequence[float] | torch.Tensor


def _as_row_param(name: str, value: Param, integer: bool) -> float | int | torch.Tensor:
    if isinstance(value, torch.Tensor) or (isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return torch.tensor(list(value), dtype=torch.int64 if integer else torch.float32)
    raise ValueError(f"{name} must be a number, a sequence or a 1-D tensor, got {type(value).__name__}")


class SamplerLogitsProcessor:
    """Logits processor drawing tokens with :func:`mstar_fast.ops.sample_from_logits`.

    Args:
        temperature, top_k, top_p, min_p: a scalar or one value per row (sequence or ``[B]`` tensor);
            ``temperature=0`` is greedy. Ranges as in ``sample_from_logits``.
        seed: an int (row ``b`` keyed by a hash of (seed, b)), a ``[B]`` int64 tensor of per-row seeds, or
            None (drawn once from torch's default generator at the first step, so ``torch.manual_seed``
            makes a run reproducible).

    Use with ``model.generate(..., do_sample=False, logits_processor=LogitsProcessorList([proc]))``, one
    processor per ``generate`` call. After the call, :meth:`logprobs` gives ``[B, new_tokens]`` fp32
    log-probabilities of the drawn tokens under ``log_softmax(logits / T)``.
    """

    def __init__(self, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0, min_p: Param = 0.0,
                 seed: int | torch.Tensor | None = None) -> None:
        self.temperature = _as_row_param("temperature", temperature, False)
        self.top_k = _as_row_param("top_k", top_k, True)
        self.top_p = _as_row_param("top_p", top_p, False)
        self.min_p = _as_row_param("min_p", min_p, False)
        self.seed = seed
        self._start: int | None = None
        self._seeds: torch.Tensor | int | None = None
        self._logprobs: list[torch.Tensor] = []

    def _on(self, v: Any, device: torch.device) -> Any:
        return v.to(device) if isinstance(v, torch.Tensor) else v

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``input_ids [B, L]`` (prompt + tokens so far), ``scores [B, V]`` -> ``[B, V]`` with 0 at the
        drawn token and ``-inf`` elsewhere."""
        if self._start is None:
            self._start = int(input_ids.shape[1])
            # Draw per-row seeds once so every step of a row uses the same key (None: torch's generator).
            self._seeds = (torch.randint(-(2**63), 2**63 - 1, (scores.shape[0],), dtype=torch.int64)
                           if self.seed is None else self.seed)
        step = int(input_ids.shape[1]) - self._start
        dev = scores.device
        tokens, lp = ops.sample_from_logits(
            scores, self._on(self.temperature, dev), self._on(self.top_k, dev), self._on(self.top_p, dev),
            self._on(self.min_p, dev), seed=self._on(self._seeds, dev), offset=step, return_logprobs=True,
            check=True)  # a status (-1 / -2) would reach scatter_ below as an index; generate() syncs anyway
        self._logprobs.append(lp)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens.view(-1, 1), 0.0)
        return out

    def logprobs(self) -> torch.Tensor:
        """``[B, steps]`` fp32 log-probabilities of the drawn tokens (rows that finished early keep
        drawing padding-bound tokens; mask them with the output's EOS / pad positions)."""
        if not self._logprobs:
            return torch.empty(0, 0)
        return torch.stack(self._logprobs, dim=1)


def generate(model: Any, *args: Any, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
             min_p: Param = 0.0, seed: int | torch.Tensor | None = None, return_logprobs: bool = False,
             **generate_kwargs: Any) -> Any:
    """``model.generate(*args, **generate_kwargs)`` drawing every token with the package's sampler.

    Args:
        model: a ``transformers`` generative model.
        temperature, top_k, top_p, min_p, seed: see :class:`SamplerLogitsProcessor` (per-row values are
            ``[B]``, B = the number of input rows).
        return_logprobs: also return the ``[B, new_tokens]`` fp32 log-probabilities of the drawn tokens.
        **generate_kwargs: passed to ``generate`` (``input_ids``, ``attention_mask``, ``pixel_values``,
            ``max_new_tokens``, ``eos_token_id``, ``output_logits``, ``return_dict_in_generate``, ...).

    Returns:
        What ``generate`` returns (a ``[B, L]`` tensor or a ``GenerateOutput``), or ``(that, logprobs)``.

    Raises:
        ValueError: ``output_scores=True``, ``do_sample=True``, ``num_beams > 1``,
            ``num_return_sequences > 1``, or sampling settings passed to ``generate`` itself
            (``top_k=``... belong to this function), with the reason.
    """
    from transformers import LogitsProcessorList

    if generate_kwargs.get("output_scores"):
        raise ValueError("generate: output_scores=True is not supported with the mstar_fast sampler (the processed "
                         "scores are one-hot masks of the drawn tokens); use output_logits=True for the raw logits "
                         "and return_logprobs=True for the drawn tokens' log-probabilities")
    if generate_kwargs.get("do_sample"):
        raise ValueError("generate: do_sample=True would let transformers sample again after the mstar_fast sampler; "
                         "leave it unset (the sampler draws the tokens)")
    if (generate_kwargs.get("num_beams") or 1) > 1:
        raise ValueError("generate: beam search (num_beams > 1) cannot be combined with the mstar_fast sampler")
    if (generate_kwargs.get("num_return_sequences") or 1) > 1:
        raise ValueError("generate: num_return_sequences > 1 is not supported; repeat the input rows instead "
                         "(each row gets its own seed)")
    for k in ("generation_config",):
        gc = generate_kwargs.get(k)
        if gc is not None and (getattr(gc, "num_beams", 1) > 1 or getattr(gc, "output_scores", False)):
            raise ValueError("generate: the generation_config asks for beam search or output_scores, which the "
                             "mstar_fast sampler does not support")
    proc = SamplerLogitsProcessor(temperature, top_k, top_p, min_p, seed)
    procs = LogitsProcessorList(list(generate_kwargs.pop("logits_processor", None) or []) + [proc])
    # The model's generation_config may enable sampling / warpers; switch them off: the sampler owns them.
    out = model.generate(*args, logits_processor=procs, do_sample=False, num_beams=1, temperature=None, top_k=None,
                         top_p=None, min_p=None, **generate_kwargs)
    return (out, proc.logprobs()) if return_logprobs else out
