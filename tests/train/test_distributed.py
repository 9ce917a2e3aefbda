"""torchrun on CPU (gloo, 2 processes): DDP and FSDP2 training give the 1-process losses and weights for
the same global batch; sharded checkpoints resume exactly; the list helpers shard and gather in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mstar_fast.train import distributed as D
from tests.train import _dist_worker

REPO = Path(__file__).resolve().parents[2]


def test_single_process_helpers():
    assert not D.is_distributed() and D.get_rank() == 0 and D.get_world_size() == 1
    assert D.shard_list([1, 2, 3]) == [1, 2, 3]
    assert D.gather_to_rank0([4, 5]) == [4, 5]
    assert [D.shard_list(list(range(7)), r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [D.shard_list([1], r, 2) for r in range(2)] == [[1], []]
    with pytest.raises(ValueError, match="rank"):
        D.shard_list([1], 2, 2)
    assert D.resolve_parallel("auto", torch.device("cpu")) == "none"
    with pytest.raises(ValueError, match="parallel"):
        D.resolve_parallel("zero3", torch.device("cpu"))


def test_torchrun_two_processes_match_one(tiny_dirs, tmp_path):
    model_dir = tiny_dirs("llama")
    one = tmp_path / "one"
    _dist_worker.run(str(model_dir), one, "none")  # the 1-process reference, in this process

    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.train._dist_worker", str(model_dir), str(two), "ddp,fsdp"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun timed out: {(exc.stderr or b'')[-3000:]!r}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]

    ref = json.loads((one / "none.json").read_text())
    ref_w = load_file(str(one / "none.safetensors"))
    assert ref["world"] == 1 and ref["examples"] == 13
    for parallel in ("ddp", "fsdp"):
        got = json.loads((two / f"{parallel}.json").read_text())
        assert got["world"] == 2 and got["resolved"] == parallel and got["examples"] == 13
        # Same global batches, same token-level normalisation: the losses agree up to float rounding.
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5), parallel
        assert got["after"] == pytest.approx(ref["after"], rel=1e-5), parallel
        # Resuming from the (sharded, for FSDP) checkpoint repeats the step exactly.
        assert got["again"] == got["after"], parallel
        assert got["extra"] == {"parallel": parallel}
        assert got["has_sharded"] == (parallel == "fsdp") and got["has_model"]
        w = load_file(str(two / f"{parallel}.safetensors"))
        assert set(w) == set(ref_w)
        for k, v in w.items():
            torch.testing.assert_close(v, ref_w[k], rtol=1e-4, atol=2e-5, msg=f"{parallel}: {k}")
        assert got["gathered"] == [x * 10 for x in range(7)]  # shard_list + gather_to_rank0 keep the order
        assert got["everyone"] == [0, 1]
