"""Helpers shared by the ragged-op tests: backend parameters and random ragged layouts."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.ops import _dispatch

# Every backend; cuda runs only where a GPU is (the gpu mark skips it elsewhere).
BACKENDS = [
    pytest.param("cpp", id="cpp"),
    pytest.param("torch", id="torch"),
    pytest.param("triton", id="triton"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def device_for(backend: str) -> torch.device:
    """The device a backend's tests run on; skips the test when the backend cannot run here."""
    device = torch.device("cuda" if backend == "cuda" else "cpu")
    if backend == "triton" and torch.cuda.is_available():
        device = torch.device("cuda")
    problem = _dispatch.backend_problem(backend, device)
    if problem:
        pytest.skip(f"backend {backend} unavailable: {problem}")
    return device


def ragged_offsets(gen: torch.Generator, count: int, max_len: int, p_empty: float = 0.15) -> torch.Tensor:
    """``[count + 1]`` int64 offsets of ``count`` segments with lengths in [1, max_len], a share
    ``p_empty`` of them empty."""
    lengths = torch.randint(1, max_len + 1, (count,), generator=gen)
    lengths[torch.rand(count, generator=gen) < p_empty] = 0
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
