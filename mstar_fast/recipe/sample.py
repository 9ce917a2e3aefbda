"""The sampling stage: K responses per prompt into an append-only JSONL file, resumable and shardable.

Each prompt's samples depend only on (run seed, prompt id, sample index) (the rollout engine's per-sample
seeds are batch-invariant), so a restarted stage regenerates exactly the samples a killed one would have
written. The file is the source of truth: prompts whose K samples are all written (``done_keys``) are
skipped, the rest are generated in chunks, and each chunk is appended when done. Under ``torchrun`` every
rank generates a contiguous share of the missing prompts; the shares are gathered on rank 0, which alone
writes the file, and every rank reads the file back so all ranks hold the same samples.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mstar_fast.data.jsonl import JsonlWriter, done_keys, read_records
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.train import distributed as D

__all__ = ["sample_to_file", "strip_for_storage"]

log = logging.getLogger("mstar_fast")


def strip_for_storage(s: Sample) -> Sample:
    """Drop in-memory objects a sample's meta may hold (a Prompt with PIL images) before it is written."""
    s.meta = {k: v for k, v in s.meta.items() if k != "prompt"}
    return s


def sample_to_file(engine: Any, prompts: Sequence[Prompt], n: int, out_path: str | os.PathLike, *,
                   temperature: float | Sequence[float] = 1.0, max_new_tokens: int = 256, seed: int = 0,
                   top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, chunk_size: int = 64,
                   transform: Callable[[list[Sample]], None] | None = None,
                   progress: bool = False, desc: str = "sampling") -> list[Sample]:
    """Generate ``n`` samples for each prompt not yet complete in ``out_path``; return all samples of
    ``prompts`` (read back from the file, grouped by prompt in input order, index 0..n-1).

    Args:
        engine: a rollout engine (``generate(prompts, n, temperature=..., ...) -> list[Sample]``).
        prompts: prompts with unique ids.
        n: samples per prompt.
        out_path: the append-only JSONL file (created).
        temperature: one value, or one per prompt.
        max_new_tokens, seed, top_p, top_k, min_p: sampling settings.
        chunk_size: prompts per engine call (a kill loses at most one chunk of work).
        transform: applied in place to each generated chunk before it is written (e.g. grading).
        progress: show a tqdm bar over prompts (rank 0).
        desc: the bar's label.

    Raises:
        ValueError: repeated prompt ids, or a file holding a sample for a prompt with a different count.
    """
    prompts = list(prompts)
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sample_to_file: prompt ids must be unique ({out_path})")
    temps = list(temperature) if isinstance(temperature, (list, tuple)) else [float(temperature)] * len(prompts)
    if len(temps) != len(prompts):
        raise ValueError(f"sample_to_file: {len(temps)} temperatures for {len(prompts)} prompts")
    path = Path(out_path)
    done = done_keys(path) if D.is_main_process() else set()
    done = D.broadcast_object(done)
    # Chunks are fixed windows over the prompt list, so a resumed stage calls the engine on exactly the
    # batches an uninterrupted one would (samples are then bit-identical even where batch composition could
    # change floating-point results). A chunk with any sample missing is regenerated whole; lines already
    # in the file are not written again, so the file never holds a sample twice.
    windows = [list(range(a, min(a + chunk_size, len(prompts)))) for a in range(0, len(prompts), chunk_size)]
    todo = [w for w in windows if not all((prompts[i].id, j) in done for i in w for j in range(n))]
    world, rank = D.get_world_size(), D.get_rank()
    mine = todo[rank::world]
    rounds = -(-len(todo) // world)  # every rank runs the same number of rounds (collectives must match)
    bar = None
    if progress and D.is_main_process() and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(w) for w in todo), desc=desc, unit="prompt", leave=False)
    writer = JsonlWriter(path) if D.is_main_process() else None
    try:
        for r in range(rounds):
            window = mine[r] if r < len(mine) else []
            out: list[Sample] = []
            if window:
                out = engine.generate([prompts[i] for i in window], n=n, temperature=[temps[i] for i in window],
                                      top_p=top_p, top_k=top_k, min_p=min_p, max_new_tokens=max_new_tokens,
                                      seed=seed)
                if transform is not None:
                    transform(out)
                out = [strip_for_storage(s) for s in out]
            gathered = D.gather_to_rank0(out)
            if writer is not None and gathered is not None:
                for s in gathered:
                    if (s.prompt_id, s.index) not in done:
                        writer.write(s)
                        done.add((s.prompt_id, s.index))
                if bar is not None:
                    bar.update(len({s.prompt_id for s in gathered}))
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    D.barrier()
    by_key = {(s.prompt_id, s.index): s for s in read_records(path, Sample)}
    missing = [(p.id, j) for p in prompts for j in range(n) if (p.id, j) not in by_key]
    if missing:
        raise ValueError(f"sample_to_file: {path} lacks {len(missing)} samples after sampling (first {missing[0]})")
    return [by_key[(p.id, j)] for p in prompts for j in range(n)]
