"""PRMScorer on tiny random models built from configs (no hub): the prefix-shared path equals K
independent full forwards and the full model's own softmax over the two reward logits; the LM head's
full-vocabulary projection is never computed; tokenizer checks fail loudly; the callable contract."""

from __future__ import annotations

import doctest

import pytest
import torch

from mstar_fast.data import Prompt, Sample
from mstar_fast.prm import PRMScorer, split_steps
from mstar_fast.prm import scorer as scorer_module
from mstar_fast.prm.testing import tiny_image, tiny_llama_prm, tiny_llava_prm

transformers = pytest.importorskip("transformers")

RESPONSES = [
    "First add the tens: 10 + 30 = 40.\n\nThen add the ones: 40 + 2 = 42.\n\n# Answer\n\n42",
    "x = 5",  # one step
    "",  # no step: score NaN
    "Read the bar chart.\n\nThe tallest bar is B with value 7.\n\nSo B.\n\nMaybe C.\n\n# Answer\n\nB",
    "The image shows 4 red circles and 3 blue squares.\n\n4 + 3 = 7.",
    "Step 1: compute the area.\n\n\n\nStep 2: divide by 2.",  # a blank step is dropped
]


@pytest.fixture(scope="module")
def llava():
    return tiny_llava_prm(seed=0)


def _full_model_step_scores(model, scorer: PRMScorer, prompt: Prompt, responses: list[str]) -> list[list[float]]:
    """What the usual PRM code computes: the whole model (LM head over every position and every
    vocabulary row) on prefix + response, softmax over the two reward-token logits at the tags."""
    good, bad = scorer.reward_token_ids
    prefix = scorer.encode_prompt(prompt)
    out = []
    for text in responses:
        ids, tags = scorer.encode_response(text)
        if not tags:
            out.append([])
            continue
        full = dict(prefix)
        full["input_ids"] = torch.cat([prefix["input_ids"], torch.tensor([ids])], dim=1)
        full.pop("attention_mask", None)
        with torch.no_grad():
            logits = model(**full).logits[0]  # [P + T, V]
        P = prefix["input_ids"].shape[1]
        probs = torch.softmax(logits[[P + t for t in tags]][:, [good, bad]].float(), dim=-1)[:, 0]
        out.append(probs.tolist())
    return out


def _assert_scores_close(a, b, atol=2e-5):
    assert [len(s) for s in a] == [len(s) for s in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(torch.tensor(x), torch.tensor(y), atol=atol, rtol=0)


@pytest.mark.parametrize("max_batch_tokens,forwards", [(32768, 2), (60, 6)])  # one batch; one per response
def test_shared_prefix_equals_independent_and_full_model_llava(llava, max_batch_tokens, forwards):
    model, processor = llava
    scorer = PRMScorer(model, processor, max_batch_tokens=max_batch_tokens)
    prompt = Prompt(id="p", question="What is 12 + 30? Look at the picture.", images=[tiny_image(3)])
    calls = []
    real_forward = scorer._forward
    scorer._forward = lambda **kw: calls.append(kw["input_ids"].shape) or real_forward(**kw)
    shared = scorer.score(prompt, RESPONSES)
    assert len(calls) == forwards  # the prefix once, then the 5 responses with steps in 1 or 5 batches
    assert calls[0][0] == 1 and sum(c[0] for c in calls[1:]) == 5
    del scorer._forward
    independent = scorer.score(prompt, RESPONSES, share_prefix=False)
    assert [len(s) for s in shared.step_scores] == [3, 1, 0, 5, 2, 2]
    _assert_scores_close(shared.step_scores, independent.step_scores)
    _assert_scores_close(shared.step_scores, _full_model_step_scores(model, scorer, prompt, RESPONSES))
    for steps, score in zip(shared.step_scores, shared.scores):
        assert (score != score) if not steps else score == pytest.approx(min(steps), abs=0)
    # The image matters: another image changes the scores (the prefix really carries it).
    other = scorer.score(Prompt(id="q", question=prompt.question, images=[tiny_image(4)]), RESPONSES)
    assert max(abs(a - b) for a, b in zip(other.step_scores[0], shared.step_scores[0])) > 1e-6


def test_text_only_causal_lm_and_value_head():
    model, tokenizer = tiny_llama_prm(seed=1)
    prompt = Prompt(id="t", question="Let x be the unknown. 3x + 5 = 20. What is x?")
    scorer = PRMScorer(model, tokenizer)
    shared = scorer.score(prompt, RESPONSES)
    _assert_scores_close(shared.step_scores, scorer.score(prompt, RESPONSES, share_prefix=False).step_scores)
    _assert_scores_close(shared.step_scores, _full_model_step_scores(model, scorer, prompt, RESPONSES))
    # A value head: sigmoid(head(h)) at the tags, from the backbone's final hidden states.
    head = torch.nn.Linear(model.config.hidden_size, 1)
    vh = PRMScorer(model, tokenizer, value_head=head)
    got = vh.score(prompt, RESPONSES[:1])
    ids, tags = vh.encode_response(RESPONSES[0])
    prefix = vh.encode_prompt(prompt)
    with torch.no_grad():
        h = model.model(input_ids=torch.cat([prefix["input_ids"], torch.tensor([ids])], 1)).last_hidden_state[0]
        want = torch.sigmoid(head(h[[prefix["input_ids"].shape[1] + t for t in tags]]))[:, 0]
    torch.testing.assert_close(torch.tensor(got.step_scores[0]), want, atol=1e-6, rtol=0)


def test_full_vocabulary_lm_head_is_never_called(llava, monkeypatch):
    model, processor = llava
    scorer = PRMScorer(model, processor)
    head = model.get_output_embeddings()
    V = head.weight.shape[0]
    head_calls, vocab_projections = [], []
    handle = head.register_forward_hook(lambda mod, args, out: head_calls.append(out.shape))
    real_linear = torch.nn.functional.linear

    def spy_linear(x, weight, bias=None):
        if weight.shape[0] == V:  # any projection onto the whole vocabulary
            vocab_projections.append(tuple(x.shape))
        return real_linear(x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", spy_linear)
    try:
        prompt = Prompt(id="p", question="How many shapes?", images=[tiny_image(5)])
        scorer.score(prompt, RESPONSES)
        scorer.score(prompt, RESPONSES, share_prefix=False)
        assert head_calls == [] and vocab_projections == []
        # The spy does see a real full-vocabulary forward, so the assertions above can fail.
        ids = scorer.encode_prompt(prompt)
        with torch.no_grad():
            model(**ids)
        assert head_calls and vocab_projections
    finally:
        handle.remove()


def _merging_tokenizer():
    """A byte-level BPE that learned merges of 'ки' with the letters before it ('xки', 'pки')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["ки"] * 50 + ["xки yки"] * 40 + ["stepки"] * 40 + ["1 + 1 = 2, so the answer is 5"] * 5
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def test_tokenizer_checks_name_the_failing_string(llava):
    model, processor = llava
    with pytest.raises(ValueError, match=r"step tag '<step>' must encode to one token, but it encodes to \d+"):
        PRMScorer(model, processor, step_tag="<step>")
    with pytest.raises(ValueError, match=r"step tag '\.' .* does not stay one token in context"):
        PRMScorer(model, processor, step_tag=".")  # also occurs in ordinary text
    with pytest.raises(ValueError, match=r"reward token 'correct' must encode to one token.*\['"):
        PRMScorer(model, processor, reward_tokens=("correct", "-"))
    with pytest.raises(ValueError, match="are the same token"):
        PRMScorer(model, processor, reward_tokens=("+", "+"))

    tok = _merging_tokenizer()
    assert len(tok.encode("ки", add_special_tokens=False)) == 1
    text_model, _ = tiny_llama_prm(seed=2, tokenizer=tok)
    with pytest.raises(ValueError, match=r"does not stay one token in context: 'Step 1: xки"):
        PRMScorer(text_model, tok, step_tag="ки", reward_tokens=("1", "5"))


def test_runtime_tag_count_check():
    """A tag that passes the construction probes but merges in a response is caught, not misread."""
    tok = _merging_tokenizer()
    text_model, _ = tiny_llama_prm(seed=2, tokenizer=tok)
    scorer = PRMScorer.__new__(PRMScorer)  # skip the construction checks to reach the runtime one
    scorer.tokenizer, scorer.step_tag, scorer.step_separator, scorer.answer_marker = tok, "ки", "\n\n", None
    scorer.tag_id = tok.encode("ки", add_special_tokens=False)[0]
    assert len(scorer.encode_response("a b\n\nc")[1]) == 2
    with pytest.raises(ValueError, match=r"2 steps but 1 step-tag tokens"):
        scorer.encode_response("one step\n\nanother")


def test_callable_contract_groups_by_prompt(llava):
    model, processor = llava
    prompts = [
        Prompt(id="a", question="What is 12 + 30?", images=[tiny_image(6)]),
        Prompt(id="b", question="Which bar is tallest?", images=[tiny_image(7)]),
    ]
    samples = [Sample(prompt_id=pid, index=i, text=RESPONSES[j])
               for i, (pid, j) in enumerate([("a", 0), ("b", 3), ("a", 1), ("b", 4), ("a", 2)])]
    scorer = PRMScorer(model, processor, prompts=prompts)
    scores = scorer(samples)
    assert isinstance(scores, list) and len(scores) == 5 and all(isinstance(s, float) for s in scores)
    direct_a = scorer.score(prompts[0], [RESPONSES[0], RESPONSES[1], RESPONSES[2]])
    direct_b = scorer.score(prompts[1], [RESPONSES[3], RESPONSES[4]])
    want = [direct_a.scores[0], direct_b.scores[0], direct_a.scores[1], direct_b.scores[1], direct_a.scores[2]]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(want), equal_nan=True, atol=1e-6, rtol=0)
    assert samples[0].step_scores == pytest.approx(direct_a.step_scores[0], abs=1e-6)
    assert samples[0].score == pytest.approx(scores[0])
    # Prompts can come with the call or in sample.meta; a missing one is a clear error.
    bare = PRMScorer(model, processor)
    assert bare(samples[:1], prompts={"a": prompts[0]}) == pytest.approx(scores[:1], abs=1e-6)
    assert bare([Sample(prompt_id="a", index=0, text=RESPONSES[0], meta={"prompt": prompts[0]})]) == pytest.approx(
        scores[:1], abs=1e-6)
    with pytest.raises(ValueError, match="no Prompt for prompt_id 'a'"):
        bare(samples[:1])


def test_split_steps():
    assert split_steps("a\n\nb\n\n# Answer\n\n5") == ["a", "b", "# Answer\n\n5"]
    assert split_steps("a\n\nb\n\n# Answer\n\n5", answer_marker=None) == ["a", "b", "# Answer", "5"]
    assert split_steps("  \n\n a \n\n\n\n") == ["a"]
    assert split_steps("a. b. c.", separator=". ") == ["a", "b", "c."]
    assert split_steps("") == []


def test_docstring_examples_run():
    result = doctest.testmod(scorer_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_shared_prefix_on_mrope_qwen2_vl(tmp_path):
    """Qwen2-VL packs image tokens into fewer M-RoPE positions: continuations after the cached prefix must
    start at P + rope_delta. Shared-prefix scores equal independent full forwards, twice in a row (no
    stale offset from the previous prompt)."""
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy
    from mstar_fast.prm.train import add_step_tag_token

    model, processor = load_policy(make_tiny_vlm("qwen2_vl", tmp_path, vocab_size=400, hidden_size=32,
                                                 image_size=32, num_layers=1))
    add_step_tag_token(model, processor, "ки")
    scorer = PRMScorer(model, processor, reward_tokens=("a", "b"))
    for seed in (3, 4):
        prompt = Prompt(id=f"p{seed}", question="What is 12 + 30? Look at the picture.",
                        images=[tiny_image(seed, (32, 32))])
        shared = scorer.score(prompt, RESPONSES)
        independent = scorer.score(prompt, RESPONSES, share_prefix=False)
        _assert_scores_close(shared.step_scores, independent.step_scores)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_prompts_of_one_length_score_together(tmp_path, arch):
    """The callable scores prompts of equal length with one prefix forward and shared response forwards
    (M-RoPE: each prompt's own position offset); every score equals the prompt's own ``score``, and a
    prompt of another length or one without steps is scored alone."""
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy
    from mstar_fast.prm.train import add_step_tag_token

    if arch == "llava":
        model, processor = tiny_llava_prm(seed=0)
    else:
        model, processor = load_policy(make_tiny_vlm("qwen2_vl", tmp_path, vocab_size=400, hidden_size=32,
                                                     image_size=32, num_layers=1))
        add_step_tag_token(model, processor, "ки")
    size = (32, 32) if arch == "qwen2_vl" else None
    img = (lambda s: tiny_image(s, size)) if size else tiny_image
    prompts = [Prompt(id=f"s{i}", question="Which bar is tallest?", images=[img(i)]) for i in range(4)]
    prompts.append(Prompt(id="long", question="Which bar is tallest? Look closely at the picture.", images=[img(9)]))
    prompts.append(Prompt(id="none", question="Which bar is tallest?", images=[img(8)]))
    texts = {p.id: [RESPONSES[(i + k) % 6] for k in range(3)] for i, p in enumerate(prompts)}
    texts["none"] = [""]
    samples = [Sample(prompt_id=p.id, index=k, text=t) for p in prompts for k, t in enumerate(texts[p.id])]
    scorer = PRMScorer(model, processor, reward_tokens=("a", "b") if arch == "qwen2_vl" else ("+", "-"))
    calls = []
    handle = scorer.backbone.register_forward_hook(
        lambda m, a, kw, out: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        scores = scorer(samples, prompts=prompts)
    finally:
        handle.remove()
    P = scorer.encode_prompt(prompts[0])["input_ids"].shape[1]
    assert (4, P) in calls  # the four equal-length prompts: one prefix forward
    want = [s for p in prompts for s in scorer.score(p, texts[p.id]).scores]
    torch.testing.assert_close(torch.tensor(scores), torch.tensor(want), equal_nan=True, atol=2e-5, rtol=0)
    for s in samples[:12]:
        own = scorer.score(prompts[int(s.prompt_id[1])], [s.text]).step_scores[0]
        assert s.step_scores == pytest.approx(own, abs=2e-5)
