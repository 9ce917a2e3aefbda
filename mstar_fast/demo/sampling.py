"""``mstar sample-demo``: sample a batch of random logits on every backend this machine has; check each
against the exact filtered distribution on a small vocabulary and time it on the requested size."""

from __future__ import annotations

import time

import torch

from mstar_fast import ops
from mstar_fast.ops.reference import filtered_probs_reference

__all__ = ["sample_demo"]


def sample_demo(batch: int = 64, vocab: int = 151936, repeat: int = 3) -> None:
    """Print, per backend, the total-variation distance of 20k draws from the exact distribution (V=200)
    and the time per call on ``[batch, vocab]`` logits."""
    backends = [b for b in ops.available_backends("cpu") if b != "cuda"]
    if torch.cuda.is_available():
        backends = ops.available_backends("cuda") + backends
    print(f"backends here: {', '.join(backends)}")
    row = torch.randn(200, generator=torch.Generator().manual_seed(0)) * 2
    probs = filtered_probs_reference(row.view(1, -1), torch.tensor([0.8]), torch.tensor([20]), torch.tensor([0.9]),
                                     torch.zeros(1))[0]
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(1)) * 3
    temps = torch.linspace(0.5, 1.5, batch)
    print(f"{'backend':8} {'TV distance (20k draws, V=200)':>32} {'ms per call, B=%d V=%d' % (batch, vocab):>28}")
    for name in backends:
        dev = "cuda" if name == "cuda" or (name == "triton" and torch.cuda.is_available()) else "cpu"
        if name == "triton" and dev == "cpu":
            continue  # the CPU interpreter is for tests, not for timing
        n = 20_000
        with ops.use_backend(name):
            tok = ops.sample_from_logits(row.expand(n, -1).contiguous().to(dev), temperature=0.8, top_k=20, top_p=0.9,
                                         seed=torch.arange(n, device=dev)).cpu()
            tv = 0.5 * (torch.bincount(tok, minlength=200).double() / n - probs).abs().sum().item()
            x, t = logits.to(dev), temps.to(dev)
            ops.sample_from_logits(x, temperature=t, top_p=0.9, seed=0)
            reps = 1 if name == "torch" else repeat  # the sort-based reference takes seconds
            t0 = time.perf_counter()
            for _ in range(reps):
                ops.sample_from_logits(x, temperature=t, top_p=0.9, seed=0)
            if dev == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / reps * 1e3
        print(f"{name:8} {tv:32.4f} {ms:28.2f}")
