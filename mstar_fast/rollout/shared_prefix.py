"""Shared-prefix decoding: one copy of each prompt's keys/values for all its samples.

The n samples of a prompt share the prompt's KV cache (often hundreds of image tokens). Repeating it n
times (what ``generate(num_return_sequences=n)`` and :class:`~mstar_fast.rollout.kv.PaddedStore` do)
multiplies its memory by n and makes every decode step read it n times. Here each layer keeps

* the **prefix**: ``[G, Hkv, P, D]``, one row per prompt (group), right-padded to the longest prompt, and
* the **suffix**: ``[R, Hkv, S, D]``, one row per sample: the tokens generated so far (rows admitted later
  start at a later column, ``start[r]``),

and a decode step's attention is computed in two parts merged by their log-sum-exp (cascade attention):
the queries of all samples of a group against the group's prefix (one matrix product per group, the
prefix read once), and each sample's query against its own suffix.

Wiring into any ``transformers`` model: a custom attention implementation is registered with
``AttentionInterface`` and switched on for the text decoder only, inside :func:`shared_prefix_attention`.
Each :class:`SharedPrefixLayer` ``update`` marks itself pending; the attention function that the model
calls right after consumes it. Calls that find nothing pending (the prefill, on the model's own cache)
go to the model's original attention, with its original mask function. Models whose attention does not
go through ``AttentionInterface`` are detected by a probe (:func:`probe`), and the engine keeps the padded
store for them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from mstar_fast.rollout.kv import output_cache, supports_merge

log = logging.getLogger(__name__)

_PREFIX = "mstar_shared_prefix_"


class _Pending:
    layer: SharedPrefixLayer | None = None


_PENDING = _Pending()  # the layer whose update the next attention call must read (single-threaded forward)


class Layout:
    """Which group each row belongs to, shared by all layers: ``plen [G]`` prompt lengths, ``row_group [R]``,
    ``row_slot [R]`` (rank of the row in its group; rows of a group are contiguous), ``start [R]`` first
    valid suffix column."""

    def __init__(self, device: torch.device):
        z = torch.zeros(0, dtype=torch.long, device=device)
        self.plen, self.row_group, self.row_slot, self.start = z, z, z, z
        self.nmax = 0
        self._masks: dict[tuple[str, int], torch.Tensor | None] = {}

    def refresh(self) -> None:
        """Recompute slots from ``row_group`` (contiguous groups) and drop cached masks."""
        r = self.row_group.numel()
        if r:
            first = torch.full((int(self.row_group.max()) + 1,), r, dtype=torch.long, device=self.row_group.device)
            first.scatter_reduce_(0, self.row_group, torch.arange(r, device=first.device), reduce="amin")
            self.row_slot = torch.arange(r, device=first.device) - first[self.row_group]
            self.nmax = int(self.row_slot.max()) + 1
        self._masks.clear()

    @property
    def flat(self) -> torch.Tensor:
        """``[R]`` index of each row in the ``[G * nmax]`` padded query layout."""
        return self.row_group * self.nmax + self.row_slot

    def prefix_bias(self, pmax: int) -> torch.Tensor | None:
        """``[G, 1, 1, pmax]`` additive mask (0 on real prompt positions, -inf on padding); None if none."""
        key = ("p", pmax)
        if key not in self._masks:
            cols = torch.arange(pmax, device=self.plen.device)
            valid = cols[None, :] < self.plen[:, None]
            self._masks[key] = None if bool(valid.all()) else _bias(valid)[:, None, None, :]
        return self._masks[key]

    def suffix_bias(self, s: int) -> torch.Tensor | None:
        """``[R, 1, 1, s]`` additive mask (0 on each row's own generated positions); None if all valid."""
        key = ("s", s)
        if key not in self._masks:
            self._masks = {k: v for k, v in self._masks.items() if k[0] != "s"}  # one step's mask at a time
            if not bool((self.start > 0).any()):
                self._masks[key] = None
            else:
                cols = torch.arange(s, device=self.start.device)
                self._masks[key] = _bias(cols[None, :] >= self.start[:, None])[:, None, None, :]
        return self._masks[key]


def _bias(valid: torch.Tensor) -> torch.Tensor:
    return torch.zeros(valid.shape, device=valid.device).masked_fill_(~valid, float("-inf"))


def _layer_base() -> type:
    from transformers.cache_utils import DynamicLayer  # a CacheLayerMixin, as Cache requires

    return DynamicLayer


class SharedPrefixLayer(_layer_base()):  # type: ignore[misc]
    """One layer's cache: group prefixes ``[G, Hkv, Pmax, D]`` and per-row suffixes ``[R, Hkv, cap, D]``.
    ``keys`` / ``values`` are the suffix views (what generic cache code may inspect for the batch size)."""

    is_sliding = False
    is_croppable = False

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        self.pk = self.pv = self.sk = self.sv = None
        self.slen = 0
        self.updates = self.attended = 0
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self.sk[:, :, : self.slen], self.sv[:, :, : self.slen]

    # ---- the part of the transformers cache-layer interface a decode step uses
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self.slen + n > self.sk.shape[2]:  # out of room (the engine plans capacity, so rare)
            self.sk = _grow(self.sk, self.slen, self.slen + n)
            self.sv = _grow(self.sv, self.slen, self.slen + n)
        self.sk[:, :, self.slen : self.slen + n] = key_states
        self.sv[:, :, self.slen : self.slen + n] = value_states
        self.slen += n
        self.updates += 1
        _PENDING.layer = self
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return (self.pk.shape[2] if self.pk is not None else 0) + self.slen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    # ---- cascade attention for one decode step
    def attend(self, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """``query [R, Hq, 1, D]`` -> attention output ``[R, 1, Hq, D]`` over prefix + own suffix."""
        lay = self.layout
        r, hq, _, d = query.shape
        g, hkv, pmax, _ = self.pk.shape
        rep, nmax = hq // hkv, lay.nmax
        scale = scaling if scaling is not None else d**-0.5
        q = query.reshape(r, hkv, rep, d) * scale
        dense = r == g * nmax  # every group has nmax rows, in order: no scatter / gather needed
        # Prefix: the queries of a group's rows against the group's prompt keys, read once per group.
        if dense:
            qp = q.view(g, nmax, hkv, rep, d)
        else:
            qp = q.new_zeros(g * nmax, hkv, rep, d)
            qp[lay.flat] = q
            qp = qp.view(g, nmax, hkv, rep, d)
        qp = qp.permute(0, 2, 1, 3, 4).reshape(g, hkv, nmax * rep, d)
        part1 = _partial(qp, self.pk, self.pv, lay.prefix_bias(pmax))  # [G, Hkv, nmax*rep, D+2]
        part1 = part1.view(g, hkv, nmax, rep, -1).permute(0, 2, 1, 3, 4).reshape(g * nmax, hkv, rep, -1)
        if not dense:
            part1 = part1[lay.flat]
        # Suffix: each row against its own generated tokens (the current one included, so never empty).
        part2 = _partial(q, self.sk[:, :, : self.slen], self.sv[:, :, : self.slen], lay.suffix_bias(self.slen))
        # Merge the two softmax pieces by their maxima (log-sum-exp).
        o1, m1, l1 = part1[..., :d], part1[..., d : d + 1], part1[..., d + 1 :]
        o2, m2, l2 = part2[..., :d], part2[..., d : d + 1], part2[..., d + 1 :]
        m = torch.maximum(m1, m2)
        a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
        out = (o1 * a1 + o2 * a2) / (l1 * a1 + l2 * a2)
        return out.to(query.dtype).reshape(r, 1, hq, d)


def _partial(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Unnormalised attention of pre-scaled ``q [..., M, D]`` over ``k, v [..., N, D]``, with an additive
    ``bias`` (0 / -inf, or None): ``[..., M, D + 2]`` = (sum p v, max score, sum p), p = exp(score - max),
    in fp32."""
    s = torch.matmul(q, k.transpose(-1, -2)).float()
    if bias is not None:
        s = s + bias
    m = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - m)
    return torch.cat([torch.matmul(p.to(v.dtype), v).float(), m, p.sum(dim=-1, keepdim=True)], dim=-1)


def _grow(buf: torch.Tensor, used: int, need: int) -> torch.Tensor:
    new = buf.new_empty(buf.shape[0], buf.shape[1], max(need, 2 * buf.shape[2]), buf.shape[3])
    new[:, :, :used] = buf[:, :, :used]
    return new


def _select_filled(buf: torch.Tensor, idx: torch.Tensor, lead: int, used: int) -> torch.Tensor:
    """Rows ``idx`` of a suffix buffer ``[R, H, cap, D]`` without its first ``lead`` columns, same room
    after; only the ``used`` columns written so far are copied."""
    out = buf.new_empty(idx.numel(), buf.shape[1], buf.shape[2] - lead, buf.shape[3])
    torch.index_select(buf[:, :, lead:used], 0, idx, out=out[:, :, : used - lead])
    return out


def _stack_padded(ts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Stack ``[b_i, H, L_i, D]`` along dim 0, right-padded with zeros to ``length``."""
    out = ts[0].new_zeros(sum(t.shape[0] for t in ts), ts[0].shape[1], length, ts[0].shape[3])
    row = 0
    for t in ts:
        out[row : row + t.shape[0], :, : t.shape[2]] = t
        row += t.shape[0]
    return out


class SharedPrefixStore:
    """The running batch's cache in shared-prefix form (same interface as
    :class:`~mstar_fast.rollout.kv.PaddedStore`). Decode steps need :func:`shared_prefix_attention`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cache: Any = None
        self.layout = Layout(device)

    @staticmethod
    def can_merge(cache: Any) -> bool:
        return supports_merge(cache)

    def __len__(self) -> int:
        return self.layout.row_group.numel()

    def add(self, parts: list[tuple[Any, int]], room: int) -> None:
        """Append one group per ``(1-row prefill cache, rows)`` part; ``room`` suffix positions are
        preallocated for the steps to come."""
        lay = self.layout
        n_old, g_old = len(self), lay.plen.numel()
        rows_new = sum(r for _, r in parts)
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache()
            self.cache.layers = [SharedPrefixLayer(lay) for _ in parts[0][0].layers]
        slen = self.cache.layers[0].slen
        for i, layer in enumerate(self.cache.layers):
            new_k = [c.layers[i].keys for c, _ in parts]
            new_v = [c.layers[i].values for c, _ in parts]
            pmax = max([t.shape[2] for t in new_k] + ([layer.pk.shape[2]] if layer.pk is not None else []))
            old_k = [layer.pk] if layer.pk is not None else []
            old_v = [layer.pv] if layer.pv is not None else []
            layer.pk, layer.pv = _stack_padded(old_k + new_k, pmax), _stack_padded(old_v + new_v, pmax)
            ref = new_k[0]
            cap = slen + room
            # Columns past slen are written before they are read; the new rows' first slen columns are
            # masked, but must be finite (a masked score is s + -inf, NaN if s is), hence zeros there.
            sk = ref.new_empty(n_old + rows_new, ref.shape[1], cap, ref.shape[3])
            sv = new_v[0].new_empty(n_old + rows_new, ref.shape[1], cap, new_v[0].shape[3])
            sk[n_old:, :, :slen] = 0
            sv[n_old:, :, :slen] = 0
            if n_old:
                sk[:n_old, :, :slen] = layer.sk[:, :, :slen]
                sv[:n_old, :, :slen] = layer.sv[:, :, :slen]
            layer.sk, layer.sv = sk, sv
            layer._views()
        dev = self.device
        lay.plen = torch.cat([lay.plen, torch.tensor([c.get_seq_length() for c, _ in parts], device=dev)])
        groups = [g_old + j for j, (_, r) in enumerate(parts) for _ in range(r)]
        lay.row_group = torch.cat([lay.row_group, torch.tensor(groups, dtype=torch.long, device=dev)])
        lay.start = torch.cat([lay.start, torch.full((rows_new,), slen, dtype=torch.long, device=dev)])
        lay.refresh()

    def select(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (ascending int64): suffix rows are copied, prompts without rows dropped."""
        lay = self.layout
        if idx.numel() == 0:
            self.cache = None
            self.layout = Layout(self.device)
            return
        rg = lay.row_group.index_select(0, idx)
        keep = torch.unique(rg)  # sorted, so groups stay contiguous and in order
        remap = torch.full((lay.plen.numel(),), -1, dtype=torch.long, device=self.device)
        remap[keep] = torch.arange(keep.numel(), device=self.device)
        lay.plen, lay.row_group = lay.plen.index_select(0, keep), remap[rg]
        lay.start = lay.start.index_select(0, idx)
        lead, pmax = int(lay.start.min()), int(lay.plen.max())
        lay.start = lay.start - lead  # suffix columns no remaining row uses
        for layer in self.cache.layers:
            layer.pk = layer.pk.index_select(0, keep)[:, :, :pmax]
            layer.pv = layer.pv.index_select(0, keep)[:, :, :pmax]
            layer.sk = _select_filled(layer.sk, idx, lead, layer.slen)
            layer.sv = _select_filled(layer.sv, idx, lead, layer.slen)
            layer.slen -= lead
            layer._views()
        lay.refresh()

    def step_mask(self) -> None:
        """Decode steps pass no attention mask: :meth:`SharedPrefixLayer.attend` masks by itself."""
        return None

    def check_step(self) -> None:
        """Every layer's update must have been read by the shared-prefix attention."""
        for i, layer in enumerate(self.cache.layers):
            if layer.updates != layer.attended:
                raise RuntimeError(f"shared-prefix decoding: layer {i} computed attention outside the attention "
                                   "interface; use RolloutEngine(..., shared_prefix=False) for this model")


def _attention_fn(original: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs):
        layer = _PENDING.layer
        if layer is None:  # prefill on the model's own cache: the original implementation
            fn = ALL_ATTENTION_FUNCTIONS[original]
            return fn(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        _PENDING.layer = None
        if query.shape[2] != 1 or dropout or kwargs.get("sliding_window") or kwargs.get("softcap"):
            raise RuntimeError("shared-prefix attention handles one-token decode steps of full-attention layers only")
        layer.attended += 1
        return layer.attend(query, scaling), None

    return attention


def _register(original: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = _PREFIX + original
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _attention_fn(original))
        if original in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    return name


def text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg


def supported(model: Any) -> bool:
    """Static checks: full attention everywhere, no logit soft-capping, attention through the interface."""
    tc = text_config(model)
    impl = getattr(tc, "_attn_implementation", None)
    if not isinstance(impl, str) or impl.startswith(_PREFIX):
        return False
    types = getattr(tc, "layer_types", None) or []
    if any(t != "full_attention" for t in types) or getattr(tc, "sliding_window", None):
        return False
    return not getattr(tc, "attn_logit_softcapping", None)


@contextlib.contextmanager
def shared_prefix_attention(model: Any) -> Iterator[None]:
    """Route the text decoder's attention through the shared-prefix implementation inside the block."""
    tc = text_config(model)
    original = tc._attn_implementation
    tc._attn_implementation = _register(original)
    _PENDING.layer = None
    try:
        yield
    finally:
        tc._attn_implementation = original
        _PENDING.layer = None


def probe(model: Any, cache_kw: str, token_ids: list[int]) -> bool:
    """Decode one step both ways on a short text prompt; True when shared-prefix decoding is wired in
    (every layer read through it) and matches the model's own attention."""
    ids = torch.tensor([token_ids], device=next(model.parameters()).device)
    plen = ids.shape[1] - 1
    prompt, nxt = ids[:, :plen], ids[:, plen:]
    pos = torch.tensor([[plen]], device=ids.device)
    try:
        with torch.inference_mode():
            ref_cache = output_cache(model(input_ids=prompt, use_cache=True))
            ref = model(input_ids=nxt, position_ids=pos, attention_mask=torch.ones_like(ids), use_cache=True,
                        **{cache_kw: ref_cache}).logits[:, -1].float()
            store = SharedPrefixStore(ids.device)
            store.add([(output_cache(model(input_ids=prompt, use_cache=True)), 2)], room=1)
            with shared_prefix_attention(model):
                out = model(input_ids=nxt.expand(2, 1), position_ids=pos.expand(2, 1), use_cache=True,
                            **{cache_kw: store.cache}).logits[:, -1].float()
            store.check_step()
    except Exception as e:  # any failure means: not for this model
        log.info("shared-prefix decoding disabled for %s: %s", type(model).__name__, e)
        return False
    tol = 1e-3 if ref.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32 else 3e-2
    ok = torch.allclose(out, ref.expand(2, -1), rtol=tol, atol=tol * float(ref.abs().max()))
    if not ok:
        log.info("shared-prefix decoding disabled for %s: probe logits differ", type(model).__name__)
    return ok
