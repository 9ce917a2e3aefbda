"""Rollout: the prefix-sharing engine vs ``model.generate(num_return_sequences=16, do_sample=True)``.

A tiny random-weight Qwen2-VL (about 5M parameters, 64 image tokens per 128x128 image) built locally;
8 prompts x 16 samples x 64 new tokens at temperature 1 (no top-k/top-p), as M-STaR samples K=16 per
prompt. The baseline is the strongest plain-HF setup: one ``generate`` call over all 8 prompts (left
padded), each expanded to 16 rows, so it encodes each image and prefills each prompt 16 times. Also
text-only prompts (8 and 1), where only the prefill and the per-step work differ. Tokens are counted up
to and including EOS (random weights rarely emit it). Samples/s = prompts * 16 / median wall time.
Run: ``pytest benchmarks/bench_rollout.py`` (writes benchmarks/results/bench_rollout.*).
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from harness import write_results
from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import load_policy
from mstar_fast.models.prompting import format_prompt, load_images
from mstar_fast.ops import available_backends
from mstar_fast.rollout import RolloutEngine

N, NEW_TOKENS = 16, 64
ROWS: list[dict] = []
CASES = {  # name -> (number of prompts, with an image)
    "image_x8": (8, True),
    "text_x8": (8, False),
    "text_x1": (1, False),
}


@pytest.fixture(scope="module")
def policy(tmp_path_factory, request):
    path = make_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("bench") / "qwen2_vl", vocab_size=2048, hidden_size=256,
                         num_layers=4, intermediate_size=512, image_size=128, patch_size=8, vision_layers=2)
    model, processor = load_policy(path)
    yield model, processor
    if ROWS and not request.config.getoption("benchmark_disable", False):
        params = sum(p.numel() for p in model.parameters())
        columns = ["case", "impl", "prompts", "samples", "median_s", "samples_per_s", "tokens_per_s", "speedup"]
        write_results("bench_rollout", ROWS, columns=columns, notes=(
            f"Tiny Qwen2-VL ({params / 1e6:.1f}M parameters, 4 layers, hidden 256, vocab 2048, 64 image tokens), "
            f"fp32, {N} samples x {NEW_TOKENS} new tokens per prompt, temperature 1. `engine` = RolloutEngine "
            f"(sampler backend: {available_backends('cpu')[0]}); `generate` = one model.generate call over all "
            f"prompts with num_return_sequences={N}, do_sample=True, top_k=0. Median of 5 runs after a warm-up; "
            f"torch threads = {torch.get_num_threads()}, load average at the end {os.getloadavg()[0]:.1f} "
            "(a shared machine: compare rows of one run only)."))


def _prompts(k: int, image: bool) -> list[Prompt]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(k):
        pixels = torch.randint(0, 256, (128, 128, 3), generator=g, dtype=torch.uint8).numpy()
        imgs = [Image.fromarray(pixels)] if image else []
        question = f"What is the value of x in figure {i}? Reason step by step."
        out.append(Prompt(id=f"p{i}", question=question, images=imgs))
    return out


def _hf_runner(model, processor, prompts):
    tok = processor.tokenizer
    tok.padding_side = "left"
    texts = [format_prompt(processor, p)[0] for p in prompts]
    images = [load_images(p.images) for p in prompts] if prompts[0].images else None
    enc = processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
    eos = set(model.generation_config.eos_token_id)
    plen = enc["input_ids"].shape[1]

    def run() -> int:
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, num_return_sequences=N, max_new_tokens=NEW_TOKENS,
                                 temperature=1.0, top_k=0, top_p=1.0)
        n_tok = 0
        for row in out[:, plen:].tolist():
            n_tok += next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        return n_tok

    return run


def _engine_runner(model, processor, prompts):
    engine = RolloutEngine(model, processor, progress=False)

    def run() -> int:
        samples = engine.generate(prompts, n=N, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
        return sum(len(s.token_ids) for s in samples)

    return run


@pytest.mark.parametrize("impl", ["engine", "generate"])
@pytest.mark.parametrize("case", list(CASES))
def test_rollout(benchmark, policy, case, impl):
    model, processor = policy
    k, image = CASES[case]
    prompts = _prompts(k, image)
    run = (_engine_runner if impl == "engine" else _hf_runner)(model, processor, prompts)
    tokens = []
    benchmark.pedantic(lambda: tokens.append(run()), rounds=5, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once as a smoke test
        return
    med = benchmark.stats.stats.median
    row = dict(case=case, impl=impl, prompts=k, samples=k * N, median_s=med, samples_per_s=k * N / med,
               tokens_per_s=sum(tokens) / len(tokens) / med)
    base = next((r for r in ROWS if r["case"] == case and r["impl"] != impl), None)
    ROWS.append(row)
    if base is not None:  # speedup of the engine over generate, on the engine's row
        eng, gen = (row, base) if impl == "engine" else (base, row)
        eng["speedup"] = eng["samples_per_s"] / gen["samples_per_s"]
