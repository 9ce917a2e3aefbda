"""``train.parallel=fsdp`` in the recipe (mstar_fast/recipe/policy.py): rollouts run on an unsharded
inference copy of the FSDP2-sharded policy, refreshed after each training call.

- the memory condition and its refusal (pure arithmetic, no process group);
- a 2-process ``torchrun`` (gloo, CPU) worker: the copy equals the gathered training weights and follows
  a training step only through ``refresh``; ranks generate different numbers of prompts without hanging;
- the quick demo under ``torchrun --nproc_per_node=2`` with fsdp against the same run with ddp, and a
  ``kill -9`` of every rank + ``mstar run --resume`` under fsdp against the uninterrupted fsdp run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mstar_fast.demo.run import QUICK
from mstar_fast.errors import UserError
from mstar_fast.recipe.policy import check_inference_copy_fits, free_memory_bytes, kv_bytes_per_position
from tests.recipe.test_loop import _rows, _samples, assert_same_run, kill_when_written
from tests.recipe.test_torchrun import _free_port, _torchrun_available  # the same gloo check and port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "demo.yaml"
# Sample chunks of 4 prompts, so the kill can land between two appends of an iteration's sample file; a
# base model trained long enough that the warm-up and the iterations find correct responses to train on
# (with the quick budget's 20 steps they find none, and no training call would run under FSDP after the base).
SMALL = ["rollout.chunk_prompts=4", "model.tiny.base_steps=60", "model.tiny.base_lr=3e-3"]
GiB = 1 << 30


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    env.pop("MSTAR_FAST_BACKEND", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", *args]


def _recipe(run_dir: Path, parallel: str) -> list[str]:
    return _torchrun("-m", "mstar_fast", "run", str(CONFIG), f"run_dir={run_dir}", *QUICK, *SMALL,
                     f"train.parallel={parallel}")


# ---------------------------------------------------------------------------------------- memory condition
def test_memory_condition_fits_and_refuses_with_the_numbers():
    assert check_inference_copy_fits(weights_bytes=16 * GiB, kv_bytes=8 * GiB, pending_bytes=6 * GiB,
                                     free_bytes=31 * GiB, where="cuda:0 (rank 0)") is None
    assert check_inference_copy_fits(weights_bytes=16 * GiB, kv_bytes=8 * GiB, pending_bytes=0,
                                     free_bytes=None, where="cpu") is None  # nothing known to check against
    why = check_inference_copy_fits(weights_bytes=16 * GiB, kv_bytes=8 * GiB, pending_bytes=6 * GiB,
                                    free_bytes=29 * GiB, where="cuda:3 (rank 3)")
    assert why is not None
    for part in ("16.00 GiB of weights", "8.00 GiB KV cache", "6.00 GiB", "30.00 GiB", "29.00 GiB", "cuda:3",
                 "rollout.max_batch_tokens", "train.parallel=ddp"):
        assert part in why, part
    unknown_kv = check_inference_copy_fits(weights_bytes=2 * GiB, kv_bytes=None, pending_bytes=0,
                                           free_bytes=1 * GiB, where="cpu")
    assert unknown_kv is not None and "size unknown" in unknown_kv


def test_kv_bytes_per_position_from_the_config():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    assert kv_bytes_per_position(model) == 2 * 3 * 2 * (32 // 4) * 2  # K and V x layers x kv heads x dim x bf16
    assert kv_bytes_per_position(torch.nn.Linear(2, 2)) is None


def test_free_memory_on_cpu_is_split_between_the_node_ranks(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one = free_memory_bytes(torch.device("cpu"))
    if one is None:
        pytest.skip("no /proc/meminfo on this system")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    four = free_memory_bytes(torch.device("cpu"))
    assert one > 0 and four == pytest.approx(one / 4, rel=0.25)  # MemAvailable moves a little in between
    assert free_memory_bytes(torch.device("meta")) is None


def test_copy_full_weights_checks_names_and_shapes():
    from mstar_fast.train.distributed import copy_full_weights

    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).to(torch.float64)
    copy_full_weights(a, b)
    assert torch.equal(b.weight, a.weight.double()) and b.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="shape"):
        copy_full_weights(a, torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="only in the source"):
        copy_full_weights(a, torch.nn.Linear(3, 2, bias=False))


def test_refusal_is_a_user_error_on_every_rank(monkeypatch):
    """The refusal path of RolloutPolicy.create, in one process (world of 1): a UserError, no copy built."""
    from mstar_fast.recipe import policy as P

    class FakeTrainer:
        parallel = "fsdp"
        device = torch.device("cpu")
        rank = 0
        model = torch.nn.Linear(1024, 1024)
        loss_module = model

        class config:  # noqa: N801 - mimics SFTConfig's attribute
            optimizer = "adamw"

        optimizer = torch.optim.AdamW(model.parameters())

    monkeypatch.setattr(P, "free_memory_bytes", lambda device: 1024)
    loads = []
    with pytest.raises(UserError, match="inference copy"):
        P.RolloutPolicy.create(FakeTrainer(), lambda: loads.append(1), max_batch_tokens=16)  # type: ignore[arg-type]
    assert not loads


# ------------------------------------------------------------------------------ 2 processes, one worker
def test_inference_copy_follows_the_shards(tmp_path):
    reason = _torchrun_available()
    if reason:
        pytest.skip(reason)
    from mstar_fast.demo.tiny import make_tiny_vlm

    model_dir = tmp_path / "tiny"
    make_tiny_vlm("llama", model_dir, vocab_size=320, hidden_size=32, image_size=16, patch_size=4, num_layers=2,
                  seed=0)
    out = tmp_path / "out"
    cmd = _torchrun("-m", "tests.recipe._fsdp_worker", str(model_dir), str(out))
    try:
        res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun worker did not finish in 5 minutes (a hang in a collective?): {e.stderr!r}"[-3000:])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    got = json.loads((out / "result.json").read_text())
    assert got["parallel"] == "fsdp" and got["is_copy"]
    assert got["same_at_start"] and got["same_after_refresh"]
    assert not got["same_before_refresh"]  # training moved the shards; the copy follows only on refresh
    assert len(got["texts"]) == 4 * 2


# --------------------------------------------------------------------- the quick demo, ddp vs fsdp, resume
# Tolerance of fsdp against ddp. Both start from the same base and warm-up data; the gradients are averaged
# by different collectives (FSDP2's reduce-scatter, DDP's bucketed all-reduce), so the weights agree only to
# float rounding (tests/train/test_distributed.py: rel 1e-5 after a few steps), and a sample whose
# sampling probability sits on a rounding boundary can change, moving a validation accuracy by one prompt of
# 16 (1/16) or one sample of 64 (pass@k / reward-pass@2 cells). Up to 2/16 per metric is accepted; the
# counts of prompts and samples, the step counter and the iteration structure must be equal.
ACC_TOL = 2 / 16
ACCURACIES = ("val_greedy_acc", "val_pass_at_k", "val_reward_pass_at_2", "test_greedy_acc")
EXACT = ("iteration", "n_prompts", "n_samples", "stage")


def _run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd[-6:])}: no end in {timeout:.0f}s: {(e.stdout or '')[-2000:]!r}")


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess, float]]:
    reason = _torchrun_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("fsdp_demo")
    out = {}
    for parallel in ("ddp", "fsdp"):
        t0 = time.perf_counter()
        res = _run(_recipe(root / parallel, parallel))
        out[parallel] = (root / parallel, res, time.perf_counter() - t0)
    return out


@pytest.mark.slow
def test_quick_demo_fsdp_matches_ddp(demo_runs):
    for parallel, (_, res, _) in demo_runs.items():
        assert res.returncode == 0, f"{parallel}: " + res.stdout[-3000:] + res.stderr[-4000:]
    (ddp_dir, _, _), (fsdp_dir, fsdp_res, _) = demo_runs["ddp"], demo_runs["fsdp"]
    assert "2 process(es)" in fsdp_res.stdout
    ddp, fsdp = _rows(ddp_dir), _rows(fsdp_dir)
    assert [r["iteration"] for r in fsdp] == [0, 1, 2] and fsdp[-1]["stage"] == "final"
    for d, f in zip(ddp, fsdp):
        for key in EXACT:
            assert f.get(key) == d.get(key), (f["iteration"], key)
        for key in ACCURACIES:
            if d.get(key) is None:
                assert f.get(key) is None, (f["iteration"], key)
            else:
                assert f[key] == pytest.approx(d[key], abs=ACC_TOL), (f["iteration"], key, f[key], d[key])
        assert f["step"] == d["step"] and (f["train_steps"] == d["train_steps"])
    # Training calls ran under FSDP2 after the base model's: the warm-up SFT, then the iterations' (the
    # inference copy was refreshed from the shards after each).
    stages = json.loads((fsdp_dir / "stages.json").read_text())
    assert stages["warmup"]["steps"] > 0 and fsdp[-1]["step"] > 0, (stages["warmup"], fsdp[-1]["step"])
    # The base model's SFT (the first training call, from the same initial weights and batches) agrees to
    # float rounding: FSDP2 and DDP train the same model.
    ddp_stages = json.loads((ddp_dir / "stages.json").read_text())
    assert stages["base"]["loss"] == pytest.approx(ddp_stages["base"]["loss"], rel=1e-4)
    assert stages["base"]["steps"] == ddp_stages["base"]["steps"]
    state = json.loads((fsdp_dir / "checkpoints" / "iter-002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["parallel"] == "fsdp"
    assert (fsdp_dir / "checkpoints" / "iter-002" / "sharded").is_dir()
    for name in ("iter-001.jsonl", "iter-002.jsonl"):
        keys = [(d["prompt_id"], d["index"]) for d in _samples(fsdp_dir)[name]]
        assert len(keys) == len(set(keys)) == 24 * 4, name


@pytest.mark.slow
def test_fsdp_kill_and_resume_equals_uninterrupted(demo_runs, tmp_path):
    ref_dir, ref, _ = demo_runs["fsdp"]
    assert ref.returncode == 0, ref.stderr[-3000:]
    run_dir = tmp_path / "killed"
    # Its own session: the kill takes torchrun and both ranks at once (kill -9 of the whole job).
    proc = subprocess.Popen(_recipe(run_dir, "fsdp"), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    target = run_dir / "samples" / "iter-002.jsonl"  # iteration 1 is checkpointed, iteration 2 sampling
    kill_when_written(proc, target, timeout=600, group=True)
    assert (run_dir / "checkpoints" / "iter-001" / "sharded").is_dir()
    assert not (run_dir / "checkpoints" / "iter-002").exists()
    res = _run(_torchrun("-m", "mstar_fast", "run", "--resume", str(run_dir)))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    assert "resumed from" in res.stdout

    assert_same_run(run_dir, ref_dir)
