"""SFTEngine: response-only labels, the loss itself, gradient accumulation, the three training modes,
LR schedules, vision freezing, gradient checkpointing, batching plan."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from mstar_fast.data.records import Sample
from mstar_fast.train import IGNORE_INDEX, SFTCollator, SFTConfig, SFTEngine, eos_token_id_for
from mstar_fast.train.data import collate, plan_steps, rank_micro_batches
from mstar_fast.train.optim import WarmupSchedule
from tests.train.conftest import load, qa_pairs

IMG = Image.new("RGB", (20, 14), (200, 30, 30))


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_labels_cover_exactly_the_response(tiny_dirs, arch):
    model, proc = load(tiny_dirs(arch))
    eos = eos_token_id_for(model, proc)
    col = SFTCollator(proc, eos_token_id=eos)
    (prompt, sample), (p2, s2) = qa_pairs(2, images=[IMG])
    ex = col.encode(prompt, sample)
    resp = proc.tokenizer(sample.text, add_special_tokens=False)["input_ids"] + [eos]
    R = len(resp)
    trained = (ex.labels != IGNORE_INDEX).nonzero().view(-1).tolist()
    assert trained == list(range(len(ex) - R, len(ex)))  # exactly the response positions
    assert ex.labels[-R:].tolist() == resp and ex.input_ids[-R:].tolist() == resp
    image_id = model.config.image_token_id if arch == "qwen2_vl" else model.config.image_token_index
    is_image = ex.input_ids == image_id
    assert int(is_image.sum()) > 0 and bool((ex.labels[is_image] == IGNORE_INDEX).all())
    # The prompt part is what the rollout engine feeds the model (same formatting function).
    from mstar_fast.models import encode_prompt

    assert ex.input_ids[: len(ex) - R].tolist() == encode_prompt(proc, prompt)["input_ids"][0].tolist()

    # Sampled token ids, when present, are trained on verbatim.
    s2.token_ids = [5, 6, 7, eos]
    ex2 = col.encode(p2, s2)
    assert ex2.labels[-4:].tolist() == [5, 6, 7, eos] and int((ex2.labels != IGNORE_INDEX).sum()) == 4

    batch = col.collate([ex, ex2])
    n = len(ex2)
    assert batch["labels"].shape == batch["input_ids"].shape == batch["attention_mask"].shape
    assert bool((batch["labels"][1, n:] == IGNORE_INDEX).all()) and int(batch["attention_mask"][1].sum()) == n
    if arch == "qwen2_vl":
        assert batch["mm_token_type_ids"].shape == batch["input_ids"].shape
        assert batch["image_grid_thw"].shape == (2, 3)


def test_max_length_truncates_response_and_drops_long_prompts(tiny_dirs):
    model, proc = load(tiny_dirs("llama"))
    (p, s), = qa_pairs(1)
    full = SFTCollator(proc).encode(p, s)
    P = int((full.labels == IGNORE_INDEX).sum())
    cut = SFTCollator(proc, max_length=P + 3).encode(p, s)
    assert len(cut) == P + 3 and int((cut.labels != IGNORE_INDEX).sum()) == 3
    assert SFTCollator(proc, max_length=P).encode(p, s) is None


def test_prompt_encodings_are_cached_per_prompt(tiny_dirs, monkeypatch):
    """A prompt is run through the processor once for all its responses; an edited prompt, a new prompt
    object or a full cache is encoded again, and every example equals the uncached one."""
    import mstar_fast.train.data as data_mod

    model, proc = load(tiny_dirs("qwen2_vl"))
    calls = []
    real = data_mod.encode_prompt
    monkeypatch.setattr(data_mod, "encode_prompt", lambda *a, **k: calls.append(a[1].id) or real(*a, **k))
    (p, s), (p2, s2) = qa_pairs(2, images=[IMG])
    s_b = Sample(prompt_id=p.id, index=1, text="Step 1: guess.\n\n# Answer\n\n3")
    col, plain = SFTCollator(proc), SFTCollator(proc, prompt_cache_mb=0)
    for pair in [(p, s), (p, s_b), (p, s), (p2, s2)]:
        a, b = col.encode(*pair), plain.encode(*pair)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert a.extras.keys() == b.extras.keys() and all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)
    assert calls.count(p.id) == 1 + 3 and calls.count(p2.id) == 1 + 1  # cached: once each; plain: every time
    calls.clear()
    p.question = "What is 1 + 2?"  # edited in place: encoded again, with the new text
    edited = col.encode(p, s)
    assert calls == [p.id] and torch.equal(edited.input_ids, plain.encode(p, s).input_ids)
    tiny = SFTCollator(proc, prompt_cache_mb=1e-4)  # ~100 bytes: smaller than one prompt, nothing is kept
    calls.clear()
    tiny.encode(p, s), tiny.encode(p, s)
    assert len(calls) == 2 and tiny._prompts.bytes == 0
    with pytest.raises(ValueError, match="prompt_cache_mb"):
        SFTCollator(proc, prompt_cache_mb=-1)


def test_loss_equals_transformers_loss(tiny_dirs):
    """The fused response-only loss equals the model's own (full-logits) loss on the same labels."""
    model, proc = load(tiny_dirs("llava"))
    col = SFTCollator(proc, eos_token_id=eos_token_id_for(model, proc))
    batch = col.collate([col.encode(*pair) for pair in qa_pairs(3, images=[IMG])])
    eng = SFTEngine(model, SFTConfig(parallel="none"))
    model.eval()
    with torch.no_grad():
        ours = eng.loss_module(batch)
        n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        hf = model(**batch).loss
    torch.testing.assert_close(ours / n_tok, hf, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen2_vl", "idefics3"])
def test_tiny_vlm_loss_decreases(tiny_dirs, arch):
    model, proc = load(tiny_dirs(arch))
    col = SFTCollator(proc, eos_token_id=eos_token_id_for(model, proc))
    data = qa_pairs(4, images=[IMG])
    eng = SFTEngine(model, SFTConfig(lr=1e-2, global_batch_size=4, micro_batch_size=2, max_grad_norm=1.0), collator=col)
    report = eng.train_on(data, steps=12)
    assert report.steps == 12 and eng.global_step == 12
    assert report.losses[-1] < 0.7 * report.losses[0], report.losses
    assert not model.training  # the engine restores the mode the model came in


def _encoded(tiny_dirs, n=8, seed=0):
    model, proc = load(tiny_dirs("llama"))
    col = SFTCollator(proc)
    return model, [col.encode(*pair) for pair in qa_pairs(n, seed=seed)]


def test_grad_accumulation_matches_one_big_batch(tiny_dirs):
    model, exs = _encoded(tiny_dirs)
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    # SGD: the weights move by exactly lr * gradient, so they compare the accumulated gradients (Adam
    # would amplify float-rounding differences of near-zero gradients to full-size updates).
    cfg = SFTConfig(lr=1e-1, optimizer="sgd", global_batch_size=8, shuffle=False, max_grad_norm=None)
    r1 = SFTEngine(m1, cfg, micro_batch_size=8).train_on(exs, steps=2)
    r2 = SFTEngine(m2, cfg, micro_batch_size=3).train_on(exs, steps=2)
    assert r1.losses == pytest.approx(r2.losses, rel=1e-5)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)


def test_continuous_keeps_optimizer_and_schedule(tiny_dirs):
    model, exs = _encoded(tiny_dirs)
    eng = SFTEngine(model, SFTConfig(mode="continuous", lr=1e-3, warmup_steps=4, global_batch_size=4,
                                     micro_batch_size=4))
    opt, sched = eng.optimizer, eng.scheduler
    r1 = eng.train_on(exs[:4], steps=3)
    r2 = eng.train_on(exs[4:], steps=3)
    assert eng.optimizer is opt and eng.scheduler is sched
    # Warm-up runs once over the whole run: steps 1..6 see lr * (1/4, 2/4, 3/4, 1, 1, 1).
    assert r1.lrs + r2.lrs == pytest.approx([1e-3 * f for f in (0.25, 0.5, 0.75, 1, 1, 1)])
    state = next(iter(eng.optimizer.state.values()))
    assert int(state["step"]) == 6 and eng.global_step == 6 and eng.calls == 2


def test_iterative_rft_recreates_optimizer_keeps_weights(tiny_dirs):
    model, exs = _encoded(tiny_dirs)
    eng = SFTEngine(model, SFTConfig(mode="iterative_rft", lr=1e-3, warmup_steps=2, global_batch_size=4,
                                     micro_batch_size=4, shuffle=False))
    r1 = eng.train_on(exs[:4], steps=3)
    after1, opt1 = _params(model), eng.optimizer
    r2 = eng.train_on(exs[4:], steps=3)
    assert eng.optimizer is not opt1
    assert r1.lrs == r2.lrs == pytest.approx([5e-4, 1e-3, 1e-3])  # the warm-up repeats per call
    assert int(next(iter(eng.optimizer.state.values()))["step"]) == 3
    assert eng.global_step == 6
    # The second call started from the first call's weights: same as a fresh engine started there.
    fresh_model = copy.deepcopy(model)
    fresh_model.load_state_dict(after1)
    fresh = SFTEngine(fresh_model, eng.config)
    fresh.train_on(exs[4:], steps=3)
    assert _same(_params(model), _params(fresh_model))


def test_rest_em_restarts_from_initial_weights(tiny_dirs):
    model, exs = _encoded(tiny_dirs)
    init = _params(model)
    ref_model = copy.deepcopy(model)
    cfg = SFTConfig(mode="rest_em", lr=1e-3, global_batch_size=4, micro_batch_size=4, shuffle=False)
    eng = SFTEngine(model, cfg)
    eng.train_on(exs[:4], steps=3)
    assert not _same(_params(model), init)
    eng.train_on(exs[4:], steps=3)
    # Equal to training the initial weights on the second call's data alone.
    SFTEngine(ref_model, cfg).train_on(exs[4:], steps=3)
    assert _same(_params(model), _params(ref_model))
    eng.reset_weights()
    assert _same(_params(model), init)


def test_freeze_vision_and_gradient_checkpointing(tiny_dirs):
    model, proc = load(tiny_dirs("llava"))
    col = SFTCollator(proc, eos_token_id=eos_token_id_for(model, proc))
    data = qa_pairs(4, images=[IMG])
    ref_model = copy.deepcopy(model)
    before = _params(model)
    cfg = SFTConfig(lr=1e-3, global_batch_size=4, micro_batch_size=2, shuffle=False, freeze_vision=True)
    eng = SFTEngine(model, cfg, collator=col, gradient_checkpointing=True)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    r = eng.train_on(data, steps=2)
    after = _params(model)
    vision = [k for k in before if ".vision_tower." in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    # Gradient checkpointing changes memory, not results.
    r_ref = SFTEngine(ref_model, cfg, collator=col).train_on(data, steps=2)
    assert r.losses == pytest.approx(r_ref.losses, rel=1e-5)


def test_bf16_autocast_runs(tiny_dirs):
    model, exs = _encoded(tiny_dirs, n=4)
    eng = SFTEngine(model, SFTConfig(lr=1e-3, global_batch_size=4, micro_batch_size=2, bf16=True))
    r = eng.train_on(exs, steps=2)
    assert eng.use_bf16 and all(torch.isfinite(torch.tensor(r.losses)))
    assert next(model.parameters()).dtype == torch.float32


def test_schedules():
    s = WarmupSchedule("constant", warmup_steps=4)
    assert [s(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    c = WarmupSchedule("cosine", warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    vals = [c(i) for i in range(8)]
    assert vals[:3] == pytest.approx([0.5, 1.0, 1.0]) and vals[4] == pytest.approx(0.55)
    assert vals[6] == pytest.approx(0.1) and vals[7] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupSchedule("cosine", 0)


def test_config_errors(tiny_dirs):
    model, _ = load(tiny_dirs("llama"))
    with pytest.raises(ValueError, match="mode"):
        SFTEngine(model, SFTConfig(mode="ppo"))
    with pytest.raises(ValueError, match="total_steps"):
        SFTEngine(model, SFTConfig(lr_schedule="cosine"))
    with pytest.raises(ValueError, match="vision encoder"):
        SFTEngine(model, SFTConfig(freeze_vision=True))
    eng = SFTEngine(model, SFTConfig())
    with pytest.raises(ValueError, match="collator"):
        eng.train_on(qa_pairs(1))
    with pytest.raises(ValueError, match="cannot train on"):
        eng.train_on(["text"])


def test_pre_collated_batches_and_epochs(tiny_dirs):
    model, exs = _encoded(tiny_dirs, n=6)
    batch = collate(exs[:3], pad_token_id=0)
    eng = SFTEngine(model, SFTConfig(lr=1e-3, global_batch_size=4, micro_batch_size=2))
    r = eng.train_on([batch, *exs[3:]], epochs=2)  # 6 examples, batches of 4: 2 steps per epoch
    assert r.steps == 4 and r.examples == 12


def test_batch_plan():
    plan = plan_steps(10, 4, None, 2, seed=0, call=0, shuffle=True)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(i for b in plan[:3] for i in b) == list(range(10))
    assert plan[:3] != plan[3:]  # a new order each epoch
    assert plan == plan_steps(10, 4, None, 2, seed=0, call=0, shuffle=True)
    assert len(plan_steps(10, 4, 7, 1, seed=0, call=0, shuffle=True)) == 7

    lengths = [5, 50, 7, 30, 9, 41, 2]
    batch = list(range(7))
    per_rank = [rank_micro_batches(batch, lengths, 2, r, micro_batch_size=2, group_by_length=True) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2  # same number of micro-batches on every rank
    got = sorted(i for mbs in per_rank for mb in mbs for i in mb)
    assert got == batch and all(len(mb) <= 2 for mbs in per_rank for mb in mbs)
    assert per_rank[0][0] == [1, 3] and per_rank[1][0] == [5, 4]  # longest first, interleaved over ranks
    tiny = [rank_micro_batches([3], lengths, 2, r, 4, True) for r in (0, 1)]
    assert tiny == [[[3]], [[]]]  # the idle rank gets an empty slot (a zero-weight dummy pass)
