"""``mstar demo``: the whole M-STaR recipe on an embedded task, on a CPU, in minutes, with no download.

It builds a tiny vision-language model (Qwen2-VL architecture, ~1.4M parameters, random weights, a tokenizer
trained on the spot) and the synthetic multimodal reasoning task (:mod:`mstar_fast.demo.synthetic`), makes
a weak base model by a short SFT on the gold reasoning of a part of the train prompts (standing in for a
pre-trained VLM; half of those examples carry the answer hint, so that the base model can use an answer it
is given, as the warm-up assumes), then runs warm-up, PRM data + training and the self-evolving iterations
with adaptive temperature (:func:`mstar_fast.recipe.loop.run`; the synthetic data and the tiny base model
reach the recipe by name, through :data:`mstar_fast.constants.PROMPT_SOURCES` / ``BASE_POLICIES``), and
prints base -> warm-up -> M-STaR test accuracy.

The task is one family of the synthetic benchmark, ``grid_geometry`` level 1 (read a rectangle's width and
height off an 8x8 grid image, multiply): measured on this 2-core CPU, it is the family a model this size
learns within the demo's budget (the others stay near chance for hundreds of steps; the clock's reasoning
is also the longest). ``data.synthetic_families`` / ``data.synthetic_levels`` select others.

``--compare`` also runs the baselines of the paper's Tables 1-2 from the same warm-up model and PRM, on the
same sampling budget (the same number of prompts sampled in total): iterative RFT and ReST-EM (100% of the
prompts per iteration, so a quarter as many iterations), continuous training without the PRM (random 2
correct responses per prompt) and with a static temperature (T = 1.0); and prints the table, whatever it
shows. ``--quick`` runs every stage on a minimal budget (for CI).

The settings live in :func:`demo_config` (``configs/demo.yaml`` is the same run as a file; a test keeps
them equal).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from mstar_fast.config import RunConfig, apply_overrides, config_from_dict, load_config
from mstar_fast.demo.threads import pick_threads
from mstar_fast.errors import UserError
from mstar_fast.recipe.loop import run
from mstar_fast.recipe.plot import plot_run
from mstar_fast.train.distributed import World

__all__ = ["DEMO", "QUICK", "demo_config", "run_demo", "BASELINES"]

#: The demo run (``configs/demo.yaml`` holds the same values).
DEMO: dict[str, Any] = {
    "run_dir": "runs/demo",
    "seed": 0,
    "model": {"policy": "tiny", "device": "cpu", "threads": 0,
              "tiny": {"arch": "qwen2_vl", "vocab_size": 768, "hidden_size": 128, "num_layers": 4, "num_heads": 4,
                       "image_size": 64, "patch_size": 8, "vision_layers": 2, "seed": 0,
                       "base_prompts": 600, "base_steps": 80, "base_lr": 1e-3, "base_batch_size": 32,
                       "base_hint_fraction": 0.5}},
    "data": {"train": "synthetic", "val": "synthetic", "test": "synthetic", "n_train": 1600, "n_val": 64,
             "n_test": 200, "synthetic_families": ["grid_geometry"], "synthetic_levels": [1],
             "synthetic_image_size": 64, "include_choices": True},
    "rollout": {"max_new_tokens": 72, "max_batch_rows": 512},
    "warmup": {"n_prompts": 400, "samples": 4, "temperature": 0.5, "keep_per_prompt": 2, "epochs": 1,
               "lr": 1e-3},
    "prm": {"n_prompts": 96, "samples": 4, "temperature": 1.0, "m": 4, "soft": True, "lr": 5e-4, "epochs": 2,
            "batch_size": 16},
    "iterate": {"iterations": 8, "interval": 0.25, "k": 16, "select": "topk", "select_k": 2, "epochs": 2},
    "temperature": {"initial": 0.7, "grid": [0.5, 0.7, 0.9, 1.1, 1.3], "adapt_every": 2,
                    "criterion": "reward_pass_at_2"},
    "monitor": {"k": 8, "n_val": 64, "test_every": 0},
    "train": {"mode": "continuous", "lr": 3e-4, "lr_schedule": "constant", "warmup_steps": 0,
              "global_batch_size": 32, "micro_batch_size": 32, "max_grad_norm": 1.0, "log_every": 0},
    "log": {"progress": True, "tensorboard": True, "keep_checkpoints": 2},
}

#: ``--quick``: every stage, minimal budget.
QUICK: list[str] = [
    "data.n_train=96", "data.n_val=16", "data.n_test=32",
    "model.tiny.base_prompts=96", "model.tiny.base_steps=20", "model.tiny.hidden_size=64", "model.tiny.num_layers=2",
    "warmup.n_prompts=32", "warmup.samples=2",
    "prm.n_prompts=8", "prm.samples=2", "prm.m=2", "prm.epochs=1",
    "iterate.iterations=2", "iterate.k=4", "monitor.k=4", "rollout.max_new_tokens=48",
]

#: name -> config overrides; run_demo sets each baseline's iterations from the sampling budget (module doc).
BASELINES: dict[str, list[str]] = {
    "iterative_rft": ["train.mode=iterative_rft", "iterate.interval=1.0"],
    "rest_em": ["train.mode=rest_em", "iterate.interval=1.0"],
    "continuous_no_prm": ["iterate.select=random", "temperature.criterion=pass_at_k"],
    "static_t": ["temperature.criterion=static", "temperature.initial=1.0"],
}


def demo_config(quick: bool = False, out: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The demo's :class:`RunConfig` (``quick``: the CI budget), with ``overrides`` applied."""
    cfg = config_from_dict(DEMO)
    if quick:
        apply_overrides(cfg, QUICK)
        cfg.run_dir = "runs/demo-quick"
    if out is not None:
        cfg.run_dir = str(out)
    apply_overrides(cfg, list(overrides))
    cfg.validate()
    return cfg


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _choose_threads(cfg: RunConfig) -> None:
    """``model.threads: 0`` on a CPU, one process: set it to the count a short measurement finds fastest here
    (:func:`mstar_fast.demo.threads.pick_threads`; a fixed count is kept, and under torchrun the processes
    share the cores, so torch's default stays)."""
    if cfg.model.threads or cfg.model.device != "cpu" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    n, times = pick_threads()
    cfg.model.threads = n
    print("torch threads: " + str(n) + " (fastest on a short measurement of the demo's work: "
          + ", ".join(f"{k} thread{'s' if k > 1 else ''} {1000 * v:.0f} ms" for k, v in times.items()) + ")",
          flush=True)


def _share_stages(src: Path, dst: Path) -> None:
    """Start a baseline run from the M-STaR run's base model, warm-up model and PRM (copied: the stages
    are skipped when their outputs exist)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("base", "warmup", "prm"):
        if (src / name).is_dir() and not (dst / name).exists():
            shutil.copytree(src / name, dst / name)
    if (src / "stages.json").is_file() and not (dst / "stages.json").exists():
        shutil.copy2(src / "stages.json", dst / "stages.json")


def run_demo(quick: bool = False, compare: bool = False, out: str | None = None,
             overrides: list[str] | tuple[str, ...] = (), resume: bool = False) -> dict[str, Any]:
    """Run the demo (and with ``compare`` the baselines); print the results; return them.

    Returns:
        ``{"base_test_acc", "warmup_test_acc", "mstar_test_acc", "seconds", "baselines": {name: acc}}``.
    """
    t0 = time.perf_counter()
    cfg = demo_config(quick, out, overrides)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not resume and (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} already holds a demo run; pass --out NEW_DIR, delete it, or resume it with "
                         f"`mstar run --resume {run_dir}`")
    if resume and (run_dir / "config.yaml").is_file():
        # The count the run started with (saved in its config): another count would round differently, and a
        # resumed run must equal an uninterrupted one.
        cfg.model.threads = load_config(run_dir / "config.yaml", []).model.threads
    else:
        _choose_threads(cfg)
    rows = run(cfg, resume=resume)
    final = rows[-1]
    result: dict[str, Any] = {"base_test_acc": final.get("base_test_acc"),
                              "warmup_test_acc": final.get("warmup_test_acc"),
                              "mstar_test_acc": final.get("test_greedy_acc"), "baselines": {}}
    if World.current().is_main:
        msg = plot_run(run_dir)
        print(msg)
    if compare:
        budget = cfg.iterate.iterations * cfg.iterate.interval  # prompts sampled, in units of the train set
        for name, extra in BASELINES.items():
            bcfg = demo_config(quick, str(run_dir.parent / f"{run_dir.name}-{name}"), list(overrides) + extra)
            bcfg.iterate.iterations = max(1, math.ceil(budget / bcfg.iterate.interval - 1e-9))
            bcfg.model.threads = cfg.model.threads  # measured once, at the start
            if World.current().is_main:
                _share_stages(run_dir, Path(bcfg.run_dir))
            World.current().barrier()
            print(f"\n=== baseline {name}: {' '.join(extra)}, {bcfg.iterate.iterations} iterations ===", flush=True)
            brows = run(bcfg, resume=True)
            result["baselines"][name] = brows[-1].get("test_greedy_acc")
    result["seconds"] = time.perf_counter() - t0
    if World.current().is_main:
        print()
        print("| model | test greedy accuracy (%) |")
        print("|---|---:|")
        print(f"| base (short SFT on gold reasoning) | {_pct(result['base_test_acc'])} |")
        print(f"| + warm-up | {_pct(result['warmup_test_acc'])} |")
        print(f"| + M-STaR ({cfg.iterate.iterations} iterations) | {_pct(result['mstar_test_acc'])} |")
        for name, acc in result["baselines"].items():
            print(f"| baseline: {name} | {_pct(acc)} |")
        w, m = result["warmup_test_acc"], result["mstar_test_acc"]
        if w is not None and m is not None:
            print(f"\nM-STaR vs warm-up: {100 * (m - w):+.1f} points; wall time {result['seconds'] / 60:.1f} min; "
                  f"run directory {run_dir}")
    return result
