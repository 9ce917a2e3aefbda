"""The ``mstar`` command: parses the arguments and dispatches to the module that does the work.

``mstar demo [--quick] [--compare] [--out RUN_DIR]``: the embedded end-to-end demo.
``mstar run CONFIG [key=value ...]`` / ``mstar run --resume RUN_DIR``: the whole recipe from a YAML file.
``mstar warmup|prm-data|prm-train CONFIG [key=value ...]``: the stages up to that one (resumable; a later
``mstar run`` on the same run directory continues from there).
``mstar sample MODEL_DIR DATA --k K --temperature T --out FILE``: K samples per prompt into a JSONL file.
``mstar eval MODEL_DIR DATA``: accuracy per category, Pass@K, majority vote.
``mstar plot RUN_DIR``: RUN_DIR/plots/dynamics.png.

A problem the user can fix (a bad config value, a missing file or model, a CUDA device on a machine without
one, a run directory that is read-only or on a full disk) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from mstar_fast.config import load_config
from mstar_fast.demo.run import run_demo
from mstar_fast.demo.sampling import sample_demo
from mstar_fast.evaluate import register_cli
from mstar_fast.recipe.loop import resume, run
from mstar_fast.recipe.plot import plot_run
from mstar_fast.recipe.sample import sample_model_to_file
from mstar_fast.run_lock import RunDirLockedError

__all__ = ["main"]

#: stage commands -> (``run(stop_after=...)``, help)
STAGE_COMMANDS = {"warmup": ("warmup", "base model and warm-up only"),
                  "prm-data": ("prm-data", "up to the PRM's Monte-Carlo step labels"),
                  "prm-train": ("prm", "up to the trained PRM")}


def _cmd_run(args: argparse.Namespace) -> None:
    if args.resume:
        if args.config or args.overrides:
            raise ValueError("mstar run --resume RUN_DIR takes no CONFIG or overrides: the run's saved "
                             "config.yaml is used")
        resume(args.resume)
    elif not args.config:
        raise ValueError("mstar run: give a CONFIG file (e.g. configs/demo.yaml) or --resume RUN_DIR")
    else:
        run(load_config(args.config, args.overrides))


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its return value, 0 for commands that return nothing."""
    cmd = args.command
    if cmd == "sample-demo":
        sample_demo(args.batch, args.vocab, args.repeat)
    elif cmd == "demo":
        run_demo(quick=args.quick, compare=args.compare, out=args.out, overrides=args.overrides, resume=args.resume)
    elif cmd == "run":
        _cmd_run(args)
    elif cmd in STAGE_COMMANDS:
        run(load_config(args.config, args.overrides), resume=True, stop_after=STAGE_COMMANDS[cmd][0])
    elif cmd == "sample":
        sample_model_to_file(args.model_dir, args.data, args.k, args.out, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, seed=args.seed, split=args.split, limit=args.limit,
                             device=args.device, include_choices=args.include_choices,
                             trust_remote_code=args.trust_remote_code)
    elif cmd == "plot":
        print(plot_run(args.run_dir))
    else:  # subcommands registered by other modules (``eval``) carry their handler
        return int(args.func(args) or 0)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mstar", description="M-STaR self-evolving training, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample-demo", help="sample random logits on every backend: accuracy and speed")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--repeat", type=int, default=3)

    p = sub.add_parser("demo", help="the whole recipe on a tiny VLM and the synthetic task (CPU, minutes)")
    p.add_argument("--quick", action="store_true", help="every stage on a minimal budget (CI)")
    p.add_argument("--compare", action="store_true", help="also run the baselines of the paper's Tables 1-2")
    p.add_argument("--out", default=None, help="run directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--resume", action="store_true", help="continue a demo run in --out")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. iterate.iterations=4)")

    p = sub.add_parser("run", help="run the recipe from a YAML config, or resume a run directory")
    p.add_argument("config", nargs="?", default=None, help="YAML config (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides with dotted keys (train.lr=2e-5)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue RUN_DIR from its last checkpoint")

    for name, (_, text) in STAGE_COMMANDS.items():
        p = sub.add_parser(name, help=f"{text} (into the config's run_dir; resumable)")
        p.add_argument("config", help="YAML config")
        p.add_argument("overrides", nargs="*", help="key=value overrides")

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

    register_cli(sub)

    p = sub.add_parser("plot", help="draw RUN_DIR/plots/dynamics.png from RUN_DIR/metrics.jsonl")
    p.add_argument("run_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, RunDirLockedError) as e:  # UserError is a ValueError
        text = str(e).removeprefix(f"mstar {args.command}: ")  # messages that already name the command
        print(f"mstar {args.command}: error: {text}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only run directory, a full disk (ENOSPC), a model the hub cannot serve
        where = f": {e.filename}" if e.filename else ""
        text = e.strerror or (str(e).splitlines() or [type(e).__name__])[0]
        print(f"mstar {args.command}: error: {text}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
