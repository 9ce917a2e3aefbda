"""Fallback for models whose code does not expose a reusable KV cache (some remote-code VLMs): one
``model.generate`` call per prompt with ``num_return_sequences=n``, behind the same engine API.

What is lost against the built-in path: the prompt is prefilled n times, and samples are reproducible
per (seed, prompt id) but not per sample (the n draws share torch's generator, seeded per prompt).
"""

from __future__ import annotations

from typing import Any

import torch

from mstar_fast.rollout.params import SamplingParams


def generate_group(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, Any],
    n: int,
    params: SamplingParams,
    max_new_tokens: int,
    eos_ids: list[int],
    stop: list[str],
    seed: int,
) -> list[tuple[list[int], bool]]:
    """``n`` completions of one encoded prompt (batch of 1) via ``model.generate``.

    Returns:
        Per sample: ``(generated ids up to and including the first EOS, ended_by_eos)``.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": eos_ids, "pad_token_id": pad}
    if params.temperature == 0:
        kwargs["do_sample"] = False
        reps = 1  # greedy: one sequence, copied n times
    else:
        kwargs.update(do_sample=True, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                      min_p=params.min_p if params.min_p > 0 else None, num_return_sequences=n)
        reps = n
    if stop:
        kwargs.update(stop_strings=stop, tokenizer=tokenizer)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)
        out = model.generate(**inputs, **kwargs)
    seqs = out.sequences if hasattr(out, "sequences") else out
    results = []
    eos = set(eos_ids)
    for row in seqs[:, prompt_len:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        if cut is not None:
            results.append((row[: cut + 1], True))
            continue
        while row and row[-1] == pad:  # a row stopped by a stop string is padded to the longest
            row = row[:-1]
        results.append((row, False))
    return results * (n // reps)
