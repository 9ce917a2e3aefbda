"""Selection and de-duplication on hand-made samples (docs/recipe.md Table 2 rules, plus ours: dedupe first,
fewer than k correct keeps all, none -> dropped)."""

from __future__ import annotations

import math

import pytest

from mstar_fast.data.records import Sample
from mstar_fast.recipe.select import dedupe, select


def S(pid: str, i: int, text: str, correct: bool, score: float | None = None) -> Sample:
    return Sample(prompt_id=pid, index=i, text=text, correct=correct, score=score)


def make() -> list[Sample]:
    return [
        # p0: 4 distinct correct (one duplicate of index 0), 1 wrong with the best score
        S("p0", 0, "a\n\n# Answer\n\n1", True, 0.5),
        S("p0", 1, "a\n\n# Answer\n\n1  ", True, 0.9),  # same text up to whitespace: a duplicate of 0
        S("p0", 2, "b\n\n# Answer\n\n1", True, 0.7),
        S("p0", 3, "c\n\n# Answer\n\n1", True, 0.8),
        S("p0", 4, "d\n\n# Answer\n\n2", False, 0.99),
        S("p0", 5, "e\n\n# Answer\n\n1", True, 0.6),
        # p1: one correct only
        S("p1", 0, "x\n\n# Answer\n\n3", True, 0.1),
        S("p1", 1, "y\n\n# Answer\n\n4", False, 0.9),
        # p2: none correct -> dropped
        S("p2", 0, "z\n\n# Answer\n\n5", False, 0.9),
        S("p2", 1, "w\n\n# Answer\n\n6", False, 0.8),
    ]


def test_dedupe_keeps_first_occurrence_per_prompt():
    samples = make() + [S("p1", 2, "a\n\n# Answer\n\n1", True, 0.3)]  # same text as p0/0, other prompt: kept
    kept = dedupe(samples)
    assert [(s.prompt_id, s.index) for s in kept if s.prompt_id == "p0"] == [("p0", 0), ("p0", 2), ("p0", 3),
                                                                            ("p0", 4), ("p0", 5)]
    assert samples[1].meta["duplicate"] == 0
    assert ("p1", 2) in {(s.prompt_id, s.index) for s in kept}


def test_topk_ranks_distinct_correct_by_prm_score():
    samples = make()
    out, stats = select(samples, "topk", k=2)
    # p0: the duplicate (0.9) is gone before ranking, the wrong one (0.99) is never eligible -> 3 (0.8), 2 (0.7)
    assert [(s.prompt_id, s.index) for s in out] == [("p0", 2), ("p0", 3), ("p1", 0)]
    assert stats.n_duplicates == 1 and stats.n_prompts_with_correct == 2 and stats.n_selected == 3
    assert stats.n_correct == 5  # p0: 0, 2, 3, 5; p1: 0
    assert [s.selected for s in samples] == [False, False, True, True, False, False, True, False, False, False]


def test_topk_without_dedupe_takes_the_duplicate():
    out, _ = select(make(), "topk", k=2, dedup=False)
    assert [(s.prompt_id, s.index) for s in out] == [("p0", 1), ("p0", 3), ("p1", 0)]


def test_fewer_than_k_correct_keep_all_and_none_dropped():
    out, stats = select(make(), "topk", k=10)
    assert sorted((s.prompt_id, s.index) for s in out) == [("p0", 0), ("p0", 2), ("p0", 3), ("p0", 5), ("p1", 0)]
    assert not any(s.prompt_id == "p2" for s in out)


def test_nan_scores_rank_last_and_ties_go_to_earlier():
    samples = [S("p", 0, "a", True, math.nan), S("p", 1, "b", True, 0.5), S("p", 2, "c", True, 0.5),
               S("p", 3, "d", True, 0.1)]
    out, _ = select(samples, "topk", k=2)
    assert [s.index for s in out] == [1, 2]


def test_threshold_all_random():
    out, _ = select(make(), "threshold", threshold=0.65)
    assert [(s.prompt_id, s.index) for s in out] == [("p0", 2), ("p0", 3)]
    out, _ = select(make(), "all")
    assert [(s.prompt_id, s.index) for s in out] == [("p0", 0), ("p0", 2), ("p0", 3), ("p0", 5), ("p1", 0)]
    a, _ = select(make(), "random", k=2, seed=1, iteration=3)
    b, _ = select(make(), "random", k=2, seed=1, iteration=3)
    assert [(s.prompt_id, s.index) for s in a] == [(s.prompt_id, s.index) for s in b]  # reproducible
    assert sum(s.prompt_id == "p0" for s in a) == 2 and all(s.correct for s in a)
    seen = {tuple(s.index for s in select(make(), "random", k=2, seed=1, iteration=i)[0] if s.prompt_id == "p0")
            for i in range(20)}
    assert len(seen) > 1  # the choice depends on the iteration


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        select(make(), "best")
    with pytest.raises(ValueError, match="k must be"):
        select(make(), "topk", k=0)
    with pytest.raises(ValueError, match="needs PRM scores"):
        select([S("p", 0, "a", True, None)], "topk")
    out, _ = select([S("p", 0, "a", True, None)], "random")  # no PRM needed
    assert len(out) == 1


def test_well_formed_and_require_format():
    from mstar_fast.recipe.select import well_formed

    assert well_formed("It is 3 wide.\n\nArea 3 * 2 = 6.\n\n# Answer\n\n6")
    for bad in ("# Answer\n\n6", "x.\n\n# Answer\n\n# Answer\n\n6", "x.\n\n# Answer\n\n", "x.\n\n# Answer\n\n6\n\ny",
                "no marker 6"):
        assert not well_formed(bad), bad
    samples = [S("p", 0, "x.\n\n# Answer\n\n# Answer\n\n1", True, 0.9), S("p", 1, "y.\n\n# Answer\n\n1", True, 0.1)]
    out, stats = select(samples, "topk", k=1, require_format=True)
    assert [s.index for s in out] == [1] and stats.n_correct == 1
    out, _ = select(samples, "topk", k=1)
    assert [s.index for s in out] == [0]


def test_registered_methods_are_the_config_names():
    from mstar_fast.constants import SELECTIONS
    from mstar_fast.recipe.select import register_selection, selection_methods

    assert set(selection_methods()) == set(SELECTIONS)
    with pytest.raises(ValueError, match="already registered"):
        register_selection("topk")(lambda groups, args: groups)


def _old_topk(correct: list[Sample], k: int) -> list[Sample]:
    """The Python sort selection used before ops.group_topk: highest score first, NaN last, ties by index."""
    key = lambda s: (math.inf if math.isnan(s.score) else -s.score, s.index)  # noqa: E731
    return correct if len(correct) <= k else sorted(correct, key=key)[:k]


@pytest.mark.parametrize("seed", range(6))
def test_topk_by_group_topk_equals_the_python_sort_and_the_monitor_ranking(seed):
    """Selection ranks with ops.group_topk (the op the monitor's Reward-Pass@2 ranks with): on groups full of
    ties and NaN it picks what the old Python sort picked, and its top 2 holds a correct response exactly
    when metrics.reward_pass_at_k says so."""
    import random

    import torch

    from mstar_fast import metrics

    rng = random.Random(seed)
    samples = []
    for g in range(12):
        for i in range(rng.randint(1, 7)):
            score = rng.choice([0.25, 0.5, 0.5, 0.75, float("nan")])  # few values: many ties
            samples.append(S(f"p{g}", i, f"r{i}\n\n# Answer\n\n1", True, score))
    out, _ = select(samples, "topk", k=2, dedup=False)
    want = [s for group in group_by(samples) for s in _old_topk(group, 2)]
    assert {(s.prompt_id, s.index) for s in out} == {(s.prompt_id, s.index) for s in want}
    # The monitor's ranking (metrics.reward_pass_at_k) over the same groups: its top 2 of every group is
    # exactly the picked set (every group holds a picked sample in its top 2, and none a non-picked one).
    groups = group_by(samples)
    offsets = torch.tensor([0] + [len(g) for g in groups]).cumsum(0)
    scores = [s.score for g in groups for s in g]
    picked = [s.selected for g in groups for s in g]
    not_picked = [not p for p in picked]
    assert metrics.reward_pass_at_k(scores, not_picked, offsets, k=2) == 0.0
    assert metrics.reward_pass_at_k(scores, picked, offsets, k=2) == 1.0


def group_by(samples: list[Sample]) -> list[list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.prompt_id, []).append(s)
    return list(groups.values())
