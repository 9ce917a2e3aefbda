"""Rewrite the README's benchmark section from benchmarks/results/*.json, so the table never drifts from
the committed results. ``python benchmarks/readme_table.py`` rewrites; ``--check`` exits 1 when the README
is stale (run by .ci/run). Only headline rows are shown; every row is in benchmarks/results/<name>.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _g(x: float) -> str:
    return f"{x:.3g}"


def _machine(d: dict) -> str:
    m = d["machine"]
    return f"{m.get('cores', '?')} cores, torch {m.get('torch', '?')}, {m.get('date', '?')}"


def _machine_name(d: dict) -> str:
    """The machine a result file was measured on: its CPU model, with its kind (AVX-512 or not) where the
    file records its flags (results written before flags were recorded name the model only)."""
    m = d["machine"]
    kind = m.get("cpu_kind")
    return f"{m.get('cpu', '?')}" + (f" ({kind})" if kind else "")


def _sampler(d: dict) -> list[str]:
    rows = {(r["B"], r["V"], r["mix"], r["impl"]): r for r in d["rows"]}
    out = ["| B x V | mix | cpp ms | x one-read floor | target | plain torch ms | torch reference ms | cpp speed-up vs plain / reference |",
           "|---|---|---|---|---|---|---|---|"]
    for mix, target in (("temperature", "<= 2x"), ("row_temp+top_p0.9", "<= 4x"), ("row_temp+top_p0.9+top_k50", "")):
        c, p, t = (rows.get((256, 151936, mix, i)) for i in ("cpp", "plain", "torch"))
        if not (c and p and t):
            continue
        out.append(f"| 256 x 151936 | {mix} | {_g(c['median_ms'])} | {_g(c['x_floor'])} | {target} | {_g(p['median_ms'])} "
                   f"| {_g(t['median_ms'])} | {p['median_ms'] / c['median_ms']:.0f}x / {t['median_ms'] / c['median_ms']:.0f}x |")
    return out


def _flce(d: dict) -> list[str]:
    out = ["| V | unfused s | fused s | time ratio (target <= 1.3) | unfused peak MB | fused peak MB | memory ratio (target <= 0.25) |",
           "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['V']} | {_g(r['unfused_s'])} | {_g(r['fused_s'])} | {r['time_ratio']:.2f} | {r['unfused_peak_mb']:.0f} "
                   f"| {r['fused_peak_mb']:.0f} | {r['mem_ratio']:.2f} |")
    return out


def _prm_op(d: dict) -> list[str]:
    out = ["| H | dtype | fused ms | full LM head + gather s | time ratio (target >= 20) | memory ratio (target >= 50) |",
           "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['H']} | {r['dtype']} | {_g(r['fused_cpp_ms'])} | {_g(r['baseline_s'])} ({r['baseline_from']}) "
                   f"| {r['time_ratio']:.3g} | {r['mem_ratio_vs_alloc']:.3g} |")
    return out


def _prm_scorer(d: dict) -> list[str]:
    out = ["| prefix share | K | prefix-shared s | K independent forwards s | speed-up (target >= 2 at share >= 0.5) | one batched forward s |",
           "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['prefix_share']:.2f} | {r['K']} | {_g(r['shared_s'])} | {_g(r['independent_s'])} "
                   f"| {r['speedup_vs_independent']:.2f} | {_g(r['independent_batched_s'])} |")
    return out


def _rollout(d: dict) -> list[str]:
    rows = {(r["case"], r["impl"]): r for r in d["rows"]}
    if not any("floor_s" in r for r in d["rows"]):  # results written before the floor was measured
        out = ["| case | RolloutEngine s | generate(num_return_sequences) s | speed-up |", "|---|---|---|---|"]
        for case in dict.fromkeys(r["case"] for r in d["rows"]):
            e, g = rows.get((case, "engine")), rows.get((case, "generate"))
            if e and g:
                out.append(f"| {case} | {_g(e['median_s'])} | {_g(g['median_s'])} | {g['median_s'] / e['median_s']:.2f} |")
        return out
    # Each implementation's floor counts the tokens it generated (EOS ends rows at different steps).
    out = [("| case | model | matmul floor s (engine's tokens) | RolloutEngine s (x floor; target <= 1.5 at the 70M "
            "sizes) | generate s (x its own floor) | vLLM s (x its own floor) | engine speed-up vs generate / vLLM |"),
           "|---|---|---|---|---|---|---|"]
    cell = lambda r: "-" if r is None else f"{_g(r['median_s'])} ({r['x_floor']:.2f}x)"  # noqa: E731
    for case in dict.fromkeys(r["case"] for r in d["rows"]):
        e, g, v = (rows.get((case, i)) for i in ("engine", "generate", "vllm"))
        if e is None:
            continue
        sp = " / ".join(f"{e[k]:.2f}x" if e.get(k) is not None else "-"
                        for k in ("speedup_vs_generate", "speedup_vs_vllm"))
        out.append(f"| {case} | {e['model']} | {_g(e['floor_s'])} | {cell(e)} | {cell(g)} | {cell(v)} | {sp} |")
    return out


def _integrations(d: dict) -> list[str]:
    rows = {(r["case"], r["impl"]): r for r in d["rows"]}
    out = ["| case | mstar_fast | baseline | ratio | target |", "|---|---|---|---|---|"]
    f, t = rows.get(("grpo_step", "rollout_func")), rows.get(("grpo_step", "trl_generate"))
    if f and t:
        out.append(f"| GRPO step, 8 image prompts x 8 completions x 64 tokens | `rollout_func` {_g(f['median_s'])} s "
                   f"(generation {_g(f['generation_s'])} s) | TRL generation {_g(t['median_s'])} s (generation "
                   f"{_g(t['generation_s'])} s) | {t['median_s'] / f['median_s']:.2f}x per step, "
                   f"{t['generation_s'] / f['generation_s']:.2f}x generation | >= 2x per step |")
    p, m = rows.get(("sft_peak_memory", "patched")), rows.get(("sft_peak_memory", "model_loss"))
    if p and m:
        out.append(f"| SFTTrainer peak memory, V=151936 | patched {p['peak_mib']:.0f} MiB | model's own loss "
                   f"{m['peak_mib']:.0f} MiB | {p['peak_mib'] / m['peak_mib']:.2f}x | <= 0.33x |")
    return out


SECTIONS = [
    ("bench_sample_from_logits", "Sampler, fp32, per call", _sampler),
    ("bench_fused_linear_cross_entropy", "Fused linear cross-entropy, N=4096, H=1024, fp32, forward + backward", _flce),
    ("bench_prm_step_scores", "PRM step scores, 16 x 1024 rows, V=151936", _prm_op),
    ("bench_prm_scorer", "PRM scorer, 16 responses of one prompt, tiny LLaVA", _prm_scorer),
    ("bench_rollout", "Rollout, 16 samples x 64 tokens per prompt, random-weight Qwen2-VL / Llama", _rollout),
    ("bench_integrations", "TRL integration, tiny Qwen2-VL", _integrations),
]


def render() -> str:
    """The README section: the result files grouped by the machine they were measured on (its CPU model
    and kind), one heading per machine, so no table mixes numbers of two machines."""
    parts = [BEGIN, "<!-- generated by benchmarks/readme_table.py from benchmarks/results/*.json: do not edit -->"]
    by_machine: dict[str, list[tuple[str, str, object, dict]]] = {}
    for name, title, fn in SECTIONS:
        d = _load(name)
        if d is not None:
            by_machine.setdefault(_machine_name(d), []).append((name, title, fn, d))
    for machine, sections in by_machine.items():
        parts += ["", f"*Measured on {machine}:*"]
        for name, title, fn, d in sections:
            parts += ["", f"**{title}** ([all rows](benchmarks/results/{name}.md); {_machine(d)})", ""] + fn(d)
    return "\n".join(parts + [END])


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} section", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    new = head + render() + rest.split(END, 1)[1]
    if "--check" in argv:
        if new != text:
            print("README.md benchmark section is stale: run python benchmarks/readme_table.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
