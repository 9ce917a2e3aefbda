"""``mstar_fast.patch``: forward(labels=...) through the fused linear cross-entropy equals the model's own loss."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.patch import UnsupportedModelError, apply_fused_linear_cross_entropy, is_patched, unpatch

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(arch, model, processor, images):
    from mstar_fast.data.records import Prompt
    from mstar_fast.models import encode_prompt

    imgs = [] if arch == "llama" else images[:1]
    enc = encode_prompt(processor, Prompt(id="x", question="What is 2 + 2? Think step by step.", images=imgs))
    enc = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
    g = torch.Generator().manual_seed(0)
    V = model.get_output_embeddings().weight.shape[0]
    extra = torch.randint(0, V - 10, (1, 9), generator=g)
    enc["input_ids"] = torch.cat([enc["input_ids"], extra], 1)
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    for k in ("mm_token_type_ids", "token_type_ids"):
        if k in enc:
            enc[k] = torch.cat([enc[k], torch.zeros_like(extra)], 1)
    labels = enc["input_ids"].clone()
    labels[:, : labels.shape[1] - 9] = -100  # loss on the "response" only
    return enc, labels


def _loss_and_grads(model, enc, labels, **kw):
    model.zero_grad()
    out = model(**enc, labels=labels, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2_vl", "llava", "idefics3"])
def test_patched_loss_and_gradients_equal_unpatched(tiny_models, tiny_images, arch):
    model, processor = tiny_models(arch)
    model.train()
    enc, labels = _inputs(arch, model, processor, tiny_images)
    for kw in ({}, {"num_items_in_batch": torch.tensor(7)}):
        ref, ref_grads = _loss_and_grads(model, enc, labels, **kw)
        apply_fused_linear_cross_entropy(model)
        try:
            assert is_patched(model)
            out, grads = _loss_and_grads(model, enc, labels, **kw)
            assert out.logits is None  # no [T, V] logits were handed out
            torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
            assert grads.keys() == ref_grads.keys()
            for n in grads:
                torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)
            # without labels the forward is the original one (generation keeps working)
            with torch.no_grad():
                torch.testing.assert_close(model(**enc).logits, ref.logits)
        finally:
            unpatch(model)
        assert not is_patched(model) and "forward" not in vars(model)
    model.eval()


def test_tuple_output_shift_labels_and_double_patch(tiny_models):
    model, _ = tiny_models("llama")
    ids = torch.randint(0, 400, (2, 10), generator=torch.Generator().manual_seed(1))
    shift = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss
        apply_fused_linear_cross_entropy(model)
        try:
            with pytest.raises(ValueError, match="already patched"):
                apply_fused_linear_cross_entropy(model)
            torch.testing.assert_close(model(input_ids=ids, shift_labels=shift).loss, ref, atol=1e-6, rtol=1e-6)
            tup = model(input_ids=ids, labels=ids, return_dict=False)
            torch.testing.assert_close(tup[0], ref, atol=1e-6, rtol=1e-6)
        finally:
            unpatch(model)
    with pytest.raises(ValueError, match="not patched"):
        unpatch(model)


def test_refuses_soft_capped_or_scaled_logits():
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    cfg = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=8, final_logit_softcapping=30.0)
    with pytest.raises(UnsupportedModelError, match="final_logit_softcapping=30.0"):
        apply_fused_linear_cross_entropy(Gemma2ForCausalLM(cfg))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    llama.config.logit_scale = 0.5
    with pytest.raises(UnsupportedModelError, match="logit_scale=0.5"):
        apply_fused_linear_cross_entropy(llama)
