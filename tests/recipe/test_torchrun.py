"""2-process ``torchrun`` smoke test on CPU (gloo): the whole recipe (quick budget) with sampling and PRM
scoring sharded over the ranks, training under DDP, one run directory written by rank 0."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from mstar_fast.demo.run import QUICK


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_available() -> str | None:
    try:
        import torch.distributed as dist
        import torch.distributed.run  # noqa: F401
    except ImportError as e:
        return f"torch.distributed.run is not importable: {e}"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with the gloo backend is not available"
    return None


def test_torchrun_two_processes(tmp_path):
    reason = _torchrun_available()
    if reason:
        pytest.skip(reason)
    run_dir = tmp_path / "ddp"
    config = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "demo.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "mstar_fast", "run", config, f"run_dir={run_dir}", *QUICK]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun run did not finish in 9 minutes")
    out = res.stdout + res.stderr
    if res.returncode != 0 and ("Address already in use" in out or "rendezvous" in out.lower()
                                and "error" in out.lower() and not (run_dir / "config.yaml").exists()):
        pytest.skip(f"torchrun could not start its processes here: {out[-500:]}")
    assert res.returncode == 0, out[-4000:]
    assert "2 process(es)" in res.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and rows[-1]["stage"] == "final"
    # Sampling was sharded and gathered: each iteration file holds every (prompt, index) exactly once.
    for name in ("iter-001.jsonl", "iter-002.jsonl", "warmup.jsonl"):
        lines = [json.loads(line) for line in (run_dir / "samples" / name).read_text().splitlines()]
        keys = [(d["prompt_id"], d["index"]) for d in lines]
        assert len(keys) == len(set(keys)) and keys, name
    assert len((run_dir / "samples" / "iter-001.jsonl").read_text().splitlines()) == 24 * 4
    state = json.loads((run_dir / "checkpoints" / "iter-002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["parallel"] == "ddp"
    shutil.rmtree(run_dir, ignore_errors=True)
