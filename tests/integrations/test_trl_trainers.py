"""The adapters inside TRL's real trainers (skipped when TRL is not installed): GRPOTrainer on a tiny
Qwen2-VL with image prompts, rewarded by a (LLaVA) PRM, with TRL's own generation and with the package's
``rollout_func``; SFTTrainer with the fused-loss patch against the same trainer without it."""

from __future__ import annotations

import os

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install mstar_fast[trl])")

from mstar_fast.integrations.trl import outcome_reward, prm_reward, rollout_func, use_model_loss  # noqa: E402
from mstar_fast.patch import apply_fused_linear_cross_entropy, is_patched  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def scorer():
    from mstar_fast.prm import PRMScorer
    from mstar_fast.prm.testing import tiny_llava_prm

    model, processor = tiny_llava_prm(seed=0)
    return PRMScorer(model, processor)


def _image_dataset(images):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + 2?"}] for i in range(4)],
                              "image": [images[i] for i in range(4)], "answer": [str(i + 2) for i in range(4)]})


def _grpo(model, processor, dataset, reward_funcs, tmp_path, **kw):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, report_to=[], logging_steps=1, save_strategy="no",
                      learning_rate=1e-3, seed=0, dataloader_num_workers=0, disable_tqdm=True, bf16=False)
    return GRPOTrainer(model=model, processing_class=processor, args=args, train_dataset=dataset,
                       reward_funcs=reward_funcs, **kw)


def _fresh_qwen2_vl(tiny_models):
    import copy

    model, processor = tiny_models("qwen2_vl")
    return copy.deepcopy(model), processor


@pytest.mark.parametrize("with_rollout_func", [False, True], ids=["trl_generate", "rollout_func"])
def test_grpo_two_steps_with_prm_reward_on_image_prompts(tiny_models, tiny_images, scorer, tmp_path,
                                                         with_rollout_func):
    from mstar_fast.rollout import RolloutEngine

    model, processor = _fresh_qwen2_vl(tiny_models)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scored = []

    class Spy:  # records what the PRM is asked, then scores for real
        step_separator, answer_marker, step_tag = scorer.step_separator, scorer.answer_marker, scorer.step_tag

        def score(self, prompt, texts):
            scored.append((prompt, list(texts)))
            return scorer.score(prompt, texts)

    rollouts = []
    extra = {}
    if with_rollout_func:
        inner = rollout_func(RolloutEngine(model, processor))

        def spy_rollout(prompts, trainer):
            out = inner(prompts, trainer)
            rollouts.append((len(prompts), out))
            return out

        extra["rollout_func"] = spy_rollout
    trainer = _grpo(model, processor, _image_dataset(tiny_images), [prm_reward(Spy()), outcome_reward()], tmp_path,
                    **extra)
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rewards/prm_reward/mean" in h]
    assert len(logs) == 2 and all(0.0 < h["rewards/prm_reward/mean"] < 1.0 for h in logs)
    assert all(h["rewards/outcome_reward/mean"] in (0.0, 0.25, 0.5, 0.75, 1.0) for h in logs)
    # each step: one prompt x 4 completions, scored with one PRM call on the prompt's image
    assert len(scored) == 2 and all(len(p.images) == 1 and len(t) == 4 for p, t in scored)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "two GRPO steps changed no parameter"
    if with_rollout_func:
        assert [n for n, _ in rollouts] == [4, 4]
        for _, out in rollouts:
            assert len(out["prompt_ids"]) == len(out["completion_ids"]) == len(out["logprobs"]) == 4
            assert all(len(c) == len(lp) and all(x <= 0 for x in lp)
                       for c, lp in zip(out["completion_ids"], out["logprobs"]))
            image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            assert all(ids.count(image_pad) > 0 for ids in out["prompt_ids"])  # image tokens are in the prompt


def test_rollout_func_refuses_a_foreign_model(tiny_models, tiny_images, scorer, tmp_path):
    from mstar_fast.rollout import RolloutEngine

    model, processor = _fresh_qwen2_vl(tiny_models)
    other, _ = tiny_models("qwen2_vl")
    trainer = _grpo(model, processor, _image_dataset(tiny_images), [outcome_reward()], tmp_path,
                    rollout_func=rollout_func(RolloutEngine(other, processor)))
    with pytest.raises(ValueError, match="not the trainer's model"):
        trainer.train()


def _sft_run(model, tokenizer, tmp_path, patched: bool):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if patched:
        apply_fused_linear_cross_entropy(model)
    rows = [{"prompt": f"What is {i} + {i}?", "completion": f" {i} + {i} = {2 * i}. # Answer {2 * i}"} for i in range(8)]
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, max_steps=3, max_length=64, optim="sgd", learning_rate=0.05,
                     report_to=[], bf16=False,  # fp32: the 1e-5 comparison is about the loss, not bf16 rounding
                     logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = use_model_loss(SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                        processing_class=tokenizer))
    losses = []
    inner = trainer.compute_loss

    def record(model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = inner(model, inputs, return_outputs, num_items_in_batch)
        losses.append(float(loss.detach()))
        return loss

    trainer.compute_loss = record
    logits_seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: logits_seen.append(o.shape[-1]))
    trainer.train()
    hook.remove()
    V = model.get_output_embeddings().weight.shape[0]
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}, V in logits_seen


def test_sft_trainer_with_the_patch_matches_without(tiny_models, tmp_path):
    import copy

    base, tokenizer = tiny_models("llama")
    ref_losses, ref_params, ref_logits = _sft_run(copy.deepcopy(base).train(), tokenizer, tmp_path / "ref", False)
    model = copy.deepcopy(base).train()
    losses, params, logits = _sft_run(model, tokenizer, tmp_path / "patched", True)
    assert is_patched(model)
    assert ref_logits and not logits  # the patched run never built [tokens, V] logits
    assert len(losses) == len(ref_losses) == 6  # 3 steps x 2 micro-batches
    assert losses == pytest.approx(ref_losses, abs=1e-5, rel=1e-5)
    for n, p in params.items():
        torch.testing.assert_close(p, ref_params[n], atol=1e-5, rtol=1e-5, msg=n)
    assert any(not torch.equal(p, base.state_dict()[n]) for n, p in params.items())
