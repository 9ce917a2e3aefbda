"""Subprocess of test_checkpoint.py: trains like the uninterrupted run, checkpoints in the middle of the
second train_on call, then kills itself with SIGKILL (no cleanup of any kind runs)."""

from __future__ import annotations

import os
import signal
import sys

import torch


def main(model_dir: str, ckpt: str, kill_at: int) -> None:
    torch.set_num_threads(1)
    from mstar_fast.train import save_checkpoint
    from tests.train.test_checkpoint import build_run

    engine, data_a, data_b = build_run(model_dir)
    engine.train_on(data_a, steps=3)

    def on_step(eng, info):
        if info.call_step == kill_at:
            save_checkpoint(eng, ckpt, extra={"cursor": 5, "temperature": 0.7})
            os.kill(os.getpid(), signal.SIGKILL)

    engine.train_on(data_b, steps=4, on_step=on_step)
    raise SystemExit("not reached: the process kills itself at the checkpoint")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
