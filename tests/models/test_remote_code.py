"""``trust_remote_code`` models offline: a model directory whose ``config.json`` has an ``auto_map`` and whose
modeling code is a Python file beside the weights (the layout of MiniCPM-V, Phi-3.5-Vision and InternVL2),
written here, loaded with ``load_policy(..., trust_remote_code=True)``.

Two kinds of remote code, and the path the rollout engine takes for each:

* code built on transformers' own layers, whose ``forward`` takes a transformers cache
  (``past_key_values``): the engine prefills once per prompt and shares the prefix across the samples;
* legacy code whose ``forward`` takes no cache argument (it recomputes the whole sequence every step): the
  engine falls back to the model's own ``generate`` (one call per prompt).

Either way greedy samples equal ``model.generate`` token for token.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from mstar_fast.data.records import Prompt
from mstar_fast.models import encode_prompt, load_policy
from mstar_fast.rollout import RolloutEngine
from tests.models._family_configs import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

# Remote code on transformers' Llama layers: its forward takes past_key_values (a transformers Cache).
CACHED_CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote_cached"


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''

# Legacy remote code: a small causal transformer of its own whose forward has no cache argument.
LEGACY_CODE = '''
import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class TinyLegacyConfig(PretrainedConfig):
    model_type = "tiny_remote_legacy"

    def __init__(self, vocab_size=400, hidden_size=32, num_heads=4, num_layers=2, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_heads, self.num_layers = num_heads, num_layers
        super().__init__(**kwargs)


class TinyLegacyForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyLegacyConfig
    base_model_prefix = "body"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos = nn.Embedding(512, config.hidden_size)
        layer = nn.TransformerEncoderLayer(config.hidden_size, config.num_heads, 2 * config.hidden_size,
                                           dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, **kwargs):
        L = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos(torch.arange(L, device=input_ids.device))
        causal = torch.triu(torch.full((L, L), float("-inf"), device=x.device), 1)
        pad = None if attention_mask is None else attention_mask == 0
        h = self.body(x, mask=causal, src_key_padding_mask=pad)
        return CausalLMOutput(logits=self.lm_head(h))

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        # No cache: every step sees the whole sequence.
        return {"input_ids": input_ids, "attention_mask": attention_mask}
'''

KINDS = {
    "cached": ("modeling_tiny_remote.py", CACHED_CODE, "TinyRemoteConfig", "TinyRemoteForCausalLM",
               "tiny_remote_cached"),
    "legacy": ("modeling_tiny_remote.py", LEGACY_CODE, "TinyLegacyConfig", "TinyLegacyForCausalLM",
               "tiny_remote_legacy"),
}


def write_remote_model(root, kind: str):
    """A remote-code model directory: config.json (with auto_map), the modeling file, random weights,
    tokenizer with chat template and generation config. Returns its path."""
    fname, code, cfg_cls, model_cls, model_type = KINDS[kind]
    out = root / kind
    out.mkdir()
    (out / fname).write_text(textwrap.dedent(code))
    tok = tiny_tokenizer()
    module = fname.removesuffix(".py")
    sizes = (dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
             if kind == "cached" else dict(vocab_size=len(tok), hidden_size=32, num_heads=4, num_layers=2))
    config = dict(model_type=model_type, architectures=[model_cls], pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False,
                  auto_map={"AutoConfig": f"{module}.{cfg_cls}", "AutoModelForCausalLM": f"{module}.{model_cls}"},
                  **sizes)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = [tok.eos_token_id], tok.pad_token_id, None
    gen.do_sample = False
    if kind == "legacy":
        gen.use_cache = False
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def remote_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    return {k: write_remote_model(root, k) for k in KINDS}


PROMPTS = [Prompt(id=f"r{i}", question="What is 3 + 4?" + " Think." * i) for i in range(3)]


@pytest.mark.parametrize("kind,path", [("cached", "shared prefix"), ("legacy", "own generate")])
def test_remote_code_path_and_exact(remote_dirs, kind, path):
    model, processor = load_policy(remote_dirs[kind], trust_remote_code=True)
    # The class really came from the directory's modeling file, not from transformers.
    assert type(model).__module__.endswith("modeling_tiny_remote") and "transformers_modules" in type(model).__module__
    assert type(model).__name__ == KINDS[kind][3]
    engine = RolloutEngine(model, processor)
    out = engine.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=8)
    taken = ("shared prefix" if engine.shared_prefix else "padded") if engine.prefix_sharing else "own generate"
    assert taken == path
    for i, p in enumerate(PROMPTS):
        enc = encode_prompt(processor, p)
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
        if processor.eos_token_id in ref:
            ref = ref[: ref.index(processor.eos_token_id) + 1]
        assert out[2 * i].token_ids == ref and out[2 * i + 1].token_ids == ref, (kind, p.id)
    # Sampling works on both paths too (and differs between samples at a high temperature).
    hot = engine.generate(PROMPTS[:1], n=4, temperature=1.5, max_new_tokens=8, seed=1)
    assert len({tuple(s.token_ids) for s in hot}) > 1


def test_remote_code_needs_trust(remote_dirs):
    """Without trust_remote_code the directory is refused by transformers (never silently run as another class)."""
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_policy(remote_dirs["cached"])
