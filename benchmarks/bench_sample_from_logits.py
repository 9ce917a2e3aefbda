"""sample_from_logits: cpp kernel vs the torch reference vs the plainest torch pipeline.

B in {1, 64, 256}, V in {32000, 151936}, fp32; mixes: temperature only; per-row temperature + top-p 0.9;
the same + top-k 50. The same run measures this machine's read bandwidth, and each row reports the
effective GB/s (B*V*4 bytes / median time) and the ratio to the one-read floor (B*V*4 / bandwidth).
Run: ``pytest benchmarks/bench_sample_from_logits.py`` (writes benchmarks/results/bench_sample_from_logits.*).
"""

from __future__ import annotations

import pytest
import torch

from harness import read_bandwidth_gbps, write_results
from mstar_fast.ops import available_backends, sample_from_logits, use_backend

MIXES = {
    "temperature": lambda B: dict(temperature=1.0),
    "row_temp+top_p0.9": lambda B: dict(temperature=torch.linspace(0.5, 1.5, B), top_p=0.9),
    "row_temp+top_p0.9+top_k50": lambda B: dict(temperature=torch.linspace(0.5, 1.5, B), top_p=0.9, top_k=50),
}
ROWS: list[dict] = []


def plain_torch(logits: torch.Tensor, temperature=1.0, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """What a user writes today: softmax + multinomial, with the usual sort-based top-k / top-p."""
    t = temperature.view(-1, 1) if isinstance(temperature, torch.Tensor) else temperature
    x = logits / t
    if top_k:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        s, idx = torch.sort(x, dim=-1, descending=False)
        cum = torch.softmax(s, dim=-1).cumsum(dim=-1)
        remove = cum <= 1 - top_p
        remove[:, -1] = False
        x = x.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return torch.multinomial(torch.softmax(x, dim=-1), 1).view(-1)


@pytest.fixture(scope="module")
def bandwidth(request):
    bw = read_bandwidth_gbps()
    yield bw
    if ROWS and not request.config.getoption("benchmark_disable", False):
        write_results(
            "bench_sample_from_logits",
            ROWS,
            notes=f"Read bandwidth measured in the same run: {bw:.1f} GB/s (torch.sum over 512 MiB). "
            "floor = B*V*4 bytes / bandwidth; x_floor = median / floor.",
        )


def _case_id(B, V, mix, impl):
    return f"B{B}-V{V}-{mix}-{impl}"


CASES = [
    (B, V, mix, impl)
    for V in (32000, 151936)
    for B in (1, 64, 256)
    for mix in MIXES
    for impl in ("cpp", "torch", "plain")
]


@pytest.mark.parametrize("B,V,mix,impl", CASES, ids=[_case_id(*c) for c in CASES])
def test_sample_from_logits(benchmark, bandwidth, B, V, mix, impl):
    if impl == "cpp" and "cpp" not in available_backends("cpu"):
        pytest.skip("cpp backend unavailable")
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(0)) * 3
    params = MIXES[mix](B)
    seeds = torch.arange(B)
    if impl == "plain":
        fn = lambda: plain_torch(logits, **params)  # noqa: E731
    else:
        def fn():
            with use_backend(impl):
                return sample_from_logits(logits, seed=seeds, **params)
    slow = impl != "cpp" and B * V > 64 * 32000
    benchmark.pedantic(fn, rounds=3 if slow else 15, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once as a smoke test
        return
    med = benchmark.stats.stats.median
    nbytes = B * V * 4
    floor = nbytes / (bandwidth * 1e9)
    ROWS.append(dict(B=B, V=V, mix=mix, impl=impl, median_ms=med * 1e3, GBps=nbytes / med / 1e9,
                     floor_ms=floor * 1e3, x_floor=med / floor))
