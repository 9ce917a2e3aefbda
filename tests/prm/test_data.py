"""Monte-Carlo step labels: hand-computed soft and hard labels on a stub engine whose completions are
controlled, one engine call for all prefixes (shared prefixes sampled once), chunking, resume after a
kill (no duplicated or lost examples), input checks, and a real tiny-VLM engine continuing prefixes."""

from __future__ import annotations

import json

import pytest

from mstar_fast.data import Prompt, Sample
from mstar_fast.data.jsonl import read_jsonl
from mstar_fast.models.prompting import RESPONSE_PREFIX_KEY, encode_prompt, format_prompt
from mstar_fast.prm.data import PRMExample, monte_carlo_labels, read_prm_examples, response_prefix

M = 4
PROMPTS = [
    Prompt(id="p0", question="What is 2 + 3?", answer="5", meta={"source": "t"}),
    Prompt(id="p1", question="Which bar is tallest?", answer="B", choices=["A bar", "B bar"]),
]
A = "Add 2 and 3.\n\nSo it is 6.\n\n# Answer\n\n5"  # correct final answer, one bad middle step
B = "Add 2 and 3.\n\nHmm, 3 + 4.\n\n# Answer\n\n7"  # wrong; shares its first step with A
C = "# Answer\n\nB"  # a one-step response: no completion needed
# Completions that reach the gold answer, out of M, from each prefix (what the stub engine returns).
HITS = {
    ("p0", "Add 2 and 3.\n\n"): 3,
    ("p0", "Add 2 and 3.\n\nSo it is 6.\n\n"): 0,
    ("p0", "Add 2 and 3.\n\nHmm, 3 + 4.\n\n"): 1,
}
SAMPLES = [
    Sample(prompt_id="p0", index=0, text=A),
    Sample(prompt_id="p0", index=1, text=B),
    Sample(prompt_id="p1", index=0, text=C),
    Sample(prompt_id="p1", index=1, text="", finish_reason="error"),  # skipped
]
SOFT = {("p0", 0): [0.75, 0.0, 1.0], ("p0", 1): [0.75, 0.25, 0.0], ("p1", 0): [1.0]}
HARD = {("p0", 0): [1.0, 0.0, 1.0], ("p0", 1): [1.0, 1.0, 0.0], ("p1", 0): [1.0]}


class StubEngine:
    """Returns, for a prefix with h hits in HITS, h completions ending in the gold answer and n - h
    ending in a wrong one; records every call. ``fail_on_call`` raises there (a simulated kill)."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[dict] = []
        self.fail_on_call = fail_on_call

    def generate(self, prompts, n, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, max_new_tokens=256, stop=None,
                 seed=0):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        self.calls.append({"prefixes": [p.meta[RESPONSE_PREFIX_KEY] for p in prompts], "n": n,
                           "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed})
        out = []
        for p in prompts:
            original = p.id.split("#mc-")[0]
            assert p.question == {q.id: q for q in PROMPTS}[original].question  # same prompt, new id
            h = HITS[(original, p.meta[RESPONSE_PREFIX_KEY])]
            for k in range(n):
                end = p.answer if k < h else "wrong"
                out.append(Sample(prompt_id=p.id, index=k, text=f"Then finish.\n\n# Answer\n\n{end}"))
        return out


def _labels(examples):
    return {e.key: e.labels for e in examples}


@pytest.mark.parametrize("soft, expected", [(True, SOFT), (False, HARD)])
def test_hand_computed_labels_in_one_engine_call(soft, expected):
    eng = StubEngine()
    out = monte_carlo_labels(eng, PROMPTS, SAMPLES, m=M, soft=soft, temperature=0.7, max_new_tokens=32, seed=3)
    assert [e.key for e in out] == [("p0", 0), ("p0", 1), ("p1", 0)]  # input order, error sample skipped
    assert _labels(out) == expected
    assert out[0].steps == ["Add 2 and 3.", "So it is 6.", "# Answer\n\n5"]
    assert out[0].hits == [3, 0, 1] and out[1].hits == [3, 1, 0] and out[2].hits == [1]
    assert [e.correct for e in out] == [True, False, True]
    # Every prefix in one call; the first step shared by A and B is sampled once; C needs none.
    assert len(eng.calls) == 1
    call = eng.calls[0]
    assert sorted(call["prefixes"]) == sorted(p for _, p in HITS)
    assert (call["n"], call["temperature"], call["max_new_tokens"], call["seed"]) == (M, 0.7, 32, 3)


def test_chunks_give_the_same_labels_with_one_call_per_chunk():
    eng = StubEngine()
    out = monte_carlo_labels(eng, PROMPTS, SAMPLES, m=M, chunk_size=1)
    assert _labels(out) == SOFT
    # A: 2 prefixes; B: only its second prefix (its first was sampled for A); C: no call at all.
    assert [len(c["prefixes"]) for c in eng.calls] == [2, 1]


def test_json_round_trip():
    ex = monte_carlo_labels(StubEngine(), PROMPTS, SAMPLES[:1], m=M)[0]
    back = PRMExample.from_dict(json.loads(json.dumps(ex.to_dict())))
    assert back == ex
    with pytest.raises(ValueError, match="labels"):
        PRMExample.from_dict({"prompt_id": "p", "index": 0, "steps": ["a"], "labels": [1.0, 0.0]})


def test_resume_after_a_kill_has_no_duplicated_or_lost_examples(tmp_path):
    path = tmp_path / "prm_data.jsonl"
    full = monte_carlo_labels(StubEngine(), PROMPTS, SAMPLES, m=M)

    # Killed during the second chunk's engine call: the first response is on disk, nothing else.
    with pytest.raises(KeyboardInterrupt):
        monte_carlo_labels(StubEngine(fail_on_call=1), PROMPTS, SAMPLES, m=M, chunk_size=1, out_path=path)
    assert [(d["prompt_id"], d["index"]) for d in read_jsonl(path)] == [("p0", 0)]
    # ... and a torn half line from a kill in the middle of a write.
    with open(path, "a") as f:
        f.write('{"prompt_id": "p0", "index": 1, "st')

    eng = StubEngine()
    out = monte_carlo_labels(eng, PROMPTS, SAMPLES, m=M, chunk_size=1, out_path=path)
    assert out == full
    assert eng.calls == [{"prefixes": ["Add 2 and 3.\n\n", "Add 2 and 3.\n\nHmm, 3 + 4.\n\n"], "n": M,
                          "temperature": 1.0, "max_new_tokens": 256, "seed": 0}]  # only B's prefixes
    keys = [(d["prompt_id"], d["index"]) for d in read_jsonl(path)]
    assert sorted(keys) == sorted(SOFT) and len(keys) == len(set(keys))
    assert read_prm_examples(path) == sorted(full, key=lambda e: keys.index(e.key))

    # A finished file: nothing left to sample, same answer.
    eng = StubEngine()
    assert monte_carlo_labels(eng, PROMPTS, SAMPLES, m=M, out_path=path) == full and eng.calls == []
    with pytest.raises(ValueError, match="m=2"):
        monte_carlo_labels(StubEngine(), PROMPTS, SAMPLES, m=2, out_path=path)


def test_input_checks():
    eng = StubEngine()
    with pytest.raises(ValueError, match="m must be"):
        monte_carlo_labels(eng, PROMPTS, SAMPLES, m=0)
    with pytest.raises(ValueError, match="temperature"):
        monte_carlo_labels(eng, PROMPTS, SAMPLES, temperature=-1.0)
    with pytest.raises(ValueError, match="same \\(prompt_id, index\\)"):
        monte_carlo_labels(eng, PROMPTS, [SAMPLES[0], SAMPLES[0]])
    with pytest.raises(ValueError, match="no gold answer"):
        monte_carlo_labels(eng, [Prompt(id="p0", question="?")], SAMPLES[:1])
    with pytest.raises(ValueError, match="no Prompt"):
        monte_carlo_labels(eng, PROMPTS[1:], SAMPLES[:1])

    class Short(StubEngine):
        def generate(self, prompts, n, **kw):
            return super().generate(prompts, n, **kw)[:-1]

    with pytest.raises(ValueError, match="returned"):
        monte_carlo_labels(Short(), PROMPTS, SAMPLES[:1], m=M)
    with pytest.raises(ValueError, match="out of range"):
        response_prefix(["a"], 1)


def test_real_engine_continues_the_prefix(tmp_path):
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy
    from mstar_fast.prm.testing import tiny_image
    from mstar_fast.rollout import RolloutEngine

    d = make_tiny_vlm("llava", tmp_path / "m", vocab_size=400, hidden_size=32, image_size=16, num_layers=1)
    model, processor = load_policy(d)
    prompt = Prompt(id="q", question="What is 2 + 3?", images=[tiny_image(0, (16, 16))], answer="5")
    prefix = "Add 2 and 3.\n\n"
    with_prefix = Prompt(id="q", question=prompt.question, images=prompt.images, meta={RESPONSE_PREFIX_KEY: prefix})
    text, _ = format_prompt(processor, with_prefix)
    assert text == format_prompt(processor, prompt)[0] + prefix
    ids = encode_prompt(processor, with_prefix)["input_ids"][0].tolist()
    tail = processor.tokenizer.encode(prefix, add_special_tokens=False)
    assert ids[-len(tail):] == tail  # the model's next token continues the prefix

    engine = RolloutEngine(model, processor, progress=False)
    samples = [Sample(prompt_id="q", index=0, text=A), Sample(prompt_id="q", index=1, text="I am not sure.")]
    out = monte_carlo_labels(engine, [prompt], samples, m=2, max_new_tokens=6)
    assert [len(e.labels) for e in out] == [3, 1]
    assert all(y in (0.0, 0.5, 1.0) for e in out for y in e.labels)
    assert out[0].labels[-1] == 1.0 and out[1].labels == [0.0]  # no final answer: wrong
