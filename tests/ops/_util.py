"""Helpers shared by the op tests: the backends to parametrize over and a chi-square bound."""

from __future__ import annotations

import math

import pytest
import torch

from mstar_fast.ops import BACKENDS, use_backend
from mstar_fast.ops._dispatch import backend_problem


def backend_params(device: str = "cpu") -> list:
    """One pytest param per backend; unavailable ones are skipped with the reason."""
    params = []
    for name in BACKENDS:
        dev = torch.device("cuda" if name == "cuda" else device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            params.append(pytest.param(name, marks=pytest.mark.skip(reason="needs a CUDA device")))
            continue
        problem = backend_problem(name, dev)
        marks = [pytest.mark.skip(reason=problem)] if problem else []
        params.append(pytest.param(name, marks=marks))
    return params


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


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


__all__ = ["backend_params", "chi2_quantile", "chi2_stat", "device_of", "use_backend"]
