"""Tiny models shared by the integration tests (built once per session, from configs, no hub)."""

from __future__ import annotations

import pytest
import torch

SMALL = dict(vocab_size=512, hidden_size=32, image_size=32, num_layers=2, max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """arch -> (model, processor), built on first use."""
    from mstar_fast.demo.tiny import make_tiny_vlm
    from mstar_fast.models import load_policy

    root = tmp_path_factory.mktemp("integration_models")
    cache: dict = {}

    def get(arch: str, **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = load_policy(make_tiny_vlm(arch, root / f"{arch}-{len(cache)}", **{**SMALL, **overrides}))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_images():
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    return [Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy())
            for _ in range(4)]
