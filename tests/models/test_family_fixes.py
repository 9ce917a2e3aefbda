"""Per-family fixes (mstar_fast.models.families), each checked against the model's own forward / loss /
generate on a tiny random model built offline from a shrunken config:

* logit transforms (Granite divides, Cohere2 multiplies, Gemma 2 soft-caps; Aya Vision ignores its text
  config's ``logit_scale``): PRM step scores == the model's softmax over the two reward logits, the SFT
  loss == the model's own loss;
* PaliGemma: no processor `labels` in the prefill, response token types 1, 1-indexed positions, its own
  prompt end; Mllama: the 4-D cross-attention mask continued over the response (SFT collator, PRM);
* hybrid caches (Qwen3.5, LFM2-VL): no prefix sharing, decided at construction;
* refusals name the family and the reason.
"""

from __future__ import annotations

import pytest
import torch

from mstar_fast.data import Prompt
from mstar_fast.models.families import UnsupportedFamilyError, family_capabilities
from mstar_fast.prm import PRMScorer
from mstar_fast.prm.testing import tiny_image, tiny_tokenizer
from mstar_fast.train.data import IGNORE_INDEX
from mstar_fast.train.engine import CausalLMLoss

transformers = pytest.importorskip("transformers")
# PaliGemma's processor builds its BC `labels` with np.array(copy=False) on a list: numpy 2 warns, harmless.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RESPONSES = [
    "First add the tens: 10 + 30 = 40.\n\nThen add the ones: 40 + 2 = 42.\n\n# Answer\n\n42",
    "x = 5",
    "Read the bar chart.\n\nThe tallest bar is B with value 7.\n\nSo B.",
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _small(tok, **kw):
    base = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 512,
            "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": None,
            "tie_word_embeddings": False,
            # A larger init than the default 0.02: sharper attention and logits, so that a wrong mask,
            # position or logit transform shows far above rounding.
            "initializer_range": 0.2}
    base.update(kw)
    return base


def _text_model(family: str, tok):
    """A tiny random causal LM of ``family`` (fp32, eval) with a non-neutral logit transform."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"granite": {"logits_scaling": 3.7}, "cohere2": {"logit_scale": 0.37, "layer_types":
                                                                ["full_attention", "full_attention"]},
             "gemma2": {"final_logit_softcapping": 1.5, "attn_logit_softcapping": None, "query_pre_attn_scalar": 8,
                        "hidden_activation": "gelu_pytorch_tanh"}}[family]
    cfg = AutoConfig.for_model(family, **_small(tok, **extra))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()


def _model_step_scores(model, scorer: PRMScorer, prompt: Prompt, responses: list[str]) -> list[list[float]]:
    """The model's own logits (its whole forward, head transform included) on prompt + tagged response."""
    good, bad = scorer.reward_token_ids
    prefix = scorer.encode_prompt(prompt)
    P = prefix["input_ids"].shape[1]
    out = []
    for text in responses:
        ids, tags = scorer.encode_response(text)
        full = {k: v for k, v in prefix.items() if k != "attention_mask"}
        full["input_ids"] = torch.cat([prefix["input_ids"], torch.tensor([ids])], dim=1)
        for k, v in prefix.items():
            if k not in ("input_ids", "attention_mask") and v.dim() >= 2 and v.shape[:2] == prefix["input_ids"].shape:
                full[k] = _extend_like_generate(k, v, len(ids))
        with torch.no_grad():
            logits = model(**full).logits[0]
        probs = torch.softmax(logits[[P + t for t in tags]][:, [good, bad]].float(), dim=-1)[:, 0]
        out.append(probs.tolist())
    return out


def _extend_like_generate(name: str, v: torch.Tensor, n: int) -> torch.Tensor:
    """What each family's own ``generate`` appends for new tokens (written out here, independently of
    mstar_fast): PaliGemma token types 1, Mllama's mask its last row, else 0."""
    if name == "token_type_ids":
        tail = v.new_ones((v.shape[0], n, *v.shape[2:]))
    elif name == "cross_attention_mask":
        tail = v[:, -1:].expand(v.shape[0], n, *v.shape[2:])
    else:
        tail = v.new_zeros((v.shape[0], n, *v.shape[2:]))
    return torch.cat([v, tail], dim=1)


def _assert_scores(scorer: PRMScorer, model, prompt: Prompt, atol: float = 1e-5) -> None:
    want = _model_step_scores(model, scorer, prompt, RESPONSES)
    for share in (True, False):
        got = scorer.score(prompt, RESPONSES, share_prefix=share).step_scores
        assert [len(s) for s in got] == [len(s) for s in want]
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=atol, rtol=0)


def _loss_batch(tok, model, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tok), (2, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    labels[1, 10:] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _assert_loss_matches(model, batch: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    loss_module = CausalLMLoss(model)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    ours = loss_module(batch) / n
    with torch.no_grad():
        ref = model(**batch).loss
    torch.testing.assert_close(ours.detach().float(), ref.float(), atol=atol, rtol=0)
    ours.backward()  # the (possibly unfused) path is differentiable
    assert model.get_output_embeddings().weight.grad is not None


# ------------------------------------------------------------------------------------------ logit transforms
@pytest.mark.parametrize("family,scale,cap", [("granite", 1 / 3.7, None), ("cohere2", 0.37, None),
                                              ("gemma2", 1.0, 1.5)])
def test_logit_transforms_prm_and_loss_match_the_model(tok, family, scale, cap):
    model = _text_model(family, tok)
    caps = family_capabilities(model)
    assert caps.logit_scale == pytest.approx(scale) and caps.logit_softcap == cap
    scorer = PRMScorer(model, tok)
    _assert_scores(scorer, model, Prompt(id="p", question="What is 12 + 30?"))
    _assert_loss_matches(model, _loss_batch(tok, model))


def test_softcap_loss_gradients_match_the_model(tok):
    """The unfused soft-capped path gives the model's own gradients, chunked or not."""
    model = _text_model("gemma2", tok)
    batch = _loss_batch(tok, model, seed=1)
    n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model(**batch).loss.backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for chunk in (None, 3):
        model.zero_grad(set_to_none=True)
        (CausalLMLoss(model, chunk_size=chunk)(batch) / n).backward()
        for k, p in model.named_parameters():
            if k in want:
                torch.testing.assert_close(p.grad, want[k], atol=1e-5, rtol=1e-4)


def _aya_vision(tok):
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

    text = _small(tok, logit_scale=0.37, layer_types=["full_attention", "full_attention"])
    text["model_type"] = "cohere2"
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    cfg = AyaVisionConfig(vision_config=vision, text_config=text, downsample_factor=2, adapter_layer_norm_eps=1e-6,
                          image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    return AyaVisionForConditionalGeneration(cfg).float().eval()


def test_aya_vision_forward_ignores_logit_scale(tok):
    """Aya Vision's text config carries logit_scale but its forward does not apply it: neither do we."""
    model = _aya_vision(tok)
    assert model.config.get_text_config().logit_scale == 0.37
    caps = family_capabilities(model)
    assert caps.logit_scale == 1.0 and caps.logit_softcap is None
    _assert_scores(PRMScorer(model, tok), model, Prompt(id="p", question="What is 12 + 30?"))
    _assert_loss_matches(model, _loss_batch(tok, model))


def test_unknown_family_with_a_logit_attribute_is_refused(tok):
    """A family outside the table whose config sets a logit transform: we cannot know whether its forward
    applies it, so the engines refuse at construction, naming the family and the attribute."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**_small(tok))
    cfg.logits_scaling = 2.0
    model = LlamaForCausalLM(cfg).eval()
    for build in (lambda: PRMScorer(model, tok), lambda: CausalLMLoss(model)):
        with pytest.raises(UnsupportedFamilyError, match="'llama'.*logits_scaling=2.0"):
            build()


def test_llama4_is_refused_with_the_reason(tok):
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "intermediate_size_mlp": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "num_local_experts": 2, "pad_token_id": tok.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 28, "patch_size": 14, "vision_output_dim": 32, "projector_input_dim": 32,
              "projector_output_dim": 32}
    model = Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=vision)).eval()
    with pytest.raises(UnsupportedFamilyError, match="'llama4'.*transformers"):
        family_capabilities(model)
    with pytest.raises(UnsupportedFamilyError, match="llama4"):
        CausalLMLoss(model)


# ------------------------------------------------------------------------------------------ hybrid caches
def _hybrid(family: str, tok):
    """Qwen3.5 (gated-delta-net linear attention + full attention) or LFM2-VL (short-conv + attention)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    if family == "qwen3_5":
        text = _small(tok, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2,
                      linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                      linear_num_value_heads=2)
        vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    else:
        text = _small(tok, layer_types=["conv", "full_attention"], conv_L_cache=3, block_dim=32, block_ff_dim=64,
                      block_auto_adjust_ff_dim=False)
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "patch_size": 14}
    cfg = AutoConfig.for_model(family, text_config=text, vision_config=vision)
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(cfg).float().eval()


def _greedy_reference(model, processor, prompts, max_new_tokens: int) -> list[list[int]]:
    from mstar_fast.models.prompting import encode_prompt
    from mstar_fast.rollout import RolloutEngine

    eos = set(RolloutEngine(model, processor, use_prefix_sharing=False).eos_ids)
    out = []
    for p in prompts:
        enc = encode_prompt(processor, p)
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)[0, enc["input_ids"].shape[1]:]
        ref = ref.tolist()
        if any(t in eos for t in ref):
            ref = ref[: next(j for j, t in enumerate(ref) if t in eos) + 1]
        out.append(ref)
    return out


@pytest.mark.parametrize("family", ["qwen3_5", "lfm2_vl"])
def test_hybrid_cache_falls_back_at_construction(tok, family, caplog):
    """Linear-attention / conv cache layers cannot repeat rows: the rollout and the PRM notice at
    construction (no failing forward), log why, and their results equal generate / a full forward."""
    from mstar_fast.rollout import RolloutEngine

    model = _hybrid(family, tok)
    caps = family_capabilities(model)
    assert not caps.prefix_sharing and "layers" in caps.prefix_sharing_reason
    with caplog.at_level("INFO", logger="mstar_fast"):
        engine = RolloutEngine(model, tok)
        scorer = PRMScorer(model, tok)
    assert engine.prefix_sharing is False and scorer.share_prefix is False
    assert sum("without prefix sharing" in r.message for r in caplog.records) == 2
    prompts = [Prompt(id="a", question="What is 12 + 30?"), Prompt(id="b", question="Read the bar chart.")]
    out = engine.generate(prompts, n=2, temperature=0.0, max_new_tokens=6)
    ref = _greedy_reference(model, tok, prompts, 6)
    assert [s.token_ids for s in out] == [r for r in ref for _ in range(2)]
    _assert_scores(scorer, model, prompts[0])
    with pytest.raises(ValueError, match="use_prefix_sharing=True but"):
        RolloutEngine(model, tok, use_prefix_sharing=True)


# ------------------------------------------------------------------------------------------ PaliGemma
@pytest.fixture(scope="module")
def paligemma():
    """A tiny random PaliGemma (SigLIP + Gemma, prefix-LM token types) and its real processor."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
    )
    from transformers.models.siglip.image_processing_pil_siglip import (
        SiglipImageProcessorPil,
    )

    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<bos>"})
    tok.chat_template = None  # PaliGemma has none: its prompt is "<image>...<bos>question\n"
    image_processor = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    image_processor.image_seq_length = 4  # (28 / 14) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = _small(tok, vocab_size=len(tok), hidden_activation="gelu_pytorch_tanh")
    text["model_type"] = "gemma"
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "projection_dim": 32}
    cfg = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=processor.image_token_id,
                          projection_dim=32, hidden_size=32)
    torch.manual_seed(0)
    return PaliGemmaForConditionalGeneration(cfg).float().eval(), processor


def test_paligemma_prm_prompt_and_token_types(paligemma):
    """The processor's `labels` never reach the prefill; response tokens are causal (token type 1, as
    PaliGemma's generate makes them); the prompt ends in PaliGemma's own single "\\n"."""
    model, processor = paligemma
    scorer = PRMScorer(model, processor)
    prompt = Prompt(id="p", question="What is 12 + 30?", images=[tiny_image(0)])
    enc = scorer.encode_prompt(prompt)
    assert "labels" not in enc
    text = processor.tokenizer.decode(enc["input_ids"][0])
    assert text.endswith("What is 12 + 30?\n"), text
    _assert_scores(scorer, model, prompt)


def test_paligemma_response_tokens_do_not_see_the_future(paligemma):
    """Changing a late response token must not move the PRM's score of an earlier step."""
    model, processor = paligemma
    scorer = PRMScorer(model, processor)
    prompt = Prompt(id="p", question="What is 12 + 30?", images=[tiny_image(0)])
    a = scorer.score(prompt, ["1 + 1 = 2.\n\nSo 4.\n\nx"], share_prefix=False).step_scores[0]
    b = scorer.score(prompt, ["1 + 1 = 2.\n\nSo 7.\n\ny"], share_prefix=False).step_scores[0]
    assert a[0] == pytest.approx(b[0], abs=1e-6) and a[1] != pytest.approx(b[1], abs=1e-6)


def test_paligemma_sft_loss_equals_the_processors_suffix_loss(paligemma):
    """The SFT collator's batch == what PaliGemma's processor builds for fine-tuning (`suffix=`: token
    types 1 and labels on the suffix), and the engine's loss == the model's loss on it."""
    from mstar_fast.data import Sample
    from mstar_fast.train.data import SFTCollator

    model, processor = paligemma
    prompt = Prompt(id="p", question="What is 12 + 30?", images=[tiny_image(0)])
    response = "First add the tens: 10 + 30 = 40."
    collator = SFTCollator(processor, capabilities=family_capabilities(model, processor))
    batch = collator.collate([collator.encode(prompt, Sample(prompt_id="p", index=0, text=response))])
    ref = processor(text=["<image>What is 12 + 30?"], images=[tiny_image(0)], suffix=[response], return_tensors="pt")
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch["token_type_ids"].tolist() == ref["token_type_ids"].tolist()
    assert batch["labels"].tolist() == ref["labels"].tolist()
    _assert_loss_matches(model, batch)


# ------------------------------------------------------------------------------------------ Mllama
@pytest.fixture(scope="module")
def mllama():
    """A tiny random Mllama (Llama-3.2-Vision: cross-attention layers, 4-D cross_attention_mask)."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
    )
    from transformers.models.mllama.image_processing_pil_mllama import (
        MllamaImageProcessorPil,
    )

    tok = tiny_tokenizer()
    tok.add_special_tokens({"bos_token": "<bos>", "additional_special_tokens": ["<|image|>"]})
    tok.chat_template = None
    processor = MllamaProcessor(image_processor=MllamaImageProcessorPil(size={"height": 28, "width": 28},
                                                                         max_image_tiles=2), tokenizer=tok)
    text = _small(tok, vocab_size=len(tok), num_hidden_layers=3, cross_attention_layers=[1],
                  bos_token_id=tok.bos_token_id)
    for k in ("head_dim", "tie_word_embeddings"):
        text.pop(k)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "image_size": 28, "patch_size": 14, "max_num_tiles": 2,
              "intermediate_layers_indices": [0], "vision_output_dim": 64,
              "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]]}
    cfg = MllamaConfig(text_config=text, vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    torch.manual_seed(0)
    return MllamaForConditionalGeneration(cfg).float().eval(), processor


def test_mllama_prm_extends_the_cross_attention_mask(mllama):
    model, processor = mllama
    scorer = PRMScorer(model, processor)
    prompt = Prompt(id="p", question="What is 12 + 30?", images=[tiny_image(0)])
    assert scorer.encode_prompt(prompt)["cross_attention_mask"].dim() == 4
    _assert_scores(scorer, model, prompt)


def test_mllama_sft_collator_extends_the_cross_attention_mask(mllama):
    from mstar_fast.data import Sample
    from mstar_fast.models.prompting import encode_prompt
    from mstar_fast.train.data import SFTCollator

    model, processor = mllama
    collator = SFTCollator(processor, capabilities=family_capabilities(model, processor))
    pairs = [(Prompt(id=f"p{i}", question=q, images=[tiny_image(i, size=s)]),
              Sample(prompt_id=f"p{i}", index=0, text=r))
             for i, (q, s, r) in enumerate([("What is 12 + 30?", (40, 30), "10 + 30 = 40. So 42."),
                                            ("B?", (30, 60), "B")])]
    examples = [collator.encode(p, s) for p, s in pairs]
    batch = collator.collate(examples)
    for b, (p, _) in enumerate(pairs):
        mask = encode_prompt(processor, p)["cross_attention_mask"]
        n = len(examples[b])
        want = _extend_like_generate("cross_attention_mask", mask, n - mask.shape[1])[0]
        got = batch["cross_attention_mask"][b, :n, : want.shape[1], : want.shape[2]]
        assert got.tolist() == want.tolist()
        assert not batch["cross_attention_mask"][b, n:].any()  # padding rows attend to no image
    _assert_loss_matches(model, batch)


@pytest.mark.parametrize("family", ["mllama", "paligemma"])
def test_greedy_rollout_equals_generate(request, family):
    """Both cache layouts (shared prefix where the probe passes, padded) give generate's tokens."""
    from mstar_fast.models.prompting import encode_prompt
    from mstar_fast.rollout import RolloutEngine

    model, processor = request.getfixturevalue(family)
    prompts = [Prompt(id=f"p{i}", question=q, images=[tiny_image(i)]) for i, q in enumerate(["What is 2 + 3?", "B?"])]
    caps = family_capabilities(model, processor)
    for shared in (None, False):
        engine = RolloutEngine(model, processor, shared_prefix=shared)
        out = engine.generate(prompts, n=2, temperature=0.0, max_new_tokens=6)
        assert all(s.finish_reason != "error" for s in out), [s.meta for s in out]
        for i, p in enumerate(prompts):
            enc = encode_prompt(processor, p, processor_prompt_end=caps.processor_prompt_end)
            enc.pop("labels", None)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=6, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True)
            ref = gen.sequences[0, enc["input_ids"].shape[1]:].tolist()
            eos = set(engine.eos_ids)
            if any(t in eos for t in ref):
                ref = ref[: next(j for j, t in enumerate(ref) if t in eos) + 1]
            assert out[2 * i].token_ids == ref and out[2 * i + 1].token_ids == ref, (shared, p.id)
            # The logprobs too: a wrong position id or mask moves them long before it flips a greedy token.
            ref_lp = [float(torch.log_softmax(lg[0].float(), -1)[t]) for lg, t in zip(gen.logits, ref)]
            torch.testing.assert_close(torch.tensor(out[2 * i].token_logprobs), torch.tensor(ref_lp), atol=2e-6,
                                       rtol=0)


# ------------------------------------------------------------------------------------------ SmolVLM
@pytest.fixture
def smolvlm_dir(tmp_path, monkeypatch):
    """A tiny SmolVLM saved the way the hub ships it (processor_config naming SmolVLMProcessor, whose video
    processor needs torchvision), from the Idefics3 tiny model (SmolVLM's architecture is Idefics3's)."""
    import json

    from transformers.models.smolvlm import processing_smolvlm

    from mstar_fast.demo.tiny import make_tiny_vlm

    if processing_smolvlm.num2words is None:
        # SmolVLMProcessor refuses to build without `num2words`, which it only uses to spell a video's frame
        # count; image prompts never reach it, so a stand-in keeps this test running where it is missing.
        monkeypatch.setattr(processing_smolvlm, "num2words", str)
    out = make_tiny_vlm("idefics3", tmp_path / "smolvlm", vocab_size=300, hidden_size=32, image_size=32)
    for name, edit in (("config.json", {"model_type": "smolvlm", "architectures": ["SmolVLMForConditionalGeneration"]}),
                       ("processor_config.json", {"processor_class": "SmolVLMProcessor"})):
        cfg = json.loads((out / name).read_text())
        cfg.update(edit)
        if name == "processor_config.json":
            cfg["image_processor"]["image_processor_type"] = "SmolVLMImageProcessor"
        else:
            cfg["vision_config"]["model_type"] = "smolvlm_vision"
        (out / name).write_text(json.dumps(cfg))
    return out


def test_smolvlm_without_video_processor_applies_its_chat_template(smolvlm_dir):
    from transformers import AutoModelForImageTextToText

    from mstar_fast.models.compat import build_processor_without_video
    from mstar_fast.models.prompting import encode_prompt
    from mstar_fast.rollout import RolloutEngine

    processor = build_processor_without_video(smolvlm_dir)
    assert type(processor).__name__ == "SmolVLMProcessor" and processor.video_processor is None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2 + 3?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "User:<image>What is 2 + 3?<end_of_utterance>\nAssistant:"
    with pytest.raises(ValueError, match="without its video processor"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}], tokenize=False)
    # End to end: the model loads as SmolVLM and the rollout equals its generate.
    model = AutoModelForImageTextToText.from_pretrained(smolvlm_dir).eval()
    assert type(model).__name__ == "SmolVLMForConditionalGeneration"
    prompt = Prompt(id="a", question="What is 2 + 3?", images=[tiny_image(0)])
    out = RolloutEngine(model, processor).generate([prompt], n=1, temperature=0.0, max_new_tokens=5)
    assert out[0].finish_reason != "error", out[0].meta
    enc = encode_prompt(processor, prompt)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=5, do_sample=False)[0, enc["input_ids"].shape[1]:].tolist()
    assert out[0].token_ids == ref[: len(out[0].token_ids)] and len(out[0].token_ids) >= 1


# ------------------------------------------------------------------------------------------ dtypes
class _Bf16PixelProcessor:
    """A LLaVA processor that returns bf16 ``pixel_values``, as Llama 4's processor does."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, *args, **kwargs):
        out = self._inner(*args, **kwargs)
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(torch.bfloat16)
        return out


def test_floating_inputs_reach_the_model_in_its_dtype():
    """PRMScorer, the SFT loss and the rollout all cast processor floats to the weights' dtype (one helper),
    so a processor returning bf16 pixels for an fp32 model gives the same results as fp32 pixels."""
    from mstar_fast.data import Sample
    from mstar_fast.prm.testing import tiny_llava_prm
    from mstar_fast.rollout import RolloutEngine
    from mstar_fast.train.data import SFTCollator

    model, processor = tiny_llava_prm(seed=0)
    bf16 = _Bf16PixelProcessor(processor)
    seen: list[torch.dtype] = []
    hook = model.model.vision_tower.register_forward_pre_hook(lambda m, args, kw: seen.append(
        (kw.get("pixel_values") if "pixel_values" in kw else args[0]).dtype), with_kwargs=True)
    prompt = Prompt(id="p", question="What is 12 + 30?", images=[tiny_image(0)])
    try:
        scores = PRMScorer(model, bf16).score(prompt, RESPONSES).step_scores
        collator = SFTCollator(bf16)
        batch = collator.collate([collator.encode(prompt, Sample(prompt_id="p", index=0, text="10 + 30 = 40."))])
        assert batch["pixel_values"].dtype == torch.bfloat16  # the processor's dtype, as collated
        CausalLMLoss(model)(batch)
        RolloutEngine(model, bf16).generate([prompt], n=1, temperature=0.0, max_new_tokens=2)
    finally:
        hook.remove()
    assert seen and all(d == torch.float32 for d in seen), seen
    # Same numbers as the pixels rounded to bf16 and given to the model in fp32.
    want = _model_step_scores(model, PRMScorer(model, processor), prompt, RESPONSES)
    rounded = [[pytest.approx(x, abs=5e-3) for x in s] for s in want]
    assert scores == rounded


def test_llava_around_a_granite_text_config_ignores_its_logits_scaling(tok):
    """Granite Vision's layout: LLaVA(-NeXT) around a Granite text config; LLaVA's forward calls the bare
    Granite backbone and its own lm_head, so `logits_scaling` is never applied, and neither do we."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = _small(tok, logits_scaling=3.7)
    text["model_type"] = "granite"
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    cfg = LlavaConfig(text_config=text, vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).float().eval()
    assert family_capabilities(model).logit_scale == 1.0
    _assert_scores(PRMScorer(model, tok), model, Prompt(id="p", question="What is 12 + 30?"))
    _assert_loss_matches(model, _loss_batch(tok, model))


def test_logit_table_covers_every_transforming_forward_of_the_installed_transformers():
    """Every causal-LM / image-text-to-text class of the installed transformers whose forward transforms
    its logits after the head (`logits * ...`, `logits / ...`, `tanh(logits ...)`) is in the table (or
    refused), and every table entry that transforms names a forward that does: a new transformers release
    with a new such family fails here instead of being silently wrong."""
    import pathlib
    import re

    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    from mstar_fast.models import families

    root = pathlib.Path(transformers.__file__).parent / "models"
    pattern = re.compile(r"logits\s*=\s*logits\s*[*/]|tanh\(logits|lm_head\(hidden_states[^)]*\)\s*\*|"
                         r"hidden_states\s*=\s*hidden_states\s*/\s*self\.config\.logits_scaling|logit_softcap\(logits")
    transforms: dict[str, bool] = {}
    for model_type, cls in {**MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, **MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES}.items():
        cls = cls[0] if isinstance(cls, (list, tuple)) else cls
        module = model_type_to_module_name(model_type)
        path = root / module / f"modeling_{module}.py"
        src = path.read_text() if path.is_file() else ""
        body = re.search(rf"\nclass {cls}\(.*?(?=\nclass |\Z)", src, re.DOTALL)
        if body is None:  # an alias of another family's class (shieldgemma2 -> Gemma3): read under its own name
            continue
        forward = body.group(0)[body.group(0).find("def forward"):]
        transforms[model_type] = bool(pattern.search(forward))
    assert len(transforms) > 100  # the scan read the installed sources
    missing = sorted(t for t, hit in transforms.items() if hit and t not in families._LOGITS and t not in families._REFUSED)
    assert not missing, f"families whose forward transforms the logits but are not in the table: {missing}"
    stale = sorted(t for t, (scale, cap) in families._LOGITS.items()
                   if (scale is not families._NONE or cap is not families._NONE) and t in transforms and not transforms[t])
    assert not stale, f"table entries whose forward applies no transform: {stale}"
