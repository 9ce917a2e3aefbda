"""One ``RolloutEngine.generate`` call: stage prompts (encode, check length), prefill each prompt once,
admit its rows into the running batch while the token budget allows, decode all live rows step by step,
and turn finished rows into :class:`~mstar_fast.data.records.Sample` records.

Failures that belong to one prompt (an image that cannot be opened, a prompt longer than the context, a
processor error) become ``finish_reason="error"`` samples for that prompt only.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any

import torch

from mstar_fast.data.records import Prompt, Sample
from mstar_fast.models.families import cast_floating_inputs, rope_deltas, stack_encodings
from mstar_fast.models.prompting import PromptError, encode_prompt
from mstar_fast.ops import sample_from_logits
from mstar_fast.ops.sample_from_logits import raise_for_status
from mstar_fast.rollout import kv, shared_prefix
from mstar_fast.rollout.batch import Entry, Group, RunningBatch
from mstar_fast.rollout.fallback import generate_group
from mstar_fast.rollout.params import SamplingParams
from mstar_fast.rollout.seeds import sample_seed
from mstar_fast.rollout.stopping import StopChecker, truncate_at_stop

log = logging.getLogger("mstar_fast.rollout.engine")


class Run:
    """State of one ``generate`` call: the queue of prompts, the running batch, the results."""

    def __init__(self, eng: Any, prompts: list[Prompt], n: int, params: list[SamplingParams],
                 max_new_tokens: int, stop: list[str], seed: int):
        self.eng, self.prompts, self.n, self.params = eng, prompts, n, params
        self.max_new_tokens, self.stop, self.seed = max_new_tokens, stop, seed
        self.checker = StopChecker(stop, eng.tokenizer)
        self.results: list[list[Sample]] = [[] for _ in prompts]
        self.bar: Any = None
        self.eos = torch.tensor(eng.eos_ids, dtype=torch.long, device=eng.device)

    def progress_bar(self):
        from tqdm.auto import tqdm

        total = len(self.prompts) * self.n
        show = self.eng.progress
        self.bar = tqdm(total=total, desc="rollout", unit="sample", leave=False,
                        disable=(None if total >= 64 else True) if show is None else not show)
        return self.bar

    # ------------------------------------------------------------------ scheduling
    def execute(self) -> None:
        batch = RunningBatch(self.eng.device, shared=bool(self.eng.shared_prefix))
        queue = deque(range(len(self.prompts)))
        staged: tuple[Group, dict] | None = None
        while True:
            entries: list[Entry] = []
            if staged is not None or queue:
                batch.compact()  # free the finished rows' room for waiting prompts
            rows, reserved = len(batch), batch.reserved
            pending: list[tuple[Group, dict]] = []  # admitted, prefilled together below
            while staged is not None or queue:  # admit prompts while they fit
                if staged is None:
                    staged = self._stage(queue.popleft())
                    if staged is None:
                        continue
                g = staged[0]
                if not self.eng.prefix_sharing:
                    self._run_fallback(*staged)
                    staged = None
                    continue
                if (rows or entries or pending) and not self._fits(batch, rows, reserved, g):
                    break
                if self.eng.batch_prefill:
                    # The cache merges (engine probe): prefill this prompt with the others of its length.
                    pending.append(staged)
                    rows += g.rows
                    reserved += batch.cost(g.prompt_len, g.limit, g.rows)
                    staged = None
                    continue
                entry = self._prefill_group(*staged, alone=not (rows or entries))
                staged = None
                if entry is not None:
                    entries.append(entry)
                    rows += len(entry[4])
                    reserved += batch.cost(g.prompt_len, g.limit, len(entry[4]))
            entries += self._prefill_pending(pending)
            batch.add(entries)
            if not len(batch) or batch.n_dead == len(batch):
                batch.compact()
                if staged is None and not queue:
                    return
                continue
            self._step(batch)

    def _fits(self, batch: RunningBatch, rows: int, reserved: int, g: Group) -> bool:
        e = self.eng
        return (e.mergeable is not False and rows + g.rows <= e.max_batch_rows
                and reserved + batch.cost(g.prompt_len, g.limit, g.rows) <= e.max_batch_tokens)

    def _stage(self, i: int) -> tuple[Group, dict] | None:
        """Encode prompt ``i``; on a per-prompt failure, record error samples and return None."""
        p, e = self.prompts[i], self.eng
        seeds = [sample_seed(self.seed, p.id, k) for k in range(self.n)]
        try:
            if e.capabilities.needs_image and not p.images:
                raise PromptError(f"prompt {p.id!r} has no image, which model family {e.capabilities.family!r} "
                                  "needs (its prefix-LM mask and positions come from the image tokens)")
            enc = encode_prompt(e.processor, p, **e.format_kwargs)
            plen = int(enc["input_ids"].shape[1])
            if plen >= e.max_model_len:
                raise PromptError(f"prompt {p.id!r} has {plen} tokens but the model context is {e.max_model_len} "
                                  "(no room for a new token)")
        except Exception as err:  # data-dependent failures (bad image, processor mismatch) stay per prompt
            self._fail(i, seeds, err)
            return None
        g = Group(order=i, prompt=p, n=self.n, params=self.params[i], seeds=seeds, prompt_len=plen,
                  limit=min(self.max_new_tokens, e.max_model_len - plen), samples=[None] * self.n)
        return g, enc

    def _fail(self, i: int, seeds: list[int], err: Exception) -> None:
        msg = str(err) if isinstance(err, PromptError) else f"{type(err).__name__}: {err}"
        log.warning("rollout: prompt %r failed: %s", self.prompts[i].id, msg)
        t = self.params[i].temperature
        self.results[i] = [Sample(prompt_id=self.prompts[i].id, index=k, text="", temperature=t, seed=seeds[k],
                                  finish_reason="error", meta={"error": msg}) for k in range(self.n)]
        self.bar.update(self.n)

    # ------------------------------------------------------------------ model calls
    def _inputs(self, enc: dict) -> dict:
        e = self.eng
        drop = e.capabilities.drop_inputs  # e.g. PaliGemma's prefix-only `labels`
        keep = {k: v for k, v in enc.items() if (e._accepts_any or k in e._input_names) and k not in drop}
        return cast_floating_inputs(keep, e.dtype, e.device)

    def _prefill(self, enc: dict) -> tuple[Any, torch.Tensor, int]:
        """One forward over the whole prompt (vision encoder included). Returns (1-row cache, last logits
        ``[1, V]``, position id of the first generated token)."""
        e = self.eng
        for m in e._rope_holders:
            m.rope_deltas = None  # else a stale offset from the previous prompt leaks into this one
        out = e.model(**self._inputs(enc), use_cache=True, **e._extra_kw)
        delta = rope_deltas(e._rope_holders, 1)[0]
        next_pos = int(enc["input_ids"].shape[1]) + delta + e.capabilities.position_offset  # PaliGemma: from 1
        return kv.output_cache(out), out.logits[:, -1], next_pos

    def _prefill_many(self, items: list[tuple[Group, dict]]) -> list[tuple[Any, torch.Tensor, int]] | None:
        """One forward over several prompts of the same token length (no padding, so every row's keys,
        values and last logits are those of its own prefill). Returns ``_prefill``'s triple per prompt, or
        None when their processor outputs do not stack or the batched forward fails (the caller then
        prefills them one by one, so a bad prompt fails alone)."""
        e = self.eng
        inputs = stack_encodings([enc for _, enc in items])
        if inputs is None:
            return None
        for m in e._rope_holders:
            m.rope_deltas = None
        try:
            out = e.model(**self._inputs(inputs), use_cache=True, **e._extra_kw)
        except Exception as err:  # noqa: BLE001 - e.g. one prompt's image features do not match its tokens
            log.debug("rollout: batched prefill of %d prompts failed (%s); prefilling them one by one", len(items), err)
            return None
        cache, n = kv.output_cache(out), len(items)
        if cache is None or not kv.supports_merge(cache):
            return None
        deltas = rope_deltas(e._rope_holders, n)  # M-RoPE: each prompt's own position offset
        plen, offset = items[0][0].prompt_len, e.capabilities.position_offset
        logits = out.logits[:, -1]
        return [(c, logits[i : i + 1], plen + deltas[i] + offset) for i, c in enumerate(kv.split_rows(cache, n))]

    def _prefill_pending(self, pending: list[tuple[Group, dict]]) -> list[Entry]:
        """Prefill the admitted prompts, those of equal token length together (``max_prefill_tokens`` per
        forward), and draw their first tokens."""
        by_len: dict[int, list[tuple[Group, dict]]] = {}
        for item in pending:
            by_len.setdefault(item[0].prompt_len, []).append(item)
        entries: list[Entry] = []
        for plen, items in by_len.items():
            step = max(1, self.eng.max_prefill_tokens // plen)
            for a in range(0, len(items), step):
                chunk = items[a : a + step]
                done = self._prefill_many(chunk) if len(chunk) > 1 else None
                if done is None:
                    found = [self._prefill_group(g, enc, alone=False) for g, enc in chunk]
                else:
                    found = [self._first_tokens(g, *res) for (g, _), res in zip(chunk, done, strict=True)]
                entries += [en for en in found if en is not None]
        return entries

    def _prefill_group(self, g: Group, enc: dict, alone: bool) -> Entry | None:
        """Prefill one prompt and draw its first tokens. Returns the rows still running as a batch entry,
        or None (all rows finished at once, per-prompt error, or the model fell back to ``generate``)."""
        try:
            cache, logits, next_pos = self._prefill(enc)
        except ValueError as err:  # e.g. image features that do not match the image tokens
            self._fail(g.order, g.seeds, err)
            return None
        e = self.eng
        if e.mergeable is None and cache is not None:
            e.mergeable = kv.supports_merge(cache)
        if cache is None or not kv.supports_row_ops(cache):
            if not alone:
                raise RuntimeError("rollout: the model stopped returning a reusable KV cache mid-run")
            log.warning("rollout: %s returns no reusable KV cache; falling back to model.generate",
                        type(e.model).__name__)
            e.prefix_sharing = False
            self._run_fallback(g, enc)
            return None
        return self._first_tokens(g, cache, logits, next_pos)

    def _first_tokens(self, g: Group, cache: Any, logits: torch.Tensor, next_pos: int) -> Entry | None:
        """Draw the first token of each of ``g``'s rows from its prefill's last logits ``[1, V]``; the rows
        still running become a batch entry (None when all finished at once)."""
        rows, p = g.rows, g.params
        logits = self._suppress(logits)
        first, first_lp = sample_from_logits(logits.expand(rows, -1), temperature=p.temperature, top_k=p.top_k,
                                             top_p=p.top_p, min_p=p.min_p,
                                             seed=torch.tensor(g.seeds[:rows], device=logits.device), offset=0,
                                             return_logprobs=True)
        live, live_first, live_lp = [], [], []
        first_l = first.tolist()
        if first_l and min(first_l) < 0:  # CUDA: statuses, not errors, come back from the sampler
            raise_for_status(first)
        for r, (t, lp) in enumerate(zip(first_l, first_lp.tolist())):
            reason = self._finish_reason(t, [t], 1, g.limit)
            if reason:
                self._finalize(g, r, [t], reason, [lp])
            else:
                live.append(r)
                live_first.append(t)
                live_lp.append(lp)
        self._maybe_done(g)
        return (g, cache, next_pos, live_first, live, live_lp) if live else None

    def _step(self, batch: RunningBatch) -> None:
        """One decode step over every live row."""
        e = self.eng
        rows = len(batch)
        store = batch.store
        mask = store.step_mask()
        with shared_prefix.shared_prefix_attention(e.model) if batch.store_shared else contextlib.nullcontext():
            out = e.model(input_ids=batch.last[:, None], attention_mask=mask, position_ids=batch.next_pos[:, None],
                          use_cache=True, **{e._cache_kw: store.cache}, **e._extra_kw)
        store.check_step()
        batch.next_pos += 1
        tokens, logprobs = self._sample(self._suppress(out.logits[:, -1]), batch)
        batch.last = tokens
        batch.steps += 1
        live = batch.alive.nonzero().flatten().tolist() if batch.n_dead else range(rows)
        tl, lpl = tokens.tolist(), logprobs.tolist()
        if tl and min(tl) < 0:  # on CUDA the sampler leaves NaN / all -inf rows as statuses (no sync); raise here
            raise_for_status(tokens)
        for r in live:
            batch.tokens[r].append(tl[r])
            batch.logprobs[r].append(lpl[r])
        done = torch.isin(tokens, self.eos) if len(self.eos) else torch.zeros_like(tokens, dtype=torch.bool)
        done |= batch.steps >= batch.limit
        if self.checker:
            hits = torch.zeros_like(done)
            hits[list(live)] = torch.tensor(self.checker.hits([batch.tokens[r] for r in live]), dtype=torch.bool)
            done |= hits
        done &= batch.alive
        if not bool(done.any()):
            return
        touched: dict[int, Group] = {}
        for r in done.nonzero().flatten().tolist():
            g, toks = batch.groups[r], batch.tokens[r]
            reason = self._finish_reason(toks[-1], toks, len(toks), g.limit) or "length"
            self._finalize(g, batch.index[r], toks, reason, batch.logprobs[r])
            touched[id(g)] = g
        batch.retire(done)
        for g in touched.values():
            self._maybe_done(g)

    def _suppress(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the engine's ``suppress_token_ids`` set to -inf (a copy; unchanged when none)."""
        ids = self.eng.suppress_token_ids
        if not ids:
            return logits
        return logits.index_fill(1, torch.tensor(ids, dtype=torch.long, device=logits.device), float("-inf"))

    def _sample(self, logits: torch.Tensor, b: RunningBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row sampling; rows admitted at different times sit at different steps, hence offsets.
        Returns ``[R]`` tokens and their fp32 logprobs (``Sample.token_logprobs``)."""
        steps = b.steps
        s0 = int(steps[0])
        if bool((steps == s0).all()):
            return sample_from_logits(logits, b.temperature, b.top_k, b.top_p, b.min_p, seed=b.seeds, offset=s0,
                                      return_logprobs=True)
        out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        lps = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in torch.unique(steps).tolist():
            idx = (steps == s).nonzero().flatten()
            out[idx], lps[idx] = sample_from_logits(logits.index_select(0, idx), b.temperature[idx], b.top_k[idx],
                                                    b.top_p[idx], b.min_p[idx], seed=b.seeds[idx], offset=int(s),
                                                    return_logprobs=True)
        return out, lps

    # ------------------------------------------------------------------ finishing
    def _finish_reason(self, last: int, toks: list[int], steps: int, limit: int) -> str | None:
        if last in self.eng.eos_ids:
            return "stop"
        if self.checker and self.checker.hits([toks])[0]:
            return "stop"
        if steps >= limit:
            return "length"
        return None

    def _finalize(self, g: Group, index: int, toks: list[int], reason: str,
                  logprobs: list[float] | None = None) -> None:
        """Turn one finished row into its sample (all n samples for a greedy group). ``logprobs`` (one per
        token of ``toks``) become ``Sample.token_logprobs``; None on the ``generate`` fallback."""
        tok = self.eng.tokenizer
        body = toks[:-1] if toks and toks[-1] in self.eng.eos_ids else toks
        text = tok.decode(body, skip_special_tokens=True)
        meta: dict[str, Any] = {"prompt_tokens": g.prompt_len}
        if self.stop:
            text, hit = truncate_at_stop(text, self.stop)
            if hit is not None:
                reason, meta["stop"] = "stop", hit
        for k in (range(g.n) if g.rows == 1 and g.n > 1 else [index]):
            g.samples[k] = Sample(prompt_id=g.prompt.id, index=k, text=text, temperature=g.params.temperature,
                                  seed=g.seeds[k], finish_reason=reason, token_ids=list(toks),
                                  token_logprobs=None if logprobs is None else list(logprobs), meta=dict(meta))
            self.bar.update(1)

    def _maybe_done(self, g: Group) -> None:
        if g.done:
            self.results[g.order] = list(g.samples)

    def _run_fallback(self, g: Group, enc: dict) -> None:
        e = self.eng
        outs = generate_group(e.model, e.tokenizer, self._inputs(enc), g.n, g.params, g.limit, e.eos_ids,
                              self.stop, g.seeds[0])
        for k, (toks, by_eos) in enumerate(outs):
            reason = "stop" if by_eos else "length"
            sub = Group(order=g.order, prompt=g.prompt, n=1, params=g.params, seeds=[g.seeds[k]],
                        prompt_len=g.prompt_len, limit=g.limit, samples=[None])
            self._finalize(sub, 0, toks, reason)
            s = sub.samples[0]
            s.index = k
            g.samples[k] = s
        self._maybe_done(g)
