"""Rollout: the prefix-sharing engine vs ``model.generate(num_return_sequences=16, do_sample=True)`` and, where
vLLM imports, ``RolloutEngine(backend="vllm")``, each against the matmul floor measured in the same run.

Models (random weights, built locally from configs):

* ``tiny_vlm``: a tiny Qwen2-VL (about 6M parameters, 64 image tokens per 128x128 image), the CI smoke size;
* ``text_70m``: a text-only Llama of about 70M parameters (hidden 768, 10 layers);
* ``vlm_70m``: a Qwen2-VL of about 80M parameters (hidden 768, 9 text layers, 2 vision layers, 64 image tokens).

8 prompts x 16 samples x 64 new tokens at temperature 1 (no top-k/top-p), as M-STaR samples K=16 per
prompt (also 1 prompt on the tiny model). The ``generate`` baseline is the strongest plain-HF setup: one
call over all 8 prompts (left padded), each expanded to 16 rows, so it encodes each image and prefills each
prompt 16 times. Tokens are counted up to and including EOS (random weights rarely emit it).

**Matmul floor.** Per case, the time this machine's GEMMs need for the weight matmuls of the work itself,
measured in the same run with the model's own weight matrices: one prefill per prompt (``M`` = prompt
tokens through the language model, image patches through the vision tower) plus one decode step per
generated token (``M`` = the case's rows through every language-model linear and the LM head). ``floor_s``
= those FLOPs / the GEMM rate measured at those shapes; ``x_floor`` = median time / floor_s (attention,
sampling and framework overhead are what lies above 1). Target: engine <= 1.5x floor and no slower than
any peer.

Run: ``pytest benchmarks/bench_rollout.py`` (writes benchmarks/results/bench_rollout.*). With
``--benchmark-disable`` (CI) only the tiny model runs, once per case, as a smoke test; the 70M models run
in the real benchmark run only.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

import pytest
import torch
from PIL import Image

from harness import cpu_flags, write_results
from mstar_fast.data.records import Prompt
from mstar_fast.demo.tiny import make_tiny_vlm
from mstar_fast.models import load_policy
from mstar_fast.models.prompting import encode_prompt, format_prompt, load_images
from mstar_fast.ops import available_backends
from mstar_fast.rollout import RolloutEngine

N, NEW_TOKENS, IMAGE_SIZE = 16, 64, 128
ROWS: list[dict] = []
#: name -> make_tiny_vlm arguments.
MODELS: dict[str, dict] = {
    "tiny_vlm": dict(arch="qwen2_vl", vocab_size=2048, hidden_size=256, num_layers=4, intermediate_size=512,
                     image_size=IMAGE_SIZE, patch_size=8, vision_layers=2),
    "text_70m": dict(arch="llama", vocab_size=4096, hidden_size=768, num_layers=10, num_heads=12,
                     intermediate_size=2048),
    "vlm_70m": dict(arch="qwen2_vl", vocab_size=4096, hidden_size=768, num_layers=9, num_heads=12,
                    intermediate_size=2048, image_size=IMAGE_SIZE, patch_size=8, vision_layers=2),
}
SMOKE_MODELS = ("tiny_vlm",)  # the only model CI's --benchmark-disable run builds
CASES = {  # name -> (model, number of prompts, with an image)
    "image_x8": ("tiny_vlm", 8, True),
    "text_x8": ("tiny_vlm", 8, False),
    "text_x1": ("tiny_vlm", 1, False),
    "text70m_x8": ("text_70m", 8, False),
    "vlm70m_image_x8": ("vlm_70m", 8, True),
}
IMPLS = ("engine", "generate", "vllm")
HAS_VLLM = importlib.util.find_spec("vllm") is not None
#: vLLM's Qwen2-VL imports torchvision, whose PyPI build does not import beside the CPU torch wheel here.
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _smoke(config) -> bool:
    return bool(config.getoption("benchmark_disable", False))


@pytest.fixture(scope="module")
def built(tmp_path_factory, request):
    """name -> (model directory, model, processor), built on first use; writes the results at the end."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            path = make_tiny_vlm(out_dir=tmp_path_factory.mktemp("bench") / name, **MODELS[name])
            model, processor = load_policy(path)
            cache[name] = (path, model, processor)
        return cache[name]

    yield get
    if ROWS and not _smoke(request.config):
        flags = cpu_flags()
        sizes = ", ".join(f"`{n}` {sum(p.numel() for p in cache[n][1].parameters()) / 1e6:.1f}M parameters "
                          f"({'image tokens 64' if MODELS[n]['arch'] != 'llama' else 'text only'})"
                          for n in cache)
        columns = ["case", "model", "impl", "prompts", "samples", "median_s", "samples_per_s", "tokens_per_s",
                   "floor_s", "x_floor", "gemm_gflops", "speedup_vs_generate", "speedup_vs_vllm"]
        write_results("bench_rollout", ROWS, columns=columns, notes=(
            f"Random-weight models: {sizes}; fp32, {N} samples x {NEW_TOKENS} new tokens per prompt, temperature 1. "
            f"`engine` = RolloutEngine (sampler backend: {available_backends('cpu')[0]}); `generate` = one "
            f"model.generate call over all prompts with num_return_sequences={N}, do_sample=True, top_k=0; "
            f"`vllm` = RolloutEngine(backend='vllm') ({'measured' if HAS_VLLM else 'not installed here'}). "
            "floor_s = FLOPs of the weight matmuls (one prefill per prompt + one decode step per generated token "
            "over the case's rows) / the GEMM rate measured at those shapes in this run (gemm_gflops, decode "
            "shapes); x_floor = median_s / floor_s. Median of 5 runs (3 for the 70M models) after a warm-up; "
            f"torch threads = {torch.get_num_threads()}, CPU flags {' '.join(flags) or '?'}, load average at the "
            f"end {os.getloadavg()[0]:.1f} (a shared machine: compare rows of one run only)."))


def _prompts(k: int, image: bool) -> list[Prompt]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(k):
        pixels = torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8).numpy()
        imgs = [Image.fromarray(pixels)] if image else []
        question = f"What is the value of x in figure {i}? Reason step by step."
        out.append(Prompt(id=f"p{i}", question=question, images=imgs))
    return out


# ------------------------------------------------------------------------------------------- the floor
def _linears(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weight matrices ``[out, in]`` of the language model (with the LM head) and of the vision tower."""
    text, vision = [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            (vision if "visual" in name or "vision" in name else text).append(m.weight.detach())
    return text, vision


def _gemm_pass(weights: list[torch.Tensor], m: int, repeat: int = 5) -> tuple[float, float]:
    """(median seconds, FLOPs) of ``x[m, in] @ W.T`` over every matrix in ``weights``: one forward's weight
    matmuls at ``m`` rows."""
    if not weights or m < 1:
        return 0.0, 0.0
    xs = [torch.randn(m, w.shape[1], dtype=w.dtype) for w in weights]
    flops = sum(2.0 * m * w.shape[0] * w.shape[1] for w in weights)

    def once() -> None:
        for x, w in zip(xs, weights):
            torch.mm(x, w.t())

    with torch.inference_mode():
        once()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), flops


def _floor(model, processor, prompts: list[Prompt], rows: int, tokens_per_row: float) -> tuple[float, float]:
    """(floor seconds, GEMM GFLOP/s at the decode shape) of sampling ``rows`` rows of ``tokens_per_row``
    tokens for ``prompts`` (module doc)."""
    text, vision = _linears(model)
    total = 0.0
    for p in prompts:
        enc = encode_prompt(processor, p)
        total += _gemm_pass(text, int(enc["input_ids"].shape[1]))[0]
        if p.images and vision:
            total += _gemm_pass(vision, int(enc["pixel_values"].shape[0]))[0]
    step_s, step_flops = _gemm_pass(text, rows)
    total += max(0.0, tokens_per_row - 1) * step_s  # the first token comes from the prefill's logits
    return total, step_flops / step_s / 1e9 if step_s else float("nan")


# ------------------------------------------------------------------------------------------- the runners
def _hf_runner(path, model, processor, prompts):
    tok = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    tok.padding_side = "left"
    texts = [format_prompt(processor, p)[0] for p in prompts]
    if prompts[0].images:
        enc = processor(text=texts, images=[load_images(p.images) for p in prompts], return_tensors="pt",
                        padding=True, add_special_tokens=False)
    else:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
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


def _engine_runner(path, model, processor, prompts):
    engine = RolloutEngine(model, processor, progress=False)

    def run() -> int:
        samples = engine.generate(prompts, n=N, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
        return sum(len(s.token_ids) for s in samples)

    return run


def _vllm_runner(path, model, processor, prompts):
    engine = RolloutEngine(str(path), processor, backend="vllm", vllm_kwargs={"dtype": "float32", "seed": 0})

    def run() -> int:
        samples = engine.generate(prompts, n=N, temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
        return sum(len(s.token_ids or []) for s in samples)

    return run


RUNNERS = {"engine": _engine_runner, "generate": _hf_runner, "vllm": _vllm_runner}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_rollout(benchmark, built, case, impl, request):
    name, k, image = CASES[case]
    if _smoke(request.config) and name not in SMOKE_MODELS:
        pytest.skip(f"{name}: the 70M models run in the real benchmark run only (not under --benchmark-disable)")
    if impl == "vllm" and not HAS_VLLM:
        pytest.skip("vllm is not installed")
    if impl == "vllm" and MODELS[name]["arch"] != "llama" and not HAS_TORCHVISION:
        pytest.skip("vLLM's Qwen2-VL needs torchvision, which is not installed")
    path, model, processor = built(name)
    prompts = _prompts(k, image)
    run = RUNNERS[impl](path, model, processor, prompts)
    tokens: list[int] = []
    rounds = 5 if name in SMOKE_MODELS else 3
    benchmark.pedantic(lambda: tokens.append(run()), rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once as a smoke test
        assert tokens and tokens[0] > 0
        return
    med = benchmark.stats.stats.median
    rows = k * N
    floor_s, gflops = _floor(model, processor, prompts, rows, statistics.mean(tokens) / rows)
    row = dict(case=case, model=name, impl=impl, prompts=k, samples=rows, median_s=med, samples_per_s=rows / med,
               tokens_per_s=statistics.mean(tokens) / med, floor_s=floor_s, x_floor=med / floor_s,
               gemm_gflops=gflops)
    ROWS.append(row)
    by_impl = {r["impl"]: r for r in ROWS if r["case"] == case}
    eng = by_impl.get("engine")
    if eng is not None:  # the engine's speed-up over each peer measured in this run, on the engine's row
        for peer in ("generate", "vllm"):
            if peer in by_impl:
                eng[f"speedup_vs_{peer}"] = by_impl[peer]["median_s"] / eng["median_s"]
