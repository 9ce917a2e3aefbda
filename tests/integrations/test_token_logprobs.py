"""``Sample.token_logprobs``: the rollout engine records the sampler's log-probability of every token."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models import encode_prompt
from mstar_fast.rollout import RolloutEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_forced_logprobs(model, processor, prompt, sample, temperature):
    enc = {k: v for k, v in encode_prompt(processor, prompt).items() if isinstance(v, torch.Tensor)}
    P = enc["input_ids"].shape[1]
    comp = torch.tensor([sample.token_ids])
    enc["input_ids"] = torch.cat([enc["input_ids"], comp], 1)
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    if "mm_token_type_ids" in enc:
        enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], 1)
    with torch.no_grad():
        logits = model(**enc).logits[0, P - 1:-1].float()
    lp = torch.log_softmax(logits / (temperature or 1.0), -1)
    return lp.gather(1, comp[0].view(-1, 1)).view(-1)


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_prefix", "padded"])
def test_token_logprobs_match_the_model(tiny_models, tiny_images, arch, shared):
    model, processor = tiny_models(arch)
    imgs = [] if arch == "llama" else tiny_images
    prompts = [Prompt(id=f"p{i}", question="What is 2 + 2?" + " Why?" * i, images=imgs[i:i + 1]) for i in range(3)]
    engine = RolloutEngine(model, processor, shared_prefix=shared)
    samples = engine.generate(prompts, n=3, temperature=0.7, top_k=20, max_new_tokens=12, seed=1)
    assert all(len(s.token_logprobs) == len(s.token_ids) for s in samples)
    for s in samples[::2]:
        want = _teacher_forced_logprobs(model, processor, prompts[int(s.prompt_id[1:])], s, 0.7)
        torch.testing.assert_close(torch.tensor(s.token_logprobs), want, atol=2e-4, rtol=1e-4)


def test_greedy_logprobs_and_round_trip(tiny_models):
    model, processor = tiny_models("llama")
    p = Prompt(id="g", question="Say something.")
    s = RolloutEngine(model, processor).generate([p], n=2, temperature=0.0, max_new_tokens=6)
    assert s[0].token_logprobs == s[1].token_logprobs  # greedy: one row decoded, copied
    want = _teacher_forced_logprobs(model, processor, p, s[0], 0.0)
    torch.testing.assert_close(torch.tensor(s[0].token_logprobs), want, atol=2e-4, rtol=1e-4)
    assert Sample.from_dict(s[0].to_dict()).token_logprobs == s[0].token_logprobs


def test_fallback_has_no_logprobs(tiny_models):
    model, processor = tiny_models("llama")
    s = RolloutEngine(model, processor, use_prefix_sharing=False).generate(
        [Prompt(id="f", question="Hi")], n=2, temperature=1.0, max_new_tokens=4)
    assert all(x.token_logprobs is None and x.token_ids for x in s)


def test_suppressed_tokens_are_never_sampled(tiny_models):
    model, processor = tiny_models("llama")
    p = Prompt(id="s", question="Say something.")
    engine = RolloutEngine(model, processor)
    greedy = engine.generate([p], n=1, temperature=0.0, max_new_tokens=6)[0].token_ids
    engine.suppress_token_ids = sorted(set(greedy))
    out = engine.generate([p], n=4, temperature=0.0, max_new_tokens=6)
    assert all(not set(s.token_ids) & set(greedy) for s in out)
    hot = engine.generate([p], n=4, temperature=3.0, max_new_tokens=6, seed=3)
    assert all(not set(s.token_ids) & set(greedy) for s in hot)
