"""The built-in rollout engine against ``model.generate`` and its own contract, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import encode_prompt, load_policy
from mstar_fast.rollout import RolloutEngine, sample_seed

ARCHS = ["qwen2_vl", "llava", "idefics3", "llama"]
SMALL = dict(vocab_size=512, hidden_size=32, image_size=32, num_layers=2, max_position_embeddings=256)
VISION_MODULES = ("visual", "vision_tower", "vision_model")


pytestmark = pytest.mark.usefixtures("one_thread")


class _Models(dict):
    """arch -> (model, processor), built on first use; an arch whose processor needs a missing package
    (torchvision, in some transformers releases) is skipped, not failed."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        try:
            self[arch] = load_policy(make_tiny_vlm(arch, self.root / arch, **SMALL))
        except ImportError as e:
            pytest.skip(f"{arch}: {str(e).strip().splitlines()[0]}")
        return self[arch]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _Models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(4):
        path = root / f"img{i}.png"
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
        paths.append(str(path))
    bad = root / "bad.png"
    bad.write_bytes(b"this is not a png")
    return paths, str(bad)


def make_prompts(arch, images, k=3):
    """Prompts of different lengths (so packing needs left padding), plus a text-only one."""
    imgs = images[0]
    out = [Prompt(id=f"p{i}", question="What is 2 + 2?" + " Explain." * i, images=[] if arch == "llama" else [imgs[i]])
           for i in range(k)]
    return out + [Prompt(id="text", question="Say something.")]


def texts(samples):
    return [s.token_ids for s in samples]


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "padded"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_generate(models, images, arch, shared):
    model, processor = models[arch]
    prompts = make_prompts(arch, images)
    engine = RolloutEngine(model, processor, shared_prefix=shared)
    out = engine.generate(prompts, n=2, temperature=0.0, max_new_tokens=8)
    assert engine.shared_prefix is shared
    assert len(out) == 2 * len(prompts)
    for i, p in enumerate(prompts):
        enc = encode_prompt(processor, p)
        ref = model.generate(**enc, max_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
        eos = set(RolloutEngine(model, processor).eos_ids)
        if any(t in eos for t in ref):  # generate pads after EOS; the engine stops there
            ref = ref[: next(j for j, t in enumerate(ref) if t in eos) + 1]
        assert out[2 * i].token_ids == ref, f"{arch} prompt {p.id}"
        assert out[2 * i + 1].token_ids == ref


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_of_one_length_prefill_together(models, images, arch):
    """Prompts of equal token length are prefilled in one forward (the vision encoder too), and sample
    exactly what one forward per prompt samples; when the batched forward fails, they are prefilled one by
    one, so only a bad prompt fails."""
    model, processor = models[arch]
    imgs = images[0]
    # One question, different images (and ids, hence seeds): the same token length.
    prompts = [Prompt(id=f"e{i}", question="What is in the figure?", images=[] if arch == "llama" else [imgs[i]])
               for i in range(4)]
    lengths = {int(encode_prompt(processor, p)["input_ids"].shape[1]) for p in prompts}
    assert len(lengths) == 1
    forwards = []
    handle = model.register_forward_hook(lambda m, a, kw, out: forwards.append(kw["input_ids"].shape),
                                         with_kwargs=True)
    try:
        kw = dict(n=3, temperature=1.0, max_new_tokens=6, seed=3)
        one = RolloutEngine(model, processor, max_prefill_tokens=0).generate(prompts, **kw)
        eng = RolloutEngine(model, processor)
        forwards.clear()
        together = eng.generate(prompts, **kw)  # a fresh engine: its probe decides before any prompt runs
    finally:
        handle.remove()
    assert texts(together) == texts(one)
    flat = lambda out: [lp for s in out for lp in s.token_logprobs]  # noqa: E731
    assert flat(together) == pytest.approx(flat(one), abs=1e-5)
    prefills = [shape for shape in forwards if shape[1] in lengths]
    assert [shape[0] for shape in prefills] == [4], prefills
    # The same call on another fresh engine batches the same way, whatever ran before (resume == uninterrupted).
    again = RolloutEngine(model, processor)
    again.generate(prompts[2:], **kw)
    assert texts(again.generate(prompts, **kw)) == texts(together)
    forward, raised = model.forward, []

    def fails_batched(*a, **k):
        if k["input_ids"].shape[0] > 1 and k["input_ids"].shape[1] > 1:
            raised.append(1)
            raise ValueError("image features and image tokens do not match")
        return forward(*a, **k)

    model.forward = fails_batched
    try:
        assert texts(eng.generate(prompts, **kw)) == texts(one)
    finally:
        del model.forward
    assert raised == [1]


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava", "idefics3"])
def test_vision_encoder_runs_once_per_prompt(models, images, arch):
    model, processor = models[arch]
    vision = next(m for name, m in model.named_modules() if name.split(".")[-1] in VISION_MODULES)
    calls = []
    handle = vision.register_forward_hook(lambda *a: calls.append(1))
    try:
        prompts = make_prompts(arch, images)
        RolloutEngine(model, processor).generate(prompts, n=8, temperature=1.0, max_new_tokens=4)
    finally:
        handle.remove()
    assert len(calls) == 3  # three prompts with an image, 8 samples each, one text-only prompt


def test_layout_and_records(models, images):
    model, processor = models["qwen2_vl"]
    prompts = make_prompts("qwen2_vl", images)
    out = RolloutEngine(model, processor).generate(prompts, n=3, temperature=[0.5, 1.0, 0.0, 1.5], max_new_tokens=5,
                                                   seed=11)
    assert [(s.prompt_id, s.index) for s in out] == [(p.id, k) for p in prompts for k in range(3)]
    for s in out:
        assert s.seed == sample_seed(11, s.prompt_id, s.index)
        assert s.finish_reason in ("stop", "length") and 1 <= len(s.token_ids) <= 5
        assert s.text == processor.tokenizer.decode(s.token_ids, skip_special_tokens=True)
        assert s.meta["prompt_tokens"] > 0
    assert [s.temperature for s in out[::3]] == [0.5, 1.0, 0.0, 1.5]


def test_per_prompt_temperature(models, images):
    model, processor = models["llava"]
    prompts = make_prompts("llava", images, k=2)[:2]
    out = RolloutEngine(model, processor).generate(prompts, n=6, temperature=[0.0, 1.5], max_new_tokens=8)
    cold, hot = texts(out[:6]), texts(out[6:])
    assert all(t == cold[0] for t in cold)
    assert len({tuple(t) for t in hot}) > 1


def test_top_k_one_is_greedy(models, images):
    model, processor = models["idefics3"]
    prompts = make_prompts("idefics3", images, k=2)
    eng = RolloutEngine(model, processor)
    greedy = eng.generate(prompts, n=1, temperature=0.0, max_new_tokens=6)
    topk1 = eng.generate(prompts, n=3, temperature=1.3, top_k=1, max_new_tokens=6)
    assert all(s.token_ids == greedy[i // 3].token_ids for i, s in enumerate(topk1))


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "padded"])
def test_same_seed_same_samples_any_batching(models, images, shared):
    model, processor = models["qwen2_vl"]
    prompts = make_prompts("qwen2_vl", images)
    kw = dict(n=4, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=5)
    # all prompts' rows at once vs one prompt at a time (max_batch_rows = n)
    wide = RolloutEngine(model, processor, max_batch_rows=32, shared_prefix=shared).generate(prompts, **kw)
    narrow = RolloutEngine(model, processor, max_batch_rows=4, shared_prefix=shared).generate(prompts, **kw)
    assert texts(wide) == texts(narrow)
    other_store = RolloutEngine(model, processor, shared_prefix=not shared).generate(prompts, **kw)
    assert texts(other_store) == texts(wide)
    rev = RolloutEngine(model, processor).generate(prompts[::-1], **kw)
    assert texts(rev) == [t for i in reversed(range(len(prompts))) for t in texts(wide)[4 * i: 4 * i + 4]]
    other = RolloutEngine(model, processor).generate(prompts, **{**kw, "seed": 6})
    assert texts(other) != texts(wide)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "padded"])
def test_rows_admitted_mid_flight(models, images, shared):
    """Rows that finish early free room for the next prompt, whose rows then decode beside rows at other
    steps; every sample still equals its one-prompt-at-a-time value."""
    model, processor = models["llama"]
    prompts = [Prompt(id=f"q{i}", question="Count" + "!" * i) for i in range(4)]
    probe = RolloutEngine(model, processor, eos_token_id=[]).generate(prompts, n=4, max_new_tokens=12, seed=1)
    eos = probe[0].token_ids[2]  # a token the samples do emit, so rows end at different steps
    kw = dict(n=4, max_new_tokens=12, seed=1)
    alone = [s for p in prompts for s in RolloutEngine(model, processor, eos_token_id=eos).generate([p], **kw)]
    packed = RolloutEngine(model, processor, eos_token_id=eos, max_batch_rows=6, shared_prefix=shared).generate(
        prompts, **kw)
    assert texts(packed) == texts(alone)
    assert any(s.finish_reason == "stop" for s in packed) and any(s.finish_reason == "length" for s in packed)


@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "padded"])
def test_finished_rows_free_the_token_budget(models, monkeypatch, shared):
    """The KV budget (max_batch_tokens) is recounted when finished rows leave: once the first prompts have
    finished, the later ones again decode several at a time (it used to only ever grow, so after the first
    batch every prompt decoded alone)."""
    from mstar_fast.rollout import scheduler

    model, processor = models["llama"]
    prompts = [Prompt(id=f"b{i}", question="Count" + "!" * (i % 3)) for i in range(12)]
    eng = RolloutEngine(model, processor, eos_token_id=[], shared_prefix=shared)
    plen = max(int(encode_prompt(processor, p)["input_ids"].shape[1]) for p in prompts)
    eng.max_batch_tokens = 3 * (plen * (1 if shared else 2) + 2 * 8)  # room for three prompts of 2 rows
    rows: list[int] = []
    cls = next(c for c in vars(scheduler).values() if isinstance(c, type) and hasattr(c, "_step"))
    step = cls._step
    monkeypatch.setattr(cls, "_step", lambda self, batch: (rows.append(len(batch)), step(self, batch))[1])
    out = eng.generate(prompts, n=2, temperature=1.0, max_new_tokens=8, seed=0)
    assert len(out) == 24 and all(len(s.token_ids) == 8 for s in out)
    assert len(rows) <= 4 * 8, f"{len(rows)} decode steps for 12 prompts of 8 tokens, 3 at a time: {rows}"
    assert max(rows) == 6


def test_eos_and_max_new_tokens(models, images):
    model, processor = models["llama"]
    prompts = make_prompts("llama", images, k=2)
    free = RolloutEngine(model, processor, eos_token_id=[]).generate(prompts, n=3, max_new_tokens=9, seed=2)
    assert all(len(s.token_ids) == 9 and s.finish_reason == "length" for s in free)
    eos = free[0].token_ids[4]
    cut = RolloutEngine(model, processor, eos_token_id=eos).generate(prompts, n=3, max_new_tokens=9, seed=2)
    for a, b in zip(free, cut, strict=True):
        if eos in a.token_ids:
            j = a.token_ids.index(eos)
            assert b.token_ids == a.token_ids[: j + 1] and b.finish_reason == "stop"
            assert b.text == processor.decode(a.token_ids[:j], skip_special_tokens=True)
        else:
            assert b.token_ids == a.token_ids


def test_stop_strings(models, images):
    model, processor = models["llava"]
    prompts = make_prompts("llava", images, k=2)
    eng = RolloutEngine(model, processor, eos_token_id=[])
    free = eng.generate(prompts, n=2, max_new_tokens=16, seed=3)
    target = next(s for s in free if len(s.text) > 12)
    stop = target.text[6:9]
    out = eng.generate(prompts, n=2, max_new_tokens=16, seed=3, stop=["@@never@@", stop])
    for a, b in zip(free, out, strict=True):
        if stop in a.text:
            assert b.text == a.text[: a.text.index(stop)] and b.finish_reason == "stop" and b.meta["stop"] == stop
            assert len(b.token_ids) <= len(a.token_ids)
        else:
            assert b.token_ids == a.token_ids and "stop" not in b.meta


def test_bad_image_and_too_long_prompt_fail_alone(models, images):
    model, processor = models["qwen2_vl"]
    good = make_prompts("qwen2_vl", images, k=2)[:2]
    bad = Prompt(id="bad", question="What is shown?", images=[images[1]])
    long = Prompt(id="long", question="word " * 400)  # > max_position_embeddings=256 tokens
    eng = RolloutEngine(model, processor)
    kw = dict(n=3, temperature=1.0, max_new_tokens=6, seed=4)
    out = eng.generate([good[0], bad, long, good[1]], **kw)
    assert [s.prompt_id for s in out] == ["p0"] * 3 + ["bad"] * 3 + ["long"] * 3 + ["p1"] * 3
    assert all(s.finish_reason == "error" and s.text == "" for s in out[3:9])
    assert "cannot open image" in out[3].meta["error"]
    assert "context" in out[6].meta["error"]
    assert texts(out[:3] + out[9:]) == texts(eng.generate(good, **kw))


def test_shared_prefix_refused_where_unsupported(models):
    model, processor = models["llama"]
    model.config.sliding_window = 4  # a sliding-window decoder cannot read one shared prompt copy
    try:
        with pytest.raises(ValueError, match="shared_prefix=True"):
            RolloutEngine(model, processor, shared_prefix=True).generate([Prompt(id="a", question="x")], n=2)
        auto = RolloutEngine(model, processor)
        auto.generate([Prompt(id="a", question="x")], n=2, max_new_tokens=2)
        assert auto.shared_prefix is False
    finally:
        model.config.sliding_window = None


def test_cascade_attention_equals_full_attention():
    """SharedPrefixLayer.attend over (group prefix + own suffix) equals plain attention over the row's
    whole sequence, with prompts of different lengths, rows admitted at different steps and rows dropped."""
    from transformers import DynamicCache

    from mstar_fast.rollout.shared_prefix import SharedPrefixStore

    g = torch.Generator().manual_seed(0)
    hkv, rep, d = 2, 3, 8

    def prefill(length):
        c = DynamicCache()
        c.update(torch.randn(1, hkv, length, d, generator=g), torch.randn(1, hkv, length, d, generator=g), 0)
        return c

    store = SharedPrefixStore(torch.device("cpu"))
    seqs = []  # per row: (keys, values) of its full sequence [Hkv, L, D]
    def add(lengths_rows):
        parts = [(prefill(n), r) for n, r in lengths_rows]
        store.add(parts, room=4)
        for c, r in parts:
            seqs.extend([[c.layers[0].keys[0], c.layers[0].values[0]] for _ in range(r)])

    def step():
        layer = store.cache.layers[0]
        k, v = torch.randn(len(seqs), hkv, 1, d, generator=g), torch.randn(len(seqs), hkv, 1, d, generator=g)
        layer.update(k, v)
        for i, sv in enumerate(seqs):
            sv[0], sv[1] = torch.cat([sv[0], k[i]], 1), torch.cat([sv[1], v[i]], 1)
        q = torch.randn(len(seqs), hkv * rep, 1, d, generator=g)
        out = layer.attend(q, scaling=None)
        for i, (k_i, v_i) in enumerate(seqs):
            ref = torch.nn.functional.scaled_dot_product_attention(q[i:i + 1], k_i[None], v_i[None], enable_gqa=True)
            torch.testing.assert_close(out[i, 0], ref[0, :, 0], rtol=1e-5, atol=1e-5)

    add([(5, 3), (9, 2)])
    step()
    step()
    add([(3, 4)])  # joins two steps later
    step()
    keep = torch.tensor([0, 2, 5, 6, 8])  # drops a whole group (rows 3-4) and rows of the others
    store.select(keep)
    seqs[:] = [seqs[i] for i in keep.tolist()]
    step()
    step()


def test_generation_capped_by_context(models):
    model, processor = models["llama"]
    eng = RolloutEngine(model, processor, eos_token_id=[], max_model_len=24)
    out = eng.generate([Prompt(id="a", question="Hi")], n=2, max_new_tokens=100)
    assert all(s.finish_reason == "length" and s.meta["prompt_tokens"] + len(s.token_ids) == 24 for s in out)


def test_fallback_to_model_generate(models, images):
    model, processor = models["llava"]
    prompts = make_prompts("llava", images, k=2)
    fast = RolloutEngine(model, processor).generate(prompts, n=2, temperature=0.0, max_new_tokens=6)
    slow_engine = RolloutEngine(model, processor, use_prefix_sharing=False)
    slow = slow_engine.generate(prompts, n=2, temperature=0.0, max_new_tokens=6)
    assert texts(slow) == texts(fast)
    a = slow_engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=6, seed=9)
    b = slow_engine.generate(prompts, n=3, temperature=1.0, max_new_tokens=6, seed=9)
    assert texts(a) == texts(b) and [s.index for s in a] == [0, 1, 2] * len(prompts)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=0), "n must be"),
    (dict(n=2, max_new_tokens=0), "max_new_tokens"),
    (dict(n=2, temperature=-1.0), "temperature"),
    (dict(n=2, top_p=0.0), "top_p"),
    (dict(n=2, top_k=1.5), "top_k"),
    (dict(n=2, min_p=2.0), "min_p"),
    (dict(n=2, temperature=[1.0, 0.5]), "one value per prompt"),
    (dict(n=2, stop=[""]), "stop"),
])
def test_bad_arguments(models, kwargs, match):
    model, processor = models["llama"]
    with pytest.raises(ValueError, match=match):
        RolloutEngine(model, processor).generate([Prompt(id="a", question="x")], **kwargs)
    with pytest.raises(ValueError, match="backend"):
        RolloutEngine(model, processor, backend="tgi")
