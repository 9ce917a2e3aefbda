"""The ``mstar`` command. Subcommands are added as the recipe's stages land (see the README)."""

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mstar", description="M-STaR self-evolving training, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample-demo", help="sample random logits on every backend: accuracy and speed")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=_sample_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
