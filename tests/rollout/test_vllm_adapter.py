"""The vLLM adapter's mapping onto vLLM's API (``LLM.generate`` + ``SamplingParams``), against a stand-in
module, so it runs where vllm is absent. The real vLLM runs in ``test_vllm_engine.py`` (CI's vLLM step)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
from PIL import Image

from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import load_policy
from mstar_fast.rollout import RolloutEngine, sample_seed

SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF


@pytest.mark.skipif("vllm" in sys.modules or importlib.util.find_spec("vllm") is not None, reason="vllm installed")
def test_vllm_missing_gives_clear_error():
    with pytest.raises(ImportError, match="pip install vllm"):
        RolloutEngine("some/model", None, backend="vllm")


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module recording its calls; sample k of a request returns tokens [5, k, eos]."""
    calls: dict = {"generate": []}

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, model, **kw):
            calls["init"] = (model, kw)
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=64, model=model))

        def generate(self, requests, params, use_tqdm=True):
            calls["generate"].append((requests, params))
            done = types.SimpleNamespace
            outs = []
            for r, sp in zip(requests, params):
                toks = [5, 6 if sp.seed is None else sp.seed % 7, 2][:sp.max_tokens]
                lps = None if sp.logprobs is None else [{t: done(logprob=-0.5)} for t in toks]
                outs.append(done(prompt_token_ids=r.get("prompt_token_ids", [1, 2]), outputs=[
                    done(index=0, text="ignored", token_ids=toks, logprobs=lps,
                         finish_reason="stop" if len(toks) == 3 else "length", stop_reason=None)]))
            return outs

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    return calls


def test_vllm_adapter_maps_the_api(fake_vllm, tmp_path):
    """One n=1 request per sample with its own seed; a greedy prompt is one request repeated n times (vLLM
    rejects n > 1 with greedy sampling); text prompts go as the built-in engine's token ids, image prompts
    as text + multi_modal_data; per-prompt parameters reach each request."""
    _, processor = load_policy(make_tiny_vlm("llava", tmp_path / "llava", vocab_size=512, hidden_size=32,
                                             image_size=32, num_layers=1))
    img = tmp_path / "img.png"
    Image.fromarray(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).save(img)
    eng = RolloutEngine("/models/x", processor, backend="vllm", vllm_kwargs={"dtype": "bfloat16"})
    eng.eos_ids = [2]
    assert fake_vllm["init"] == ("/models/x", {"dtype": "bfloat16", "logprobs_mode": "processed_logprobs"})
    prompts = [Prompt(id="p0", question="What?", images=[str(img)]), Prompt(id="text", question="Say something."),
               Prompt(id="bad", question="q", images=[str(tmp_path / "missing.png")])]
    out = eng.generate(prompts, n=2, temperature=[0.0, 0.7, 1.0], top_k=[0, 3, 0], stop="##", max_new_tokens=7,
                       seed=1)
    (requests, params), = fake_vllm["generate"]
    assert len(requests) == 3 and "multi_modal_data" in requests[0] and requests[0]["prompt"].startswith("USER: <image>")
    assert requests[1] == requests[2] and isinstance(requests[1]["prompt_token_ids"][0], int)
    seeds = [sample_seed(1, "text", k) for k in range(2)]
    assert [(p.n, p.temperature, p.top_k, p.seed, p.max_tokens, p.stop, p.logprobs) for p in params] == [
        (1, 0.0, 0, None, 7, ["##"], 0), (1, 0.7, 3, seeds[0] & SEED_MASK, 7, ["##"], None),
        (1, 0.7, 3, seeds[1] & SEED_MASK, 7, ["##"], None)]
    assert [(s.prompt_id, s.index, s.finish_reason, s.seed) for s in out[:4]] == [
        ("p0", 0, "stop", sample_seed(1, "p0", 0)), ("p0", 1, "stop", sample_seed(1, "p0", 1)),
        ("text", 0, "stop", seeds[0]), ("text", 1, "stop", seeds[1])]
    assert out[0].token_ids == out[1].token_ids == [5, 6, 2] and out[0].token_logprobs == [-0.5] * 3
    assert out[2].token_ids == [5, (seeds[0] & SEED_MASK) % 7, 2] and out[2].token_logprobs is None
    assert out[0].text == processor.tokenizer.decode([5, 6], skip_special_tokens=True)
    assert [s.finish_reason for s in out[4:]] == ["error", "error"] and "cannot open image" in out[4].meta["error"]


def test_vllm_adapter_prompt_longer_than_the_context(fake_vllm, tmp_path):
    tok_dir = make_tiny_vlm("llama", tmp_path / "llama", vocab_size=512, hidden_size=32, num_layers=1)
    _, tok = load_policy(tok_dir)
    eng = RolloutEngine("/models/x", tok, backend="vllm")
    out = eng.generate([Prompt(id="long", question="word " * 80), Prompt(id="ok", question="hi")], n=1,
                       max_new_tokens=100)
    assert out[0].finish_reason == "error" and "context is 64" in out[0].meta["error"]
    (requests, params), = fake_vllm["generate"]
    assert len(requests) == 1 and params[0].max_tokens == 64 - len(requests[0]["prompt_token_ids"])
    with pytest.raises(ValueError, match="not a model object"):
        eng.update_weights()
