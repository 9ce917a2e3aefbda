"""Worker of test_fsdp.py: under ``torchrun --nproc_per_node=2`` (gloo, CPU) it trains a tiny VLM with
FSDP2, keeps a :class:`~mstar_fast.recipe.policy.RolloutPolicy` inference copy, and writes on rank 0
``<out>/result.json`` with whether the copy equals the gathered training weights (before and after a
training step), and each rank's greedy samples from the copy (every rank generated a different number of
prompts: no collective inside generation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    from mstar_fast.data.records import Prompt
    from mstar_fast.models import load_policy
    from mstar_fast.recipe.policy import RolloutPolicy
    from mstar_fast.rollout import RolloutEngine
    from mstar_fast.train import SFTCollator, SFTConfig, SFTEngine, destroy_distributed, init_distributed
    from mstar_fast.train import distributed as D
    from tests.train.conftest import qa_pairs

    init_distributed()
    model, proc = load_policy(model_dir)
    engine = SFTEngine(model, SFTConfig(lr=1e-2, warmup_steps=0, global_batch_size=4, micro_batch_size=2,
                                        parallel="fsdp", seed=3), collator=SFTCollator(proc))
    policy = RolloutPolicy.create(engine, lambda: load_policy(model_dir)[0], max_batch_tokens=4096)

    def same() -> bool:
        sd = D.full_model_state_dict(engine.loss_module)
        if sd is None:
            return True
        copy = policy.model.state_dict()
        return all(torch.equal(v, copy[k.removeprefix("model.")]) for k, v in sd.items())

    before = same()
    engine.train_on(qa_pairs(8, seed=1), steps=2)
    stale = same()
    policy.refresh()
    after = same()
    # Uneven shares: rank 0 generates 3 prompts, rank 1 one (no collective may run inside generation).
    prompts = [Prompt(id=f"p{i}", question=f"What is {i} + {i}?") for i in range(4)]
    mine = prompts[:3] if D.get_rank() == 0 else prompts[3:]
    rollout = RolloutEngine(policy.model, proc, progress=False)
    texts = [s.text for s in rollout.generate(mine, n=2, temperature=1.0, max_new_tokens=6, seed=5)]
    texts = D.gather_to_rank0(texts)
    if D.is_main_process():
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(json.dumps({
            "is_copy": policy.is_copy, "parallel": engine.parallel, "same_at_start": before,
            "same_before_refresh": stale, "same_after_refresh": after, "texts": texts}))
    D.barrier()
    destroy_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:])
