"""Sampling parameters: one set per prompt, from scalars or per-prompt sequences, validated up front so a
bad value fails before any model call, with the prompt it belongs to in the message."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """One prompt's sampling parameters. ``temperature == 0`` is greedy; ``top_k=0``, ``top_p=1`` and
    ``min_p=0`` turn a filter off (filters apply in that order, as in ``ops.sample_from_logits``)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0


def _expand(name: str, value: Any, n_prompts: int) -> list:
    if isinstance(value, torch.Tensor):
        value = value.tolist() if value.dim() else value.item()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value] * n_prompts
    if len(value) != n_prompts:
        raise ValueError(f"{name}: expected a scalar or one value per prompt ({n_prompts}), got {len(value)} values")
    return list(value)


def _check(name: str, v: Any, ok: bool, rule: str, i: int) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}; prompt {i} has {v!r}")


def resolve_params(n_prompts: int, temperature: Any = 1.0, top_p: Any = 1.0, top_k: Any = 0,
                   min_p: Any = 0.0) -> list[SamplingParams]:
    """Per-prompt :class:`SamplingParams` from scalars, sequences or 1-D tensors of length ``n_prompts``.

    Raises:
        ValueError: a sequence of the wrong length, or a value out of range (temperature < 0 or not
            finite, top_k < 0 or not an integer, top_p outside (0, 1], min_p outside [0, 1]).
    """
    cols = [_expand(name, v, n_prompts) for name, v in
            (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("min_p", min_p))]
    out = []
    for i, (t, p, k, m) in enumerate(zip(*cols, strict=True)):
        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
        _check("temperature", t, real(t) and math.isfinite(t) and t >= 0, "a finite number >= 0", i)
        _check("top_p", p, real(p) and 0 < p <= 1, "in (0, 1]", i)
        _check("top_k", k, real(k) and int(k) == k and k >= 0, "an integer >= 0", i)
        _check("min_p", m, real(m) and 0 <= m <= 1, "in [0, 1]", i)
        out.append(SamplingParams(float(t), int(k), float(p), float(m)))
    return out


def check_generate_args(n: Any, max_new_tokens: Any) -> None:
    """The checks every engine's ``generate`` makes on ``n`` and ``max_new_tokens``.

    Raises:
        ValueError: either is not an int >= 1.
    """
    for name, v in (("n", n), ("max_new_tokens", max_new_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"generate: {name} must be an int >= 1, got {v!r}")
