"""validate(): one batched engine call over the temperature grid plus greedy, and metrics that equal a
hand computation from the returned samples, on a tiny random Qwen2-VL and the synthetic task."""

from __future__ import annotations

import dataclasses
import json
import zlib
from unittest import mock

import pytest

from mstar_fast.demo.synthetic import make_synthetic_split
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import load_policy
from mstar_fast.recipe.monitor import ValidationReport, replica_id, validate
from mstar_fast.rewards import check_answer, extract_answer
from mstar_fast.rollout import RolloutEngine

K = 4
TEMPS = [0.5, 1.0, 1.5]
N_PROMPTS = 6
MAX_NEW = 16


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = make_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("policy") / "m", vocab_size=512, hidden_size=32,
                         image_size=32, num_layers=2, max_position_embeddings=512)
    return RolloutEngine(*load_policy(path), progress=False)


def stub_score(text: str) -> float:
    return zlib.crc32(text.encode()) / 2**32


class StubScorer:
    """A PRM stand-in: a fixed pseudo-random score per response text; records what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, samples, prompts=None):
        self.calls.append([s.prompt_id for s in samples])
        return [stub_score(s.text) for s in samples]


@pytest.fixture(scope="module")
def labeled(engine):
    """Validation prompts relabeled so that the random policy gets some right: each prompt's gold answer
    is an answer the policy itself produces in one of the blocks (greedy or a temperature), found by a first
    validate() call. Sampling is deterministic per (seed, prompt id, index), so a second call with the same
    seed reproduces those samples."""
    prompts = [dataclasses.replace(p, choices=None, meta={"category": p.meta["category"]})
               for p in make_synthetic_split("val", N_PROMPTS)]
    first = validate(engine, prompts, k=K, temperatures=TEMPS, seed=3, max_new_tokens=MAX_NEW)
    blocks = [0.0, *TEMPS]
    relabeled = []
    for i, p in enumerate(prompts):
        if i == N_PROMPTS - 1:  # one prompt nobody gets right
            relabeled.append(dataclasses.replace(p, answer="no such answer"))
            continue
        want = replica_id(p.id, blocks[i % len(blocks)])
        answers = [s.extracted for s in first.samples if s.prompt_id == want and s.extracted is not None]
        relabeled.append(dataclasses.replace(p, answer=answers[0] if answers else p.answer))
    return relabeled, first


def hand_metrics(report, prompts, k):
    """Greedy accuracy and per-temperature Pass@K, Reward-Pass@2 and sample accuracy from the samples."""
    gold = {p.id: p for p in prompts}
    for s in report.samples:  # grading: the recipe's extractor and matcher against the source prompt
        assert s.correct == check_answer(extract_answer(s.text), gold[s.meta["source_id"]])
    greedy = [s for s in report.samples if s.temperature == 0.0]
    assert [s.meta["source_id"] for s in greedy] == [p.id for p in prompts]
    out = {"greedy": sum(s.correct for s in greedy) / len(greedy)}
    for t in TEMPS:
        pak = rp2 = acc = 0.0
        for p in prompts:
            group = [s for s in report.samples if s.prompt_id == replica_id(p.id, t)]
            assert [s.index for s in group] == list(range(k)) and all(s.temperature == t for s in group)
            pak += any(s.correct for s in group)
            acc += sum(s.correct for s in group) / k
            if len({bool(s.correct) for s in group}) == 1:  # all right or all wrong: the scores cannot matter
                rp2 += group[0].correct
            else:
                top2 = sorted(group, key=lambda s: (-s.score, s.index))[:2]  # all samples ranked, no filter
                rp2 += any(s.correct for s in top2)
        n = len(prompts)
        out[t] = {"pass_at_k": pak / n, "reward_pass_at_2": rp2 / n, "sample_accuracy": acc / n}
    return out


def test_one_batched_call_and_hand_computed_metrics(engine, labeled):
    prompts, first = labeled
    scorer = StubScorer()
    with mock.patch.object(engine, "generate", wraps=engine.generate) as spy:
        report = validate(engine, prompts, k=K, temperatures=TEMPS, scorer=scorer, seed=3, max_new_tokens=MAX_NEW)
    # Every temperature and the greedy pass in ONE engine call, with per-prompt temperatures.
    assert spy.call_count == 1
    args, kwargs = spy.call_args
    replicas = args[0]
    assert kwargs["n"] == K and kwargs["seed"] == 3 and kwargs["max_new_tokens"] == MAX_NEW
    assert kwargs["temperature"] == [t for t in [0.0, *TEMPS] for _ in prompts]
    assert [r.id for r in replicas] == [replica_id(p.id, t) for t in [0.0, *TEMPS] for p in prompts]
    assert len({r.id for r in replicas}) == len(replicas)
    # Same seed, same prompt ids: the samples of the labeling call come back unchanged.
    assert [s.text for s in report.samples] == [s.text for s in first.samples]
    # One greedy sample per prompt, K per prompt and temperature.
    assert len(report.samples) == N_PROMPTS + N_PROMPTS * K * len(TEMPS)
    # The scorer saw, in one call under their original prompt ids, each distinct text of every block (one
    # prompt at one temperature) whose samples are partly correct, and nothing else: greedy samples and
    # blocks that are all right or all wrong rank the same whatever their scores.
    sampled = report.samples[N_PROMPTS:]
    blocks = [sampled[a:a + K] for a in range(0, len(sampled), K)]
    mixed = [b for b in blocks if len({bool(s.correct) for s in b}) == 2]
    assert mixed and len(mixed) < len(blocks)  # the relabeling makes some blocks mixed, not all
    assert len(scorer.calls) == 1
    assert scorer.calls[0] == [b[0].meta["source_id"] for b in mixed for _ in dict.fromkeys(s.text for s in b)]
    for b in blocks:
        for s in b:
            assert s.score == (stub_score(s.text) if b in mixed else None)
    assert all(s.score is None for s in report.samples[:N_PROMPTS])

    want = hand_metrics(report, prompts, K)
    assert report.greedy_accuracy == pytest.approx(want["greedy"])
    assert report.temperatures == TEMPS
    for t in TEMPS:
        m = report.at(t)
        assert m.pass_at_k == pytest.approx(want[t]["pass_at_k"])
        assert m.reward_pass_at_2 == pytest.approx(want[t]["reward_pass_at_2"])
        assert m.sample_accuracy == pytest.approx(want[t]["sample_accuracy"])
        assert m.pass_at_k_minus_greedy == pytest.approx(want[t]["pass_at_k"] - want["greedy"])
        assert m.reward_pass_at_2 <= m.pass_at_k
    # The relabeling makes the check meaningful: some hits, some misses.
    assert 0 < report.greedy_accuracy < 1
    assert any(0 < report.at(t).pass_at_k < 1 for t in TEMPS)
    assert report.metric("reward_pass_at_2") == {t: report.at(t).reward_pass_at_2 for t in TEMPS}
    row = report.metrics_row(1.0)
    assert row["val_greedy_acc"] == report.greedy_accuracy and row["val_pass_at_k"] == report.at(1.0).pass_at_k
    assert row["val_reward_pass_at_2"] == report.at(1.0).reward_pass_at_2

    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(d["per_temperature"]) == {"0.5", "1", "1.5"}
    back = ValidationReport.from_dict(d)
    assert back.per_temperature == report.per_temperature and back.greedy_accuracy == report.greedy_accuracy


def test_without_scorer_reward_pass_is_none(engine, labeled):
    prompts, _ = labeled
    report = validate(engine, prompts[:2], k=2, temperatures=[0.7], seed=1, max_new_tokens=8)
    assert report.at(0.7).reward_pass_at_2 is None
    assert report.metric("reward_pass_at_2") == {0.7: None}
    assert json.loads(json.dumps(report.to_dict()))["per_temperature"]["0.7"]["reward_pass_at_2"] is None


def test_with_a_real_prm_scorer(engine, labeled):
    """A PRMScorer built without prompts finds them: validate passes ``prompts=`` and original ids."""
    from mstar_fast.prm import PRMScorer
    from mstar_fast.prm.testing import tiny_llava_prm

    prompts, _ = labeled
    prm = PRMScorer(*tiny_llava_prm(seed=0))
    # The labeling call's seed and sizes: some temperature blocks hold both right and wrong answers.
    report = validate(engine, prompts, k=K, temperatures=TEMPS, scorer=prm, seed=3, max_new_tokens=MAX_NEW)
    sampled = report.samples[N_PROMPTS:]
    scored = [s for a in range(0, len(sampled), K) for s in sampled[a:a + K]
              if len({bool(x.correct) for x in sampled[a:a + K]}) == 2]
    assert scored
    assert all(s.score is not None and s.step_scores is not None for s in scored)
    assert all(s.prompt_id.endswith(tuple(f"@T{t:g}" for t in TEMPS)) for s in sampled)  # replica ids kept
    assert all(0.0 <= report.at(t).reward_pass_at_2 <= 1.0 for t in TEMPS)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(k=0), "k must be"),
    (dict(temperatures=[]), "temperatures is empty"),
    (dict(temperatures=[0.0, 1.0]), "finite and > 0"),
    (dict(temperatures=[0.5, 0.5]), "appears twice"),
])
def test_bad_arguments(engine, labeled, kwargs, msg):
    prompts, _ = labeled
    args = dict(k=2, temperatures=[1.0])
    args.update(kwargs)
    with mock.patch.object(engine, "generate") as gen:
        with pytest.raises(ValueError, match=msg):
            validate(engine, prompts[:2], **args)
        gen.assert_not_called()


def test_bad_prompts(engine, labeled):
    prompts, _ = labeled
    with pytest.raises(ValueError, match="no gold answer"):
        validate(engine, [dataclasses.replace(prompts[0], answer=None)], k=1, temperatures=[1.0])
    with pytest.raises(ValueError, match="unique"):
        validate(engine, [prompts[0], prompts[0]], k=1, temperatures=[1.0])
    with pytest.raises(ValueError, match="no prompts"):
        validate(engine, [], k=1, temperatures=[1.0])
    from mstar_fast.data import Prompt

    scripted = ScriptedEngine({("a", 0.0): ["1"], ("a", 1.0): ["1", "2", "3"]})  # one mixed block, 3 texts
    with pytest.raises(ValueError, match="returned 1 scores for 3 samples"):
        validate(scripted, [Prompt(id="a", question="?", answer="1")], k=3, temperatures=[1.0],
                 scorer=lambda s, prompts=None: [0.5])


class ScriptedEngine:
    """An engine stand-in whose answers are fixed per (source prompt, temperature, index), to check the
    metrics against values worked out by hand."""

    def __init__(self, answers):
        self.answers = answers  # (prompt id, temperature) -> [answer per sample]
        self.calls = 0

    def generate(self, prompts, n, temperature, max_new_tokens, stop=None, seed=0):
        from mstar_fast.data import Sample

        self.calls += 1
        out = []
        for p, t in zip(prompts, temperature):
            source = p.id.rsplit("@", 1)[0]
            answers = self.answers[(source, t)]
            answers = answers * n if t == 0 else answers  # greedy: n copies of one decode
            out += [Sample(prompt_id=p.id, index=i, text=f"Some steps.\n\n# Answer\n\n{a}", temperature=t)
                    for i, a in enumerate(answers[:n])]
        return out


def test_metrics_on_scripted_answers():
    from mstar_fast.data import Prompt
    from mstar_fast.recipe.temperature import TemperatureController

    prompts = [Prompt(id="a", question="?", answer="1"), Prompt(id="b", question="?", answer="2")]
    engine = ScriptedEngine({
        ("a", 0.0): ["1"], ("b", 0.0): ["9"],                      # greedy: 1 of 2 right
        ("a", 0.5): ["1", "9", "9"], ("b", 0.5): ["9", "9", "9"],
        ("a", 1.0): ["9", "1", "9"], ("b", 1.0): ["2", "2", "9"],
    })
    scores = {("a", 0.5): [0.1, 0.9, 0.8], ("b", 0.5): [0.5, 0.4, 0.3],   # a: the correct one ranks last
              ("a", 1.0): [0.2, 0.5, 0.1], ("b", 1.0): [0.3, 0.3, 0.9]}   # b: tie at 0.3 -> index 0 wins

    def scorer(samples, prompts=None):
        return [scores[(s.prompt_id, s.temperature)][s.index] for s in samples]

    report = validate(engine, prompts, k=3, temperatures=[1.0, 0.5], scorer=scorer)
    assert engine.calls == 1
    assert report.greedy_accuracy == 0.5
    lo, hi = report.at(0.5), report.at(1.0)
    assert (lo.pass_at_k, lo.reward_pass_at_2, lo.sample_accuracy) == (0.5, 0.0, pytest.approx(1 / 6))
    assert (hi.pass_at_k, hi.reward_pass_at_2, hi.sample_accuracy) == (1.0, 1.0, pytest.approx(0.5))
    assert (lo.pass_at_k_minus_greedy, hi.pass_at_k_minus_greedy) == (0.0, 0.5)
    # The controller reads this report: Reward-Pass@2 is highest at 1.0.
    c = TemperatureController(grid=[0.5, 1.0], initial=0.5, adapt_every=1)
    assert c.update(1, report) == 1.0
