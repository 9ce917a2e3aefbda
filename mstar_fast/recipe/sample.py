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

from tqdm.auto import tqdm

from mstar_fast.data.jsonl import JsonlWriter, done_keys, read_records
from mstar_fast.data.records import Prompt, Sample
from mstar_fast.evaluate import load_eval_prompts
from mstar_fast.models import load_policy, resolve_device
from mstar_fast.protocols import Rollout
from mstar_fast.rewards import grade_samples
from mstar_fast.rollout import RolloutEngine
from mstar_fast.train.distributed import World

__all__ = ["sample_model_to_file", "sample_to_file", "strip_for_storage"]

log = logging.getLogger("mstar_fast")


def strip_for_storage(s: Sample) -> Sample:
    """Drop in-memory objects a sample's meta may hold (a Prompt with PIL images) before it is written."""
    s.meta = {k: v for k, v in s.meta.items() if k != "prompt"}
    return s


def sample_to_file(engine: Rollout, prompts: Sequence[Prompt], n: int, out_path: str | os.PathLike, *,
                   temperature: float | Sequence[float] = 1.0, max_new_tokens: int = 256, seed: int = 0,
                   top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, chunk_size: int = 64,
                   transform: Callable[[list[Sample]], None] | None = None,
                   progress: bool = False, desc: str = "sampling", world: World | None = None) -> list[Sample]:
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
        world: the processes that share the work (default: the torchrun world; ``World.single()`` for one
            process working alone while the others wait).

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
    world = world or World.current()
    done = world.broadcast(done_keys(path) if world.is_main else set())
    # Chunks are fixed windows over the prompt list, so a resumed stage calls the engine on exactly the
    # batches an uninterrupted one would (samples are then bit-identical even where batch composition could
    # change floating-point results). A chunk with any sample missing is regenerated whole; lines already
    # in the file are not written again, so the file never holds a sample twice.
    windows = [list(range(a, min(a + chunk_size, len(prompts)))) for a in range(0, len(prompts), chunk_size)]
    todo = [w for w in windows if not all((prompts[i].id, j) in done for i in w for j in range(n))]
    mine = todo[world.rank::world.size]
    rounds = -(-len(todo) // world.size)  # every rank runs the same number of rounds (collectives must match)
    bar = None
    if progress and world.is_main and todo:
        bar = tqdm(total=sum(len(w) for w in todo), desc=desc, unit="prompt", leave=False)
    writer = JsonlWriter(path) if world.is_main else None
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
            gathered = world.gather(out)
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
    world.barrier()
    by_key = {(s.prompt_id, s.index): s for s in read_records(path, Sample)}
    missing = [(p.id, j) for p in prompts for j in range(n) if (p.id, j) not in by_key]
    if missing:
        raise ValueError(f"sample_to_file: {path} lacks {len(missing)} samples after sampling (first {missing[0]})")
    return [by_key[(p.id, j)] for p in prompts for j in range(n)]


def sample_model_to_file(model_dir: str, data: str, k: int, out: str | os.PathLike, *, temperature: float = 1.0,
                         max_new_tokens: int = 256, seed: int = 0, split: str | None = None,
                         limit: int | None = None, device: str = "auto", include_choices: bool = False,
                         trust_remote_code: bool = False) -> list[Sample]:
    """``mstar sample``: ``k`` samples per prompt of ``data`` (a dataset path or ``synthetic[:SPLIT[:N]]``)
    from the model in ``model_dir`` into the append-only ``out`` file (resumable); samples of labeled prompts
    are graded. Prints a one-line summary; returns the samples.

    Raises:
        UserError: ``device`` names a CUDA device on a machine without one.
    """
    prompts, _ = load_eval_prompts(data, split=split, limit=limit)
    dev = resolve_device(device, what="--device")
    model, processor = load_policy(model_dir, device=dev, trust_remote_code=trust_remote_code)
    engine = RolloutEngine(model, processor, include_choices=include_choices, progress=False)
    labeled = {p.id: p for p in prompts if p.answer is not None}

    def grade(batch: list[Sample]) -> None:
        known = [s for s in batch if s.prompt_id in labeled]
        if known:
            grade_samples(known, labeled)

    samples = sample_to_file(engine, prompts, k, out, temperature=temperature, max_new_tokens=max_new_tokens,
                             seed=seed, transform=grade, progress=True)
    graded = [s for s in samples if s.correct is not None]
    acc = f", {100 * sum(bool(s.correct) for s in graded) / len(graded):.1f}% correct" if graded else ""
    print(f"{len(samples)} samples of {len(prompts)} prompts in {out}{acc}")
    return samples
