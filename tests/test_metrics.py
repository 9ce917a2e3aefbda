"""Metrics on hand-worked examples (worked out in the comments), Pass@k against brute-force
enumeration of k-subsets, and a case where Reward-Pass@2 differs from Pass@K."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mstar_fast import metrics

NAN = float("nan")
# Three prompts of four samples: A has 1 correct, B none, C two.
CORRECT = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
OFFSETS = [0, 4, 8, 12]
# PRM scores: A's correct sample is scored lowest but one; C's best-scored sample is correct.
SCORES = [0.1, 0.9, 0.8, 0.2, 0.5, 0.5, 0.5, 0.5, 0.3, 0.95, 0.9, 0.1]


def test_pass_at_k_hand_worked():
    # A: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2;  B: 0;  C: 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6.
    per = metrics.pass_at_k(CORRECT, OFFSETS, 2, reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.5, 0.0, 5 / 6], dtype=torch.float64))
    assert metrics.pass_at_k(CORRECT, OFFSETS, 2) == pytest.approx(4 / 9)
    # k = 1 is the share of correct samples; k = n is "some sample is correct".
    assert metrics.pass_at_k(CORRECT, OFFSETS, 1) == pytest.approx((1 / 4 + 0 + 2 / 4) / 3)
    assert metrics.pass_at_k(CORRECT, OFFSETS, 4) == pytest.approx(2 / 3)


def test_pass_at_k_is_the_expectation_over_k_subsets():
    gen = torch.Generator().manual_seed(0)
    for n, k in [(5, 2), (7, 3), (6, 6), (8, 1)]:
        correct = (torch.rand(n, generator=gen) < 0.4).tolist()
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
        assert metrics.pass_at_k(correct, [0, n], k) == pytest.approx(brute, abs=1e-12)


def test_reward_pass_at_2_differs_from_pass_at_k():
    # Top-2 by score over all samples: A -> samples 1, 2 (both wrong): miss; B -> none correct: miss;
    # C -> samples 9 (correct, 0.95) and 10: hit. Reward-Pass@2 = 1/3, while Pass@4 = 2/3.
    assert metrics.reward_pass_at_k(SCORES, CORRECT, OFFSETS, k=2) == pytest.approx(1 / 3)
    assert metrics.pass_at_k(CORRECT, OFFSETS, 4) == pytest.approx(2 / 3)
    per = metrics.reward_pass_at_k(torch.tensor(SCORES), torch.tensor(CORRECT).bool(), torch.tensor(OFFSETS),
                                   k=2, reduction="none")
    assert per.tolist() == [0.0, 0.0, 1.0]
    # With k = 4 every sample is ranked in, so it equals Pass@4.
    assert metrics.reward_pass_at_k(SCORES, CORRECT, OFFSETS, k=4) == pytest.approx(2 / 3)


def test_reward_pass_at_k_ties_nan_and_small_groups():
    # Group 0: tie at 0.7 between samples 0 (wrong) and 1 (correct): k=1 takes the earlier -> miss.
    # Group 1: NaN ranks lowest: sample 3 (0.2, correct) beats sample 2 (NaN) -> hit.
    # Group 2: one sample, correct, fewer than k -> kept -> hit. Group 3: empty -> miss.
    scores = [0.7, 0.7, NAN, 0.2, 0.0]
    correct = [False, True, False, True, True]
    per = metrics.reward_pass_at_k(scores, correct, [0, 2, 4, 5, 5], k=1, reduction="none")
    assert per.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_majority_vote_plain_and_weighted():
    answers = ["3", " 4", "3 ", None, None, None, "b", "a"]
    offsets = [0, 4, 6, 8]
    weights = [0.1, 0.9, 0.2, 0.99, 0.5, 0.5, 0.3, 0.3]
    # Group 0: "3" has 2 votes vs 1 -> "3" (first occurrence's text); weighted 0.3 vs 0.9 -> " 4".
    # Group 1: no answers -> None. Group 2: tie -> the first to occur, "b".
    assert metrics.majority_vote(answers, offsets) == ["3", None, "b"]
    assert metrics.majority_vote(answers, offsets, weights=weights) == [" 4", None, "b"]
    # NaN weight counts as 0.
    assert metrics.majority_vote(["x", "y"], [0, 2], weights=[NAN, 0.1]) == ["y"]
    gold = ["3", "7", "a"]
    assert metrics.majority_vote_accuracy(answers, gold, offsets) == pytest.approx(1 / 3)
    assert metrics.majority_vote_accuracy(answers, ["4", "7", "b"], offsets, weights=weights) == pytest.approx(2 / 3)


def test_greedy_accuracy():
    assert metrics.greedy_accuracy([True, False, True, True]) == 0.75
    # Two prompts, the first with two greedy samples (e.g. two seeds of a tie-breaking decoder).
    assert metrics.greedy_accuracy([1, 0, 1], [0, 2, 3]) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="prompt 1 has no greedy sample"):
        metrics.greedy_accuracy([1, 0], [0, 2, 2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="prompt 1 has 1 samples, fewer than k = 2"):
        metrics.pass_at_k([1, 0, 1], [0, 2, 3], 2)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        metrics.pass_at_k([1, 0], [0, 2], 0)
    with pytest.raises(ValueError, match="group_offsets must end at the number of values"):
        metrics.reward_pass_at_k([0.1, 0.2], [1, 0], [0, 1], k=1)
    with pytest.raises(ValueError, match="must both be"):
        metrics.reward_pass_at_k([0.1], [1, 0], [0, 2])
    with pytest.raises(ValueError, match="correct holds NaN"):
        metrics.pass_at_k([1.0, NAN], [0, 2], 1)
    assert math.isnan(metrics.pass_at_k([], [0], 1))
