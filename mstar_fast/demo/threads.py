"""Pick the number of torch threads for the demo by a short measurement at start.

Why measure: the demo's model is tiny (hidden 128), so whether a second thread pays off depends on the
machine: on a quiet 2-core machine the training matmuls (thousands of rows) run almost twice as fast on 2
threads, while the decode steps (hundreds of rows) gain little and pay the threads' wake-up cost; on a
machine whose cores are busy with other work, more threads can be slower than one. The measurement runs
the demo's own kinds of work (a training-sized forward + backward and decode-sized steps of an MLP of the
demo's width) at each candidate count, about a second in all, and keeps the fastest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

__all__ = ["measure_threads", "pick_threads"]


def _workload(hidden: int, vocab: int, train_rows: int, decode_rows: int, gen: torch.Generator) -> Callable[[], None]:
    """One training step (forward + backward of two layers + the LM head over ``train_rows`` tokens) and four
    decode steps (``decode_rows`` rows through the same layers): the demo's mix, in its proportions."""
    w1 = torch.randn(hidden, 4 * hidden, generator=gen, requires_grad=True)
    w2 = torch.randn(4 * hidden, hidden, generator=gen, requires_grad=True)
    head = torch.randn(hidden, vocab, generator=gen, requires_grad=True)
    xt = torch.randn(train_rows, hidden, generator=gen)
    xd = torch.randn(decode_rows, hidden, generator=gen)

    def run() -> None:
        y = (torch.nn.functional.gelu(xt @ w1) @ w2) @ head
        torch.logsumexp(y, dim=-1).sum().backward()
        with torch.no_grad():
            for _ in range(4):
                torch.softmax((torch.nn.functional.gelu(xd @ w1) @ w2) @ head, dim=-1)

    return run


def measure_threads(candidates: list[int], hidden: int = 128, vocab: int = 768, train_rows: int = 2048,
                    decode_rows: int = 512, repeat: int = 3) -> dict[int, float]:
    """Median seconds of the demo's work mix (module doc) at each thread count in ``candidates``; torch's
    thread count is restored afterwards.

    Raises:
        ValueError: ``candidates`` is empty or holds a count < 1.
    """
    if not candidates or any(int(c) < 1 for c in candidates):
        raise ValueError(f"measure_threads: candidates must be thread counts >= 1, got {candidates!r}")
    before = torch.get_num_threads()
    run = _workload(hidden, vocab, train_rows, decode_rows, torch.Generator().manual_seed(0))
    out: dict[int, float] = {}
    try:
        for n in candidates:
            torch.set_num_threads(int(n))
            run()  # wake the threads, warm the caches
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            out[int(n)] = sorted(times)[len(times) // 2]
    finally:
        torch.set_num_threads(before)
    return out


def pick_threads(max_threads: int | None = None, margin: float = 0.9, **workload: int) -> tuple[int, dict[int, float]]:
    """The thread count to run the demo with: 1, 2, 4, ... up to ``max_threads`` (default: the CPUs this
    process may use), measured by :func:`measure_threads`; more threads are taken only when they are at
    least ``1 - margin`` (10%) faster than the best smaller count, so noise does not pick them. Returns
    ``(threads, {count: seconds})``."""
    if max_threads is None:
        try:
            max_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            max_threads = os.cpu_count() or 1
    candidates = [1]
    while candidates[-1] * 2 <= max_threads:
        candidates.append(candidates[-1] * 2)
    if max_threads not in candidates:
        candidates.append(max_threads)
    times = measure_threads(candidates, **workload)
    best = 1
    for n in candidates[1:]:
        if times[n] < margin * times[best]:
            best = n
    return best, times
