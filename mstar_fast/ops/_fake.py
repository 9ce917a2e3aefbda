"""Fake (shape-only) implementations of the compiled ops, so ``torch.compile``, ``torch.export`` and
``torch.library.opcheck`` can trace ``torch.ops.mstar_fast.*`` without running a kernel.

Registered once, when the extension loads (``mstar_fast._ext.load_extension`` calls :func:`register`).
``sample_from_logits`` needs none here: ``csrc/registration.cpp`` gives it a Meta kernel, which fake
tensors use (and ``register_fake`` refuses an op that has one). Each fake repeats the compiled op's
shape rules (never its value checks: a fake tensor has no values) and returns empty outputs of the
right shape, dtype and device.
"""

from __future__ import annotations

import functools

import torch


def _prm_step_scores(hidden: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    torch._check(hidden.dim() == 2, lambda: f"prm_step_scores: hidden must be 2-D [N, H], got {tuple(hidden.shape)}")
    torch._check(positions.dim() == 1, lambda: f"prm_step_scores: positions must be 1-D, got {tuple(positions.shape)}")
    torch._check(weight.dim() == 2 and weight.shape[1] == hidden.shape[1],
                 lambda: f"prm_step_scores: weight must be [1 | 2, H], got {tuple(weight.shape)}")
    return hidden.new_empty((positions.shape[0],), dtype=torch.float32)


def _segment_reduce(values: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    torch._check(values.dim() == 1, lambda: f"segment_reduce: values must be 1-D, got {tuple(values.shape)}")
    torch._check(offsets.dim() == 1 and offsets.shape[0] >= 1,
                 lambda: f"segment_reduce: offsets must be [R + 1], got {tuple(offsets.shape)}")
    return values.new_empty((offsets.shape[0] - 1,))


def _group_topk(scores: torch.Tensor, group_offsets: torch.Tensor, k: int, valid: torch.Tensor | None) -> torch.Tensor:
    torch._check(scores.dim() == 1, lambda: f"group_topk: scores must be 1-D, got {tuple(scores.shape)}")
    return scores.new_empty(scores.shape, dtype=torch.bool)


FAKES = {
    "mstar_fast::prm_step_scores": _prm_step_scores,
    "mstar_fast::segment_reduce": _segment_reduce,
    "mstar_fast::group_topk": _group_topk,
}


@functools.lru_cache(maxsize=None)
def register() -> None:
    """Register :data:`FAKES` (once per process; the compiled library must be loaded)."""
    for name, fn in FAKES.items():
        torch.library.register_fake(name, fn)
