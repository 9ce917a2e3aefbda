"""The pieces of one iteration on a fake engine: prompt chunks and the resumable sample file."""

from __future__ import annotations

import json

import pytest

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.recipe.iteration import chunk_size, next_chunk, trainable
from mstar_fast.recipe.sample import sample_to_file


class FakeEngine:
    """Deterministic 'samples': the text names the prompt, index and temperature; counts calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def generate(self, prompts, n, temperature=1.0, **kw):
        self.calls.append([p.id for p in prompts])
        return [Sample(prompt_id=p.id, index=i, text=f"{p.id}/{i}/{t}\n\n# Answer\n\n{i}", temperature=t,
                       seed=kw.get("seed"))
                for p, t in zip(prompts, temperature) for i in range(n)]


def prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", question=f"q{i}", answer="1") for i in range(n)]


def test_chunks_wrap_around_and_cover_the_interval():
    ps = prompts(10)
    assert chunk_size(10, 0.25) == 3 and chunk_size(8, 0.25) == 2 and chunk_size(3, 0.1) == 1
    a, cur = next_chunk(ps, 0, 3)
    b, cur = next_chunk(ps, cur, 3)
    c, cur = next_chunk(ps, cur, 3)
    d, cur = next_chunk(ps, cur, 3)
    assert [p.id for p in d] == ["p9", "p0", "p1"] and cur == 12
    assert [p.id for p in a + b + c] == [f"p{i}" for i in range(9)]
    with pytest.raises(ValueError):
        next_chunk([], 0, 1)


def test_sample_file_resumes_without_duplicates(tmp_path):
    path = tmp_path / "iter-001.jsonl"
    ps = prompts(10)
    eng = FakeEngine()
    full = sample_to_file(eng, ps, 3, path, temperature=0.7, chunk_size=4)
    assert [(s.prompt_id, s.index) for s in full] == [(p.id, i) for p in ps for i in range(3)]
    assert eng.calls == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p6", "p7"], ["p8", "p9"]]
    lines = path.read_text().splitlines()
    # Simulate a kill: the file lost the second half of chunk 2 and holds a torn last line.
    kept = lines[:12] + lines[12:18]
    path.write_text("\n".join(kept) + "\n" + lines[18][:10])
    eng2 = FakeEngine()
    again = sample_to_file(eng2, ps, 3, path, temperature=0.7, chunk_size=4)
    # Only the incomplete chunks are regenerated, as the same windows (same batches as the first run).
    assert eng2.calls == [["p4", "p5", "p6", "p7"], ["p8", "p9"]]
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    keys = [(r["prompt_id"], r["index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 30
    assert [s.to_dict() for s in again] == [s.to_dict() for s in full]
    eng3 = FakeEngine()
    sample_to_file(eng3, ps, 3, path, temperature=0.7, chunk_size=4)
    assert eng3.calls == []  # complete: nothing to do


def test_sample_file_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        sample_to_file(FakeEngine(), prompts(2) + prompts(1), 1, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="temperatures"):
        sample_to_file(FakeEngine(), prompts(2), 1, tmp_path / "x.jsonl", temperature=[1.0])


def test_responses_with_special_tokens_are_not_trained_on():
    assert trainable(Sample("p", 0, "a", token_ids=[5, 6, 0]), {0, 4})  # EOS at the end is fine
    assert not trainable(Sample("p", 0, "a", token_ids=[5, 4, 6, 0]), {0, 4})  # an image placeholder inside
    assert trainable(Sample("p", 0, "a"), {0})
