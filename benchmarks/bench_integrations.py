"""Integrations: a TRL GRPO step with ``rollout_func`` (the package's rollout engine) vs TRL's own generation,
and SFTTrainer peak memory with vs without the fused-loss patch.

GRPO: a tiny random-weight Qwen2-VL (the ``bench_rollout`` model: 4 layers, hidden 256, vocab 2048, 64 image
tokens per 128x128 image), 8 image prompts x 8 completions x 64 new tokens per step (``per_device_train_batch_size
=64``, ``num_generations=8``, ``max_completion_length=64``), temperature 1, fp32, one rule-based reward
(``outcome_reward``). Step time = wall time of a whole training step (generation, reward, loss, backward,
optimizer), median of the steps after a warm-up step.

SFT: a Llama with the Qwen2 vocabulary size V = 151936 and a small width (hidden 64, 2 layers), 4 sequences of
512 tokens per step, fp32. Each configuration runs in a fresh process; peak memory = the largest resident set
size sampled every 2 ms during ``trainer.train()`` minus the size just before it. ``model_loss`` is
``SFTTrainer`` training on the model's own ``forward(labels=...)`` loss (full logits, what ``transformers``
does); ``patched`` is the same after ``apply_fused_linear_cross_entropy``; ``trl_fused`` is TRL's own
fused LM head (TRL >= 1.16's default, for reference).

Run: ``pytest benchmarks/bench_integrations.py`` (writes benchmarks/results/bench_integrations.*).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest
import torch

PROMPTS, GENERATIONS, NEW_TOKENS = 8, 8, 64
SFT_V, SFT_BATCH, SFT_LEN = 151936, 4, 512
ROWS: list[dict] = []


def _grpo_step_times(tmp_path, use_rollout_func: bool, steps: int, prompts: int = PROMPTS, generations: int = GENERATIONS,
                     new_tokens: int = NEW_TOKENS) -> tuple[list[float], list[float], float]:
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mstar_fast.integrations.trl import outcome_reward, rollout_func
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy
    from mstar_fast.rollout import RolloutEngine

    path = make_tiny_vlm("qwen2_vl", tmp_path / "qwen2_vl", vocab_size=2048, hidden_size=256, num_layers=4,
                         intermediate_size=512, image_size=128, patch_size=8, vision_layers=2)
    model, processor = load_policy(path)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (128, 128, 3), generator=g, dtype=torch.uint8).numpy())
              for _ in range(prompts * steps)]
    ds = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"What is the value of x in figure {i}? Reason step by step."}]
                   for i in range(len(images))],
        "image": images, "answer": [str(i) for i in range(len(images))]})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False,
                      per_device_train_batch_size=prompts * generations,
                      num_generations=generations, max_completion_length=new_tokens, max_steps=steps, report_to=[],
                      save_strategy="no", logging_steps=1, learning_rate=1e-5, seed=0, temperature=1.0,
                      dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    extra = {"rollout_func": rollout_func(RolloutEngine(model, processor, progress=False))} if use_rollout_func else {}
    trainer = GRPOTrainer(model=model, processing_class=processor, args=args, train_dataset=ds,
                          reward_funcs=[outcome_reward()], callbacks=[Timer()], **extra)
    gen_times: list[float] = []
    inner = trainer._generate  # both paths (rollout_func and TRL's generation) go through it

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            gen_times.append(time.perf_counter() - t0)

    trainer._generate = timed_generate
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    return times, gen_times, statistics.mean(lengths)


@pytest.mark.parametrize("impl", ["rollout_func", "trl_generate"])
def test_grpo_step(benchmark, request, tmp_path, impl):
    pytest.importorskip("trl", reason="TRL is not installed (pip install mstar_fast[trl])")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    smoke = bool(request.config.getoption("benchmark_disable", False))
    result = []
    # smoke (--benchmark-disable): one small step, to check that the body runs
    sizes = dict(steps=1, prompts=2, generations=2, new_tokens=8) if smoke else dict(steps=3)
    benchmark.pedantic(lambda: result.append(_grpo_step_times(tmp_path, impl == "rollout_func", **sizes)),
                       rounds=1, iterations=1)
    if smoke:
        return
    times, gen_times, mean_len = result[0]
    row = dict(case="grpo_step", impl=impl, median_s=statistics.median(times[1:]),
               generation_s=statistics.median(gen_times[1:]), mean_completion_tokens=mean_len, steps=len(times) - 1)
    base = next((r for r in ROWS if r["case"] == "grpo_step" and r["impl"] != impl), None)
    ROWS.append(row)
    if base is not None:
        ours, theirs = (row, base) if impl == "rollout_func" else (base, row)
        ours["speedup"] = theirs["median_s"] / ours["median_s"]
        ours["generation_speedup"] = theirs["generation_s"] / ours["generation_s"]


# ---------------------------------------------------------------------------------------------- SFT memory
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sft_peak(config: str, out_dir: str, seq_len: int, steps: int) -> dict:
    """Runs in a fresh process: peak RSS increase (bytes) during SFTTrainer.train() for ``config``."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from mstar_fast.integrations.trl import use_model_loss
    from mstar_fast.demo.tokenizer import train_tiny_tokenizer
    from mstar_fast.patch import apply_fused_linear_cross_entropy

    torch.manual_seed(0)
    tok = train_tiny_tokenizer([], vocab_size=300)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=SFT_V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                         tie_word_embeddings=False))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, SFT_V, (SFT_BATCH * steps, seq_len), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": ids})
    args = SFTConfig(output_dir=out_dir, use_cpu=True, bf16=False, per_device_train_batch_size=SFT_BATCH, max_steps=steps,
                     max_length=seq_len, report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-4,
                     seed=0, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False)
    if config == "patched":
        apply_fused_linear_cross_entropy(model)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    if config in ("patched", "model_loss"):
        use_model_loss(trainer)
    base, peak, stop = _rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t0
    stop.set()
    th.join()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"peak_bytes": max(peak[0], _rss()) - base, "seconds": elapsed, "losses": losses}


@pytest.mark.parametrize("config", ["model_loss", "patched", "trl_fused"])
def test_sft_peak_memory(benchmark, request, tmp_path, config):
    pytest.importorskip("trl", reason="TRL is not installed (pip install mstar_fast[trl])")
    smoke = bool(request.config.getoption("benchmark_disable", False))
    seq_len, steps = (64, 1) if smoke else (SFT_LEN, 2)
    cmd = [sys.executable, __file__, "--sft", config, str(tmp_path), str(seq_len), str(steps)]
    res = []

    def run() -> None:
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"SFT memory run {config} failed:\n{p.stderr[-3000:]}")
        res.append(json.loads(p.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    if smoke:
        return
    r = res[0]
    row = dict(case="sft_peak_memory", impl=config, peak_mib=r["peak_bytes"] / 2**20, seconds=r["seconds"],
               first_loss=r["losses"][0] if r["losses"] else float("nan"))
    ROWS.append(row)
    base = next((x for x in ROWS if x["case"] == "sft_peak_memory" and x["impl"] == "model_loss"), None)
    if base is not None:
        for x in ROWS:
            if x["case"] == "sft_peak_memory":
                x["memory_vs_model_loss"] = x["peak_mib"] / base["peak_mib"]


@pytest.fixture(scope="module", autouse=True)
def _write(request):
    yield
    if ROWS and not request.config.getoption("benchmark_disable", False):
        from harness import write_results

        import trl

        columns = ["case", "impl", "median_s", "speedup", "generation_s", "generation_speedup", "mean_completion_tokens", "steps", "peak_mib",
                   "memory_vs_model_loss", "seconds", "first_loss"]
        write_results("bench_integrations", ROWS, columns=columns, notes=(
            f"TRL {trl.__version__}. GRPO: tiny Qwen2-VL (4 layers, hidden 256, vocab 2048, 64 image tokens), "
            f"{PROMPTS} image prompts x {GENERATIONS} completions x {NEW_TOKENS} new tokens per step, temperature 1, "
            "fp32; step time = median wall time of a whole GRPO step after a warm-up step, generation_s = the part of it "
            "spent in the trainer's _generate (rollout_func or TRL's generation, decoding included); `rollout_func` = "
            "mstar_fast.integrations.trl.rollout_func(RolloutEngine), `trl_generate` = TRL's own generation "
            f"(model.generate over the 64 rows). SFT: Llama, V={SFT_V}, hidden 64, {SFT_BATCH} x {SFT_LEN} tokens "
            "per step, fp32, each config in a fresh process; peak_mib = largest RSS increase during train(); "
            "`model_loss` = SFTTrainer on forward(labels=...) (full logits), `patched` = the same after "
            "mstar_fast.patch.apply_fused_linear_cross_entropy, `trl_fused` = TRL's own fused LM head. "
            f"torch threads = {torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.1f} "
            "(a shared machine: compare rows of one run only)."))


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--sft":
    print(json.dumps(_sft_peak(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
