"""Pseudo-labels for unlabeled prompts: the (PRM-)weighted vote on hand-made samples, and the whole path
(unlabeled sampling -> vote -> grading -> selection with the labeled samples) in a quick recipe run."""

from __future__ import annotations

import json
import math

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.recipe.pseudo import pseudo_label
from tests.recipe.test_loop import mstar_cli

P = Prompt(id="u0", question="How many?", answer=None)
MC = Prompt(id="u1", question="Which?", answer=None, choices=["red", "blue"])


def S(i: int, answer: str, score: float | None) -> Sample:
    return Sample(prompt_id="u0", index=i, text=f"step {i}\n\n# Answer\n\n{answer}", score=score)


def test_weighted_vote_follows_prm_scores_unweighted_follows_counts():
    samples = [S(0, "7", 0.1), S(1, "7", 0.1), S(2, "7", 0.1), S(3, "12", 0.9), S(4, "12.0", 0.8)]
    assert pseudo_label(samples, P, weighted=False, min_agreement=0.5) == "7"  # 3 of 5 votes
    label = pseudo_label(samples, P, weighted=True, min_agreement=0.5)  # 1.7 of 2.0 weight
    assert label is not None and float(label) == 12.0  # "12" and "12.0" are one group


def test_min_agreement_and_degenerate_votes():
    split = [S(0, "1", None), S(1, "2", None), S(2, "3", None)]
    assert pseudo_label(split, P, weighted=False, min_agreement=0.5) is None  # 1/3 < 0.5
    assert pseudo_label(split, P, weighted=False, min_agreement=0.3) == "1"  # ties: first appearance
    # Unscored (None) and NaN scores weigh 0: no weight at all means no label.
    assert pseudo_label([S(0, "5", None), S(1, "5", math.nan)], P, weighted=True) is None
    assert pseudo_label([Sample(prompt_id="u0", index=0, text="")], P, weighted=False) is None


def test_option_letter_and_option_text_vote_together():
    samples = [Sample(prompt_id="u1", index=i, text=f"# Answer\n\n{a}") for i, a in enumerate(["B", "blue", "A"])]
    assert pseudo_label(samples, MC, weighted=False, min_agreement=0.6) in ("B", "blue")


def test_quick_run_with_pseudo_labels(tmp_path):
    run_dir = tmp_path / "pseudo"
    res = mstar_cli("demo", "--quick", "--out", str(run_dir), "iterate.iterations=1", "data.unlabeled=synthetic",
                    "pseudo.enabled=true", "pseudo.ratio=0.5", "pseudo.min_agreement=0.0")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = (run_dir / "samples" / "iter-001-unlabeled.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    # 24 labeled prompts per iteration at the quick budget -> 12 unlabeled prompts, k = 4 samples each.
    assert len({r["prompt_id"] for r in rows}) == 12 and len(rows) == 12 * 4
    assert all(r["prompt_id"].endswith("-u") for r in rows)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1] and metrics[-1]["stage"] == "final"
