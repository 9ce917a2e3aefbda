"""The running decode batch of the built-in engine: one row per live sample, rows of several prompts
left-padded into one KV cache, each row with its own position, sampling parameters, seed and step.

Row state lives in ``[R]`` tensors so a decode step is one model call and one sampler call; Python
lists hold only what grows per row (the generated token ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.rollout.kv import PaddedStore
from mstar_fast.rollout.params import SamplingParams
from mstar_fast.rollout.shared_prefix import SharedPrefixStore


@dataclass
class Group:
    """One prompt in flight: ``rows`` live decode rows (1 when greedy: the n samples are identical) that
    become ``n`` samples."""

    order: int  # position of the prompt in the caller's list
    prompt: Prompt
    n: int
    params: SamplingParams
    seeds: list[int]  # one per sample index
    prompt_len: int
    limit: int  # max new tokens for this prompt (max_new_tokens, capped by the context)
    samples: list[Sample | None] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return 1 if self.params.temperature == 0 else self.n

    @property
    def done(self) -> bool:
        return all(s is not None for s in self.samples)


# (group, 1-row prefill cache, next position id, first tokens, sample indices, first tokens' logprobs)
Entry = tuple[Group, Any, int, list[int], list[int], list[float]]


class RunningBatch:
    """Rows of one or more :class:`Group` sharing one KV cache (a :class:`~mstar_fast.rollout.kv.PaddedStore`,
    or a :class:`~mstar_fast.rollout.shared_prefix.SharedPrefixStore` when ``shared``).

    Row tensors ``[R]``: ``next_pos`` (position id of the token fed next), ``last`` (that token), ``steps``
    (tokens generated so far, also the sampler's Philox offset for the next draw), ``seeds``,
    ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``limit`` (max new tokens), ``alive``.
    """

    def __init__(self, device: torch.device, shared: bool = False):
        self.device, self.shared = device, shared
        self.store: Any = None
        z = lambda dt: torch.zeros(0, dtype=dt, device=device)  # noqa: E731
        self.next_pos, self.last, self.steps, self.seeds = z(torch.long), z(torch.long), z(torch.long), z(torch.long)
        self.temperature, self.top_p, self.min_p = z(torch.float32), z(torch.float32), z(torch.float32)
        self.top_k = z(torch.long)
        self.limit = z(torch.long)
        self.groups: list[Group] = []  # per row
        self.index: list[int] = []  # per row: sample index within its group
        self.tokens: list[list[int]] = []  # per row: generated ids
        self.logprobs: list[list[float]] = []  # per row: the sampler's logprob of each generated id
        self.reserved = 0  # KV positions the batch may need: see `cost`
        # Finished rows stay (decoded, ignored) until enough of them pile up: dropping rows copies the
        # per-row cache, so dropping one at a time would cost more than the few wasted row-steps.
        self.alive = torch.zeros(0, dtype=torch.bool, device=device)
        self.n_dead = 0

    def __len__(self) -> int:
        return len(self.groups)

    def cost(self, prompt_len: int, limit: int, rows: int) -> int:
        """KV positions ``rows`` rows of one prompt may hold: the prompt once when shared, else per row."""
        return prompt_len * (1 if self.shared else rows) + rows * limit

    @property
    def cache(self) -> Any:
        return self.store.cache if self.store is not None else None

    @property
    def store_shared(self) -> bool:
        """True when the rows decode with shared-prefix attention."""
        return type(self.store).__name__ == "SharedPrefixStore"

    def add(self, entries: list[Entry]) -> None:
        """Add rows for each entry ``(group, cache, next_pos, first, indices, first_logprobs)``: ``len(indices)`` rows of
        ``group`` (sample indices ``indices``) from its 1-row prefill ``cache``, whose first generated tokens
        are ``first`` and whose next position id is ``next_pos``. All entries join with one cache copy."""
        if not entries:
            return
        if self.store is None:
            shared = self.shared and all(SharedPrefixStore.can_merge(c) for _, c, *_ in entries)
            self.store = (SharedPrefixStore if shared else PaddedStore)(self.device)
        # Positions still to be written by any row: the preallocated cache is sized for them.
        room = max([g.limit for g, *_ in entries] + ([int((self.limit - self.steps).max())] if len(self) else []))
        self.store.add([(c, len(ix)) for _, c, _, _, ix, _ in entries], room)
        cols: dict[str, list] = {k: [] for k in ("next_pos", "last", "steps", "seeds", "temperature", "top_k", "top_p",
                                                  "min_p", "limit", "alive")}
        for g, _, next_pos, first, indices, first_lp in entries:
            r, p = len(indices), g.params
            for k, v in (("next_pos", next_pos), ("steps", 1), ("temperature", p.temperature), ("top_k", p.top_k),
                         ("top_p", p.top_p), ("min_p", p.min_p), ("limit", g.limit), ("alive", True)):
                cols[k] += [v] * r
            cols["last"] += first
            cols["seeds"] += [g.seeds[i] for i in indices]
            self.groups += [g] * r
            self.index += list(indices)
            self.tokens += [[t] for t in first]
            self.logprobs += [[lp] for lp in first_lp]
            self.reserved += self.cost(g.prompt_len, g.limit, r)
        for k, v in cols.items():
            old = getattr(self, k)
            setattr(self, k, torch.cat([old, torch.tensor(v, dtype=old.dtype, device=self.device)]))

    def retire(self, done: torch.Tensor) -> None:
        """Mark rows ``done [R]`` (bool, all alive) finished; compact once a quarter of the rows are dead."""
        self.alive &= ~done
        self.n_dead += int(done.sum())
        if self.n_dead * 4 >= len(self):
            self.compact()

    def compact(self) -> None:
        """Drop the finished rows from the batch and the cache."""
        if not self.n_dead:
            return
        idx = self.alive.nonzero().flatten()
        rows = idx.tolist()
        self.groups = [self.groups[r] for r in rows]
        self.index = [self.index[r] for r in rows]
        self.tokens = [self.tokens[r] for r in rows]
        self.logprobs = [self.logprobs[r] for r in rows]
        self.store.select(idx)
        for name in ("next_pos", "last", "steps", "seeds", "temperature", "top_k", "top_p", "min_p", "limit", "alive"):
            setattr(self, name, getattr(self, name).index_select(0, idx))
        self.n_dead = 0
        # The finished rows' room is free again: without this recount the budget only ever grew, so once it
        # had filled, every later prompt was admitted alone into an otherwise empty batch.
        counts: dict[int, list] = {}
        for g in self.groups:
            counts.setdefault(id(g), [g, 0])[1] += 1
        self.reserved = sum(self.cost(g.prompt_len, g.limit, r) for g, r in counts.values())
