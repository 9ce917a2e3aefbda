"""The demo's thread count: measured at start, the fastest candidate kept, torch's setting restored."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.demo.threads import measure_threads, pick_threads


def test_measure_restores_the_thread_count_and_times_each_candidate():
    before = torch.get_num_threads()
    times = measure_threads([1, 2], train_rows=64, decode_rows=16, repeat=1)
    assert sorted(times) == [1, 2] and all(t > 0 for t in times.values())
    assert torch.get_num_threads() == before


def test_pick_takes_more_threads_only_when_clearly_faster(monkeypatch):
    import mstar_fast.demo.threads as th

    monkeypatch.setattr(th, "measure_threads", lambda c, **kw: {1: 1.0, 2: 0.95, 4: 0.5, 6: 0.49})
    n, times = pick_threads(max_threads=6)
    assert n == 4 and sorted(times) == [1, 2, 4, 6]  # 2 is within the 10% margin, 6 is no real gain over 4
    monkeypatch.setattr(th, "measure_threads", lambda c, **kw: {1: 1.0, 2: 1.3})
    assert pick_threads(max_threads=2)[0] == 1  # a busy machine: one thread is faster


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="thread counts >= 1"):
        measure_threads([])
    with pytest.raises(ValueError, match="thread counts >= 1"):
        measure_threads([0, 1])
