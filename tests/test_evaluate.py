"""evaluate() and ``mstar eval`` on a tiny random Qwen2-VL and the synthetic task.

A random policy gets (almost) nothing right, so the tests relabel prompts with answers the policy itself
produces (found by a first call; sampling is deterministic per (seed, prompt id, index)) to get a mix of
hits and misses, then check every metric against a hand computation from the returned samples."""

from __future__ import annotations

import argparse
import dataclasses
import json
from unittest import mock

import pytest

from mstar_fast.data import Sample, read_jsonl
from mstar_fast.demo.synthetic import export_synthetic, make_synthetic_split
from mstar_fast.evaluate import evaluate, register_cli
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import load_policy
from mstar_fast.rewards import answers_match, check_answer, extract_answer
from mstar_fast.rollout import RolloutEngine

MAX_NEW = 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("policy") / "tiny-qwen", vocab_size=512,
                         hidden_size=32, image_size=32, num_layers=2, max_position_embeddings=512)


@pytest.fixture(scope="module")
def policy(model_dir):
    return load_policy(model_dir)


def synthetic(n):
    """Test prompts without options: relabeling drops them, and the prompt text must not change between
    the labeling call and the checked call (options are written into the question)."""
    return [dataclasses.replace(p, choices=None) for p in make_synthetic_split("test", n)]


def relabel(prompts, samples, k, pick):
    """Prompts whose gold answer is ``pick(i, answers)`` of the policy's own extracted answers (None keeps
    an answer nobody gives); choices dropped so a letter answer is not needed."""
    out = []
    for i, p in enumerate(prompts):
        answers = [s.extracted for s in samples[i * k:(i + 1) * k]]
        gold = pick(i, answers)
        out.append(dataclasses.replace(p, choices=None, answer=gold if gold is not None else "no such answer"))
    return out


def test_greedy_writes_jsonl_and_per_category_accuracy(policy, tmp_path):
    prompts = synthetic(8)
    first = evaluate(*policy, prompts, max_new_tokens=MAX_NEW, progress=False)
    assert first.k == 1 and first.temperature == 0.0 and first.pass_at_k is None
    # Every other prompt relabeled with the policy's greedy answer: those become hits.
    prompts = relabel(prompts, first.samples, 1, lambda i, a: a[0] if i % 2 == 0 else None)
    out = tmp_path / "pred.jsonl"
    res = evaluate(*policy, prompts, max_new_tokens=MAX_NEW, progress=False, out_jsonl=out)

    assert [s.text for s in res.samples] == [s.text for s in first.samples]  # deterministic greedy
    for s, p in zip(res.samples, prompts):
        assert s.prompt_id == p.id and s.temperature == 0.0
        assert s.extracted == extract_answer(s.text)
        assert s.correct == check_answer(s.extracted, p)
    hits = [bool(s.correct) for s in res.samples]
    assert 0 < sum(hits) < len(hits)
    assert res.n == 8 and res.accuracy == pytest.approx(sum(hits) / 8)
    cats = sorted({p.meta["category"] for p in prompts})
    assert list(res.per_category) == cats and len(cats) > 1
    for c in cats:
        idx = [i for i, p in enumerate(prompts) if p.meta["category"] == c]
        assert res.per_category[c].n == len(idx)
        assert res.category_accuracy[c] == pytest.approx(sum(hits[i] for i in idx) / len(idx))

    lines = read_jsonl(out)
    assert [(d["prompt_id"], d["index"]) for d in lines] == [(p.id, 0) for p in prompts]
    for d, s, p in zip(lines, res.samples, prompts):
        assert d["gold"] == p.answer and d["category"] == p.meta["category"] and d["correct"] == s.correct
        assert Sample.from_dict(d).text == s.text and d["token_ids"] is None
        assert d["eval_seed"] == 0 and d["eval_max_new_tokens"] == MAX_NEW

    md = res.to_markdown(title="tiny")
    assert md.startswith("### tiny") and "| category | n | accuracy |" in md and "pass@" not in md
    assert f"| **all** | 8 | {100 * res.accuracy:.1f} |" in md
    for c in cats:
        assert f"| {c} | {res.per_category[c].n} | {100 * res.per_category[c].accuracy:.1f} |" in md
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["per_category"][cats[0]]["n"] >= 1

    # A fresh (non-resumed) run replaces the file instead of appending to it.
    evaluate(*policy, prompts[:3], max_new_tokens=MAX_NEW, progress=False, out_jsonl=out)
    assert len(read_jsonl(out)) == 3


def test_k_samples_pass_at_k_and_majority_vote(policy):
    k = 3
    prompts = synthetic(6)
    first = evaluate(*policy, prompts, k=k, max_new_tokens=MAX_NEW, progress=False)
    assert first.temperature == 1.0  # k > 1 without a temperature: the paper's static T

    def pick(i, answers):
        got = [a for a in answers if a is not None]
        if not got or i % 3 == 2:
            return None
        if i % 3 == 0:  # the first answer: one sample right (pass@k hit), maybe not the majority
            return got[0]
        return max(got, key=got.count)  # the most frequent answer: the majority is right

    prompts = relabel(prompts, first.samples, k, pick)
    res = evaluate(*policy, prompts, k=k, max_new_tokens=MAX_NEW, progress=False)
    assert len(res.samples) == 6 * k
    groups = [res.samples[i * k:(i + 1) * k] for i in range(6)]
    acc = sum(sum(bool(s.correct) for s in g) / k for g in groups) / 6
    pak = sum(any(s.correct for s in g) for g in groups) / 6
    maj = 0
    for g, p in zip(groups, prompts):
        votes = [s.extracted for s in g if s.extracted is not None]
        # The winner: the answer with most equivalent votes, ties to the earliest.
        best = max(votes, key=lambda a: (sum(answers_match(b, a) or answers_match(a, b) for b in votes),
                                          -votes.index(a))) if votes else None
        maj += check_answer(best, p)
    assert res.accuracy == pytest.approx(acc)
    assert res.pass_at_k == pytest.approx(pak) and 0 < pak < 1
    assert res.majority_vote_accuracy == pytest.approx(maj / 6)
    assert res.majority_vote_accuracy <= res.pass_at_k
    md = res.to_markdown()
    assert f"| pass@{k} | maj@{k} |" in md and "k=3, T=1" in md


def test_resume_generates_only_what_is_missing(policy, tmp_path):
    prompts = make_synthetic_split("test", 6)
    out = tmp_path / "pred.jsonl"
    full = evaluate(*policy, prompts, k=2, temperature=0.8, max_new_tokens=MAX_NEW, progress=False, out_jsonl=out)
    lines = out.read_bytes().splitlines(keepends=True)
    assert len(lines) == 12
    # A crash: 2 prompts complete, prompt 2 half written, then a torn line.
    out.write_bytes(b"".join(lines[:5]) + lines[5][:20])
    engine = RolloutEngine(*policy, progress=False, include_choices=True)
    with mock.patch.object(engine, "generate", wraps=engine.generate) as spy:
        res = evaluate(None, None, prompts, k=2, temperature=0.8, max_new_tokens=MAX_NEW, progress=False,
                       out_jsonl=out, engine=engine, resume=True, chunk_size=2)
    generated = [p.id for call in spy.call_args_list for p in call.args[0]]
    assert generated == [p.id for p in prompts[2:]]  # in chunks of 2
    assert spy.call_count == 2
    keys = [(d["prompt_id"], d["index"]) for d in read_jsonl(out)]
    assert sorted(keys) == sorted((p.id, i) for p in prompts for i in range(2)) and len(set(keys)) == 12
    assert [s.text for s in res.samples] == [s.text for s in full.samples]
    assert res.to_dict() == full.to_dict()
    with pytest.raises(ValueError, match="temperature 0.8"):
        evaluate(*policy, prompts, k=2, temperature=1.2, max_new_tokens=MAX_NEW, out_jsonl=out, resume=True,
                 progress=False)
    with pytest.raises(ValueError, match="eval_seed=0, not 5"):
        evaluate(*policy, prompts, k=2, temperature=0.8, max_new_tokens=MAX_NEW, seed=5, out_jsonl=out, resume=True,
                 progress=False)


def test_bad_arguments(policy):
    prompts = make_synthetic_split("test", 2)
    with pytest.raises(ValueError, match="k must be"):
        evaluate(*policy, prompts, k=0)
    with pytest.raises(ValueError, match="temperature"):
        evaluate(*policy, prompts, temperature=-0.5)
    with pytest.raises(ValueError, match="appears twice"):
        evaluate(*policy, [prompts[0], prompts[0]])
    with pytest.raises(ValueError, match="resume=True needs out_jsonl"):
        evaluate(*policy, prompts, resume=True)


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="mstar")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_synthetic(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = run_cli(["eval", str(model_dir), "synthetic:test", "--limit", "4", "--out", str(out),
                  "--max-new-tokens", str(MAX_NEW), "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "### tiny-qwen on synthetic-test" in printed and "| **all** | 4 |" in printed
    assert (out / "results.md").read_text() in printed
    preds = read_jsonl(out / "predictions.jsonl")
    gold = make_synthetic_split("test", 4)
    assert [d["prompt_id"] for d in preds] == [p.id for p in gold]
    for d, p in zip(preds, gold):  # every row: the extracted answer next to the gold one, and the verdict
        assert list(d)[:5] == ["prompt_id", "index", "gold", "extracted", "correct"]
        assert d["gold"] == p.answer and d["extracted"] == extract_answer(d["text"])
        assert d["correct"] == check_answer(d["extracted"], p)
    summary = json.loads((out / "results.json").read_text())
    assert summary["n"] == 4 and summary["k"] == 1 and summary["data"] == "synthetic:test"


def test_cli_eval_dataset_file_with_k(model_dir, tmp_path, capsys):
    paths = export_synthetic(tmp_path / "data", n_train=1, n_val=1, n_test=5)
    out = tmp_path / "eval"
    rc = run_cli(["eval", str(model_dir), str(paths["test"]), "--k", "2", "--temperature", "0.7", "--limit", "3",
                  "--out", str(out), "--max-new-tokens", "8", "--device", "cpu", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| pass@2 | maj@2 |" in printed and "| **all** | 3 |" in printed
    lines = read_jsonl(out / "predictions.jsonl")
    assert len(lines) == 6 and {d["temperature"] for d in lines} == {0.7}
    assert all(d["category"] is not None for d in lines)
