"""Worker of test_distributed.py: the same script runs as one plain process or under
``python -m torch.distributed.run --nproc_per_node=2`` (gloo on CPU).

For each requested parallel mode it trains a tiny Llama for a few steps (the last global batch has one
example, so one rank runs a zero-weight dummy micro-batch), checkpoints, trains one more step, then
resumes a fresh engine from the checkpoint and trains the same step again. Rank 0 writes
``<out>/<parallel>.json`` (losses, helper results) and ``<out>/<parallel>.safetensors`` (final weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def run(model_dir: str, out: Path, parallel: str) -> None:
    from safetensors.torch import save_file

    from mstar_fast.train import SFTCollator, SFTConfig, SFTEngine, distributed as D, load_checkpoint, save_checkpoint
    from tests.train.conftest import load, qa_pairs

    model, proc = load(model_dir)
    col = SFTCollator(proc)
    data = [col.encode(*pair) for pair in qa_pairs(13, seed=3)]  # batches of 6: 6, 6, 1
    more = [col.encode(*pair) for pair in qa_pairs(6, seed=4)]
    cfg = SFTConfig(lr=1e-3, warmup_steps=1, global_batch_size=6, micro_batch_size=2, max_grad_norm=1.0,
                    weight_decay=0.01, parallel=parallel, shuffle=True, seed=7)
    engine = SFTEngine(model, cfg)
    report = engine.train_on(data, steps=3)
    ckpt = out / f"ckpt-{parallel}"
    save_checkpoint(engine, ckpt, extra={"parallel": parallel})
    after = engine.train_on(more, steps=1)

    fresh_model, _ = load(model_dir)
    fresh = SFTEngine(fresh_model, cfg)
    extra = load_checkpoint(fresh, ckpt)
    again = fresh.train_on(more, steps=1)

    shard = D.shard_list(list(range(7)))
    gathered = D.gather_to_rank0([x * 10 for x in shard])
    everyone = D.all_gather_list([D.get_rank()])
    sd = D.full_model_state_dict(engine.loss_module)
    if D.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        save_file({k.removeprefix("model."): v.contiguous() for k, v in sd.items()}, str(out / f"{parallel}.safetensors"))
        (out / f"{parallel}.json").write_text(json.dumps({
            "losses": report.losses, "after": after.losses, "again": again.losses, "extra": extra,
            "resolved": engine.parallel, "world": D.get_world_size(), "gathered": gathered, "everyone": everyone,
            "examples": report.examples, "has_sharded": (ckpt / "sharded").is_dir(),
            "has_model": (ckpt / "model").is_dir(),
        }))
    D.barrier()


def main(model_dir: str, out: str, modes: str) -> None:
    torch.set_num_threads(1)
    from mstar_fast.train import destroy_distributed, init_distributed

    info = init_distributed()
    assert info.device.type == "cpu"
    for parallel in modes.split(","):
        run(model_dir, Path(out), parallel)
    destroy_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:4])
