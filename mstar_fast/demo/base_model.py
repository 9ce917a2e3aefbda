"""The demo's base policy (``model.policy: tiny``): a tiny random VLM made a weak base model by a short SFT on
the gold reasoning of some train prompts, standing in for a pre-trained VLM. The recipe reaches it through
:data:`mstar_fast.constants.BASE_POLICIES`."""

from __future__ import annotations

import time

from mstar_fast.config import RunConfig
from mstar_fast.data.records import Sample
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.errors import UserError
from mstar_fast.recipe.context import RunContext
from mstar_fast.recipe.prompts import RunData
from mstar_fast.recipe.warmup import hinted_prompt

__all__ = ["prepare_base"]


def _spread(i: int, k: int, n: int) -> bool:
    """True for k of the indices 0..n-1, spread evenly (i*k // n changes at exactly k of them)."""
    return k > 0 and (i * k) // n != ((i + 1) * k) // n


def prepare_base(cfg: RunConfig, ctx: RunContext, data: RunData) -> str:
    """Build ``RUN_DIR/base`` (skipped when complete) and return its path: the tiny VLM of ``model.tiny``,
    fine-tuned for ``model.tiny.base_steps`` steps on the gold reasoning (``meta["cot"]``) of the first
    ``model.tiny.base_prompts`` train prompts.

    Raises:
        UserError: no train prompt has gold reasoning (the synthetic task has it).
    """
    run = ctx.run
    base = run.path / "base"
    if run.model_complete("base"):
        return str(base)
    t = cfg.model.tiny
    init = run.path / "base-init"
    t_build = time.perf_counter()
    if ctx.world.is_main:
        # The tokenizer learns merges from the task's own texts, so responses take fewer tokens.
        corpus = [p.meta.get("cot", "") for p in data.train[:400]] + [p.question for p in data.train[:400]]
        make_tiny_vlm(t.arch, init, vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_layers=t.num_layers,
                      num_heads=t.num_heads, image_size=t.image_size, patch_size=t.patch_size,
                      vision_layers=t.vision_layers, seed=t.seed, tokenizer_corpus=corpus,
                      max_position_embeddings=512)
    ctx.world.barrier()
    t0 = time.perf_counter()
    model, processor = ctx.models.load(init)
    gold = [p for p in sorted(data.train, key=lambda p: p.id)[: t.base_prompts] if p.meta.get("cot")]
    if not gold:
        raise UserError("model.policy: tiny needs train prompts with gold reasoning (meta['cot']); the synthetic "
                        "task has it")
    # A base_hint_fraction share of the gold examples (spread evenly) carries the warm-up hint in its question, so
    # the base model, like a pre-trained VLM, can make use of an answer it is given during the warm-up.
    n_hint = round(t.base_hint_fraction * len(gold))
    pairs = [(hinted_prompt(p, cfg.warmup.hint) if _spread(i, n_hint, len(gold)) else p,
              Sample(prompt_id=p.id, index=0, text=p.meta["cot"])) for i, p in enumerate(gold)]
    trainer = ctx.models.trainer(model, processor, mode="continuous", lr=t.base_lr,
                                 global_batch_size=t.base_batch_size, lr_schedule="constant",
                                 warmup_steps=min(10, t.base_steps // 4), total_steps=None, log_every=0)
    close, on_step = ctx.console.train_bar(t.base_steps, "base model SFT")
    rep = trainer.train_on(pairs, steps=t.base_steps, on_step=on_step)
    close()
    run.save_model(model, init, "base")
    run.write_stage("base", {"steps": rep.steps, "loss": rep.mean_loss, "prompts": len(gold),
                             "seconds": time.perf_counter() - t0, "seconds_build": t0 - t_build})
    ctx.console.say(f"base model: {rep.steps} SFT steps on the gold reasoning of {len(gold)} prompts, "
                    f"loss {rep.mean_loss:.3f}")
    ctx.world.barrier()
    return str(base)
