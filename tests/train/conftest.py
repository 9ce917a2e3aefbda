"""Fixtures of the training tests: tiny random models written once per session, one torch thread."""

from __future__ import annotations

import pytest
import torch

from mstar_fast.data.records import Prompt, Sample


@pytest.fixture(autouse=True)
def _train_one_thread(one_thread):
    """Every train test runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Lazily built tiny model directories, keyed by arch."""
    from mstar_fast.demo.tiny import make_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[str, object] = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = make_tiny_vlm(arch, root / arch, vocab_size=320, hidden_size=32, image_size=16,
                                        patch_size=4, num_layers=2, seed=0)
        return cache[arch]

    return get


def load(path, dropout: float = 0.0):
    """(model, processor) from a tiny model dir; ``dropout`` > 0 turns attention dropout on (RNG use)."""
    from mstar_fast.models import load_policy

    model, processor = load_policy(path)
    if dropout:
        for m in model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = dropout
    return model, processor


def qa_pairs(n: int, images: list | None = None, seed: int = 0) -> list[tuple[Prompt, Sample]]:
    """n (Prompt, Sample) pairs of arithmetic with step-by-step answers, of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a, b = (int(v) for v in torch.randint(1, 50, (2,), generator=g))
        steps = "\n\n".join(f"Step {k + 1}: add {a} and {b}." for k in range(1 + i % 3))
        p = Prompt(id=f"q{seed}-{i}", question=f"What is {a} + {b}?", images=list(images or []), answer=str(a + b))
        out.append((p, Sample(prompt_id=p.id, index=0, text=f"{steps}\n\n# Answer\n\n{a + b}")))
    return out
