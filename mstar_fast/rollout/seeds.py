"""Per-sample seeds: a sample's randomness depends on (run seed, prompt id, sample index) only, so the same
run gives the same samples whatever the batch size, prompt order or number of processes."""

from __future__ import annotations

import hashlib


def sample_seed(seed: int, prompt_id: str, index: int) -> int:
    """A signed 64-bit seed for sample ``index`` of prompt ``prompt_id`` (blake2b of the three)."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{prompt_id}\x1f{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
