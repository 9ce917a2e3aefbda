"""``model.generate`` with the package's sampler (``mstar_fast.integrations.hf_generate``)."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.integrations.hf_generate import SamplerLogitsProcessor, generate

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = 10


def _batch(processor, rows=3):
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    texts = ["What is 2 + 2?", "Name a colour.", "Count to three, slowly please."][:rows]
    return dict(tok(texts, return_tensors="pt", padding=True))


def _gen(model, enc, **kw):
    return generate(model, **enc, max_new_tokens=NEW, min_new_tokens=NEW, **kw)


def test_greedy_equals_plain_generate(tiny_models):
    model, processor = tiny_models("llama")
    enc = _batch(processor)
    plain = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    ours = _gen(model, enc, temperature=0.0)
    assert torch.equal(ours, plain)


def test_seeded_runs_reproducible_and_rows_independent(tiny_models):
    model, processor = tiny_models("llama")
    enc = _batch(processor)
    seeds = torch.tensor([11, 22, 33])
    a, lp_a = _gen(model, enc, temperature=1.0, seed=seeds, return_logprobs=True)
    b, lp_b = _gen(model, enc, temperature=1.0, seed=seeds, return_logprobs=True)
    assert torch.equal(a, b) and torch.equal(lp_a, lp_b)
    assert lp_a.shape == (3, NEW) and bool((lp_a <= 0).all())
    c = _gen(model, enc, temperature=1.0, seed=torch.tensor([11, 99, 33]))
    assert torch.equal(a[0], c[0]) and torch.equal(a[2], c[2])  # a row depends on its own seed only
    assert not torch.equal(a[1], c[1])


def test_per_row_parameters_are_honoured(tiny_models):
    model, processor = tiny_models("llama")
    enc = _batch(processor)
    greedy = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    P = enc["input_ids"].shape[1]
    # row 0 greedy by temperature, row 1 greedy by top_k=1, row 2 hot sampling
    out, lp = _gen(model, enc, temperature=[0.0, 1.0, 5.0], top_k=[0, 1, 0], seed=torch.tensor([1, 2, 3]),
                   return_logprobs=True)
    assert torch.equal(out[0], greedy[0]) and torch.equal(out[1], greedy[1])
    assert not torch.equal(out[2], greedy[2])
    # the logprobs are those of log_softmax(logits / T) of each row's drawn tokens (raw logits: no
    # min_new_tokens processor here, which would mask EOS before the sampler sees the scores)
    res, lp = generate(model, **enc, max_new_tokens=NEW, temperature=[0.0, 1.0, 5.0], top_k=[0, 1, 0],
                       seed=torch.tensor([1, 2, 3]), return_logprobs=True, return_dict_in_generate=True,
                       output_logits=True)
    raw = torch.stack(res.logits, 1).float()  # [B, steps, V]
    T = torch.tensor([1.0, 1.0, 5.0]).view(3, 1, 1)  # greedy rows: T = 1
    new = res.sequences[:, P:]
    want = torch.log_softmax(raw / T, -1).gather(2, new.unsqueeze(-1)).squeeze(-1)
    eos = set(model.generation_config.eos_token_id)
    for r in range(3):
        k = next((i + 1 for i, t in enumerate(new[r].tolist()) if t in eos), new.shape[1])
        torch.testing.assert_close(lp[r, :k], want[r, :k], atol=1e-5, rtol=1e-5)


def test_return_dict_and_logits_work_output_scores_refused(tiny_models):
    model, processor = tiny_models("llama")
    enc = _batch(processor, rows=2)
    out = _gen(model, enc, temperature=0.0, return_dict_in_generate=True, output_logits=True)
    plain = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, return_dict_in_generate=True,
                           output_logits=True)
    assert torch.equal(out.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(plain.logits))
    for kw, match in (({"output_scores": True}, "output_logits=True"), ({"do_sample": True}, "do_sample"),
                      ({"num_beams": 2}, "beam search"), ({"num_return_sequences": 2}, "repeat the input rows")):
        with pytest.raises(ValueError, match=match):
            _gen(model, enc, **kw)


def test_vlm_generate_with_images(tiny_models, tiny_images):
    from mstar_fast.data.records import Prompt
    from mstar_fast.models import encode_prompt

    model, processor = tiny_models("qwen2_vl")
    enc = {k: v for k, v in encode_prompt(processor, Prompt(id="v", question="What is shown?",
                                                            images=tiny_images[:1])).items()}
    plain = model.generate(**enc, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert torch.equal(_gen(model, enc, temperature=0.0), plain)
    s1, s2 = _gen(model, enc, seed=5), _gen(model, enc, seed=5)
    assert torch.equal(s1, s2)


def test_bad_parameters_fail_clearly(tiny_models):
    model, processor = tiny_models("llama")
    enc = _batch(processor, rows=2)
    with pytest.raises(ValueError, match="top_p must be in"):
        _gen(model, enc, top_p=[0.5, 0.0])
    with pytest.raises(ValueError, match="temperature must be a number"):
        SamplerLogitsProcessor(temperature="hot")
