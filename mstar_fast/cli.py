"""The ``mstar`` command.

``mstar demo [--quick] [--compare] [--out RUN_DIR]``: the embedded end-to-end demo.
``mstar run CONFIG [key=value ...]`` / ``mstar run --resume RUN_DIR``: the whole recipe from a YAML file.
``mstar warmup|prm-data|prm-train CONFIG [key=value ...]``: the stages up to that one (resumable; a later
``mstar run`` on the same run directory continues from there).
``mstar sample MODEL_DIR DATA --k K --temperature T --out FILE``: K samples per prompt into a JSONL file.
``mstar eval MODEL_DIR DATA``: accuracy per category, Pass@K, majority vote.
``mstar plot RUN_DIR``: RUN_DIR/plots/dynamics.png.
"""

from __future__ import annotations

import argparse
import sys
import time


def _sample_demo(args: argparse.Namespace) -> int:
    """Sample a batch of random logits on every backend this machine has; check each against the
    exact filtered distribution on a small vocabulary and time it on the requested size."""
    import torch

    from mstar_fast.ops import available_backends, sample_from_logits, use_backend
    from mstar_fast.ops.reference import filtered_probs_reference

    backends = [b for b in available_backends("cpu") if b != "cuda"]
    if torch.cuda.is_available():
        backends = available_backends("cuda") + backends
    print(f"backends here: {', '.join(backends)}")
    row = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 2
    probs = filtered_probs_reference(row.view(1, -1), torch.tensor([0.8]), torch.tensor([20]), torch.tensor([0.9]),
                                     torch.zeros(1))[0]
    logits = torch.randn(args.batch, args.vocab, generator=torch.Generator().manual_seed(1)) * 3
    temps = torch.linspace(0.5, 1.5, args.batch)
    print(f"{'backend':8} {'TV distance (20k draws, V=200)':>32} {'ms per call, B=%d V=%d' % (args.batch, args.vocab):>28}")
    for name in backends:
        dev = "cuda" if name == "cuda" or (name == "triton" and torch.cuda.is_available()) else "cpu"
        if name == "triton" and dev == "cpu":
            continue  # the CPU interpreter is for tests, not for timing
        n = 20_000
        with use_backend(name):
            tok = sample_from_logits(row.expand(n, -1).contiguous().to(dev), temperature=0.8, top_k=20, top_p=0.9,
                                     seed=torch.arange(n, device=dev)).cpu()
            tv = 0.5 * (torch.bincount(tok, minlength=200).double() / n - probs).abs().sum().item()
            x, t = logits.to(dev), temps.to(dev)
            sample_from_logits(x, temperature=t, top_p=0.9, seed=0)
            repeat = 1 if name == "torch" else args.repeat  # the sort-based reference takes seconds
            t0 = time.perf_counter()
            for _ in range(repeat):
                sample_from_logits(x, temperature=t, top_p=0.9, seed=0)
            if dev == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / repeat * 1e3
        print(f"{name:8} {tv:32.4f} {ms:28.2f}")
    return 0


def _overrides_config(args: argparse.Namespace) -> object:
    from mstar_fast.config import load_config

    return load_config(args.config, args.overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mstar_fast.recipe.demo import run_demo

    run_demo(quick=args.quick, compare=args.compare, out=args.out, overrides=args.overrides, resume=args.resume)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mstar_fast.recipe.loop import resume, run

    if args.resume:
        if args.config or args.overrides:
            raise ValueError("mstar run --resume RUN_DIR takes no CONFIG or overrides: the run's saved "
                             "config.yaml is used")
        resume(args.resume)
        return 0
    if not args.config:
        raise ValueError("mstar run: give a CONFIG file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    run(_overrides_config(args))
    return 0


def _stage_cmd(stop_after: str):
    def cmd(args: argparse.Namespace) -> int:
        from mstar_fast.recipe.loop import run

        run(_overrides_config(args), resume=True, stop_after=stop_after)
        return 0

    return cmd


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from mstar_fast.evaluate import grade_samples, load_eval_prompts
    from mstar_fast.models import load_policy
    from mstar_fast.recipe.sample import sample_to_file
    from mstar_fast.rollout import RolloutEngine

    prompts, _ = load_eval_prompts(args.data, split=args.split, limit=args.limit)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load_policy(args.model_dir, device=device, trust_remote_code=args.trust_remote_code)
    engine = RolloutEngine(model, processor, include_choices=args.include_choices, progress=False)
    labeled = {p.id: p for p in prompts if p.answer is not None}

    def grade(out: list) -> None:
        known = [s for s in out if s.prompt_id in labeled]
        if known:
            grade_samples(known, labeled)

    samples = sample_to_file(engine, prompts, args.k, args.out, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, transform=grade, progress=True)
    graded = [s for s in samples if s.correct is not None]
    acc = f", {100 * sum(bool(s.correct) for s in graded) / len(graded):.1f}% correct" if graded else ""
    print(f"{len(samples)} samples of {len(prompts)} prompts in {args.out}{acc}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from mstar_fast.recipe.plot import plot_run

    print(plot_run(args.run_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mstar", description="M-STaR self-evolving training, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample-demo", help="sample random logits on every backend: accuracy and speed")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=_sample_demo)

    p = sub.add_parser("demo", help="the whole recipe on a tiny VLM and the synthetic task (CPU, minutes)")
    p.add_argument("--quick", action="store_true", help="every stage on a minimal budget (CI)")
    p.add_argument("--compare", action="store_true", help="also run the baselines of the paper's Tables 1-2")
    p.add_argument("--out", default=None, help="run directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--resume", action="store_true", help="continue a demo run in --out")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. iterate.iterations=4)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="run the recipe from a YAML config, or resume a run directory")
    p.add_argument("config", nargs="?", default=None, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys (train.lr=2e-5)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue RUN_DIR from its last checkpoint")
    p.set_defaults(func=_cmd_run)

    for name, stop, text in (("warmup", "warmup", "base model and warm-up only"),
                             ("prm-data", "prm-data", "up to the PRM's Monte-Carlo step labels"),
                             ("prm-train", "prm", "up to the trained PRM")):
        p = sub.add_parser(name, help=f"{text} (into the config's run_dir; resumable)")
        p.add_argument("config", help="YAML config")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=_stage_cmd(stop))

    p = sub.add_parser("sample", help="K samples per prompt from a model into an append-only JSONL file")
    p.add_argument("model_dir")
    p.add_argument("data", help="dataset path, or synthetic[:SPLIT[:N]]")
    p.add_argument("--out", required=True, help="JSONL file (resumable: prompts already complete are skipped)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--include-choices", action="store_true", help="append options as (A) ... lines")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=_cmd_sample)

    from mstar_fast.evaluate import register_cli

    register_cli(sub)

    p = sub.add_parser("plot", help="draw RUN_DIR/plots/dynamics.png from RUN_DIR/metrics.jsonl")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_plot)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mstar {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
