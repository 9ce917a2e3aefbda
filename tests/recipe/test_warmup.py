"""Warm-up on a scripted engine: the answer hint goes into the prompt, only correct and well-formed
responses are kept (de-duplicated, at most keep_per_prompt), and training pairs use the prompt without
the hint."""

from __future__ import annotations

import json

import pytest

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.recipe.warmup import hinted_prompt, warmup_pairs, warmup_samples

HINT = "The answer is {answer}. Think step by step."
P0 = Prompt(id="p0", question="What is 2 + 3?", answer="5")
P1 = Prompt(id="p1", question="Which colour?", answer="B", choices=["red", "blue"])
P2 = Prompt(id="p2", question="What is 1 + 1?", answer="2")

# Scripted responses per prompt id, in sample-index order.
SCRIPT = {
    "p0": ["2 + 3 = 5\n\n# Answer\n\n5",  # correct, well formed
           "2 + 3 = 5\n\n# Answer\n\n5",  # a duplicate of 0
           "# Answer\n\n5",  # correct answer but no reasoning step: not in the format
           "two plus three\n\n# Answer\n\n5",  # correct, well formed
           "adding\n\n# Answer\n\n5"],  # correct, well formed: one too many for keep_per_prompt=2
    "p1": ["it is blue\n\n# Answer\n\nB", "red\n\n# Answer\n\nA", "no", "x\n\n# Answer\n\nA", "y\n\n# Answer\n\nA"],
    "p2": ["1 + 1 = 3\n\n# Answer\n\n3"] * 5,  # nothing correct: the prompt is dropped
}


class ScriptedEngine:
    def __init__(self) -> None:
        self.questions: list[str] = []

    def generate(self, prompts, n, temperature=1.0, **kw):
        self.questions += [p.question for p in prompts]
        return [Sample(prompt_id=p.id, index=i, text=SCRIPT[p.id][i], temperature=t)
                for p, t in zip(prompts, temperature) for i in range(n)]


def test_hinted_prompt():
    h = hinted_prompt(P0, HINT)
    assert h.id == "p0" and h.question == "What is 2 + 3?\nThe answer is 5. Think step by step."
    assert P0.question == "What is 2 + 3?"  # the original is untouched
    assert hinted_prompt(P1, HINT).question.endswith("The answer is (B) blue. Think step by step.")
    with pytest.raises(ValueError, match="no gold answer"):
        hinted_prompt(Prompt(id="u", question="?"), HINT)


def test_warmup_keeps_distinct_correct_well_formed_responses(tmp_path):
    eng = ScriptedEngine()
    path = tmp_path / "warmup.jsonl"
    kept, res = warmup_samples(eng, [P0, P1, P2], path, hint=HINT, n=5, keep_per_prompt=2, seed=3)
    assert all("The answer is" in q for q in eng.questions)  # sampled with the hint
    by_prompt = {pid: sorted(s.index for s in kept if s.prompt_id == pid) for pid in ("p0", "p1", "p2")}
    assert len(by_prompt["p0"]) == 2 and set(by_prompt["p0"]) <= {0, 3, 4}  # not the duplicate, not index 2
    assert by_prompt["p1"] == [0] and by_prompt["p2"] == []
    assert all(s.correct and s.selected for s in kept)
    assert (res.n_prompts, res.n_samples, res.n_prompts_kept, res.n_selected) == (3, 15, 2, 3)
    assert res.n_correct == 4 and res.yield_rate == pytest.approx(2 / 3)  # p0: 0, 3, 4; p1: 0
    assert len(path.read_text().splitlines()) == 15  # every graded sample is on disk

    pairs = warmup_pairs([P0, P1, P2], kept)
    assert [p.question for p, _ in pairs] == [P0.question] * 2 + [P1.question]  # no hint in training

    # A second call on the same file samples nothing new and keeps the same responses.
    eng2 = ScriptedEngine()
    again, _ = warmup_samples(eng2, [P0, P1, P2], path, hint=HINT, n=5, keep_per_prompt=2, seed=3)
    assert eng2.questions == []
    assert [(s.prompt_id, s.index) for s in again] == [(s.prompt_id, s.index) for s in kept]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 15
