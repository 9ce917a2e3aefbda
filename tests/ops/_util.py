"""Helpers shared by the op tests: where a backend's inputs live, random ragged layouts, a chi-square bound.
(The backend fixture itself is in tests/ops/conftest.py.)"""

from __future__ import annotations

import math

import torch

from mstar_fast import _ext


def backend_device(backend: str) -> torch.device:
    """The device a backend's tests run on: CUDA for ``cuda``, and for ``triton`` when a GPU is there and
    Triton is not interpreting; the CPU otherwise."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available() and not _ext.triton_interpret()):
        return torch.device("cuda")
    return torch.device("cpu")


def ragged_offsets(gen: torch.Generator, count: int, max_len: int, p_empty: float = 0.15) -> torch.Tensor:
    """``[count + 1]`` int64 offsets of ``count`` segments with lengths in [1, max_len], a share
    ``p_empty`` of them empty."""
    lengths = torch.randint(1, max_len + 1, (count,), generator=gen)
    lengths[torch.rand(count, generator=gen) < p_empty] = 0
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])


def chi2_quantile(df: int, z: float = 4.265) -> float:
    """Upper quantile of chi-square(df) by Wilson-Hilferty; z = 4.265 is the 1e-5 tail."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2_stat(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson chi-square of observed ``counts`` vs ``probs`` (float64, sums to 1); categories with an
    expected count below ``min_expected`` are pooled into one. Returns (statistic, degrees of freedom)."""
    n = counts.sum().item()
    expected = probs * n
    big = expected >= min_expected
    obs = torch.cat([counts[big].double(), counts[~big].double().sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), max(int(keep.sum()) - 1, 1)


