"""KV-cache surgery on ``transformers`` caches: expand one prompt's cache to n rows, drop finished rows,
and merge prompts of different lengths into one left-padded batch.

Expanding and dropping rows use the cache's own ``batch_repeat_interleave`` / ``batch_select_indices``
(every layer type implements them). Merging needs direct access to per-layer ``keys`` / ``values``
``[B, H, L, D]``, so it is allowed only when every layer is a plain ``DynamicLayer`` (full attention) or
our :class:`GrowableLayer`; a cache with sliding-window, linear-attention or quantized layers runs one
prompt per batch instead.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch


def cache_kwarg(model: Any) -> str:
    """Name of the forward argument that takes the cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older releases and most remote code)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The cache a forward returned (``out.cache`` or ``out.past_key_values``), or None."""
    for name in ("cache", "past_key_values"):
        c = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if c is not None:
            return c
    return None


def supports_row_ops(cache: Any) -> bool:
    """True for a ``transformers.Cache`` that can repeat and select batch rows."""
    methods = ("batch_repeat_interleave", "batch_select_indices", "get_seq_length")
    if not (hasattr(cache, "layers") and all(callable(getattr(cache, m, None)) for m in methods)):
        return False
    # The cache delegates to its layers, and some layer kinds (linear-attention / conv state) lack them.
    return all(callable(getattr(layer, m, None)) for layer in cache.layers for m in methods[:2])


def _dynamic_layer() -> type | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - very old transformers
        return None
    return DynamicLayer


def supports_merge(cache: Any) -> bool:
    """True when every layer is an initialized plain ``DynamicLayer`` or a :class:`GrowableLayer` (so rows
    of different prompts can be left-padded into one batch)."""
    layers = getattr(cache, "layers", None)
    plain = _dynamic_layer()
    if not layers or plain is None:
        return False
    return all(type(layer) in (plain, GrowableLayer) and isinstance(getattr(layer, "keys", None), torch.Tensor)
               and layer.keys.dim() == 4 for layer in layers)


class GrowableLayer(_dynamic_layer() or object):  # type: ignore[misc]
    """A ``DynamicLayer`` whose keys/values ``[B, H, L, D]`` live in a preallocated buffer ``[B, H, C, D]``.

    ``DynamicLayer.update`` concatenates, copying the whole cache at every decode step (O(L) per step);
    here a step writes one column in place and ``keys`` / ``values`` are views of the filled part, so every
    model's attention code reads them unchanged. Selecting rows copies the buffer once.
    """

    def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int):
        """Wrap buffers ``[B, H, C, D]`` whose first ``length`` positions are filled."""
        super().__init__()
        self._kbuf, self._vbuf, self._len = kbuf, vbuf, length
        self.device, self.is_initialized = kbuf.device, True
        self._views()

    @classmethod
    def from_parts(cls, keys: list[tuple[torch.Tensor, int]], values: list[tuple[torch.Tensor, int]],
                   capacity: int) -> GrowableLayer:
        """Stack row blocks ``(t, rows)`` along the batch (``t`` is ``[rows or 1, H, L_t, D]``; a 1-row block
        is broadcast), each left-padded with zeros to the longest ``L``, with room for ``capacity`` positions."""
        length = max(t.shape[2] for t, _ in keys)
        bufs = []
        for parts in (keys, values):
            t0 = parts[0][0]
            buf = t0.new_empty(sum(r for _, r in parts), t0.shape[1], max(capacity, length), t0.shape[3])
            row = 0
            for t, r in parts:
                pad = length - t.shape[2]
                buf[row : row + r, :, :pad] = 0
                buf[row : row + r, :, pad:length] = t
                row += r
            bufs.append(buf)
        return cls(bufs[0], bufs[1], length)

    def _views(self) -> None:
        self.keys = self._kbuf[:, :, : self._len]
        self.values = self._vbuf[:, :, : self._len]

    @property
    def capacity(self) -> int:
        return self._kbuf.shape[2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        if self._len + n > self.capacity:  # out of room: grow geometrically (rare: the engine plans capacity)
            grown = GrowableLayer.from_parts([(self.keys, self.keys.shape[0])], [(self.values, self.values.shape[0])],
                                             max(2 * self.capacity, self._len + n))
            self._kbuf, self._vbuf = grown._kbuf, grown._vbuf
        self._kbuf[:, :, self._len : self._len + n] = key_states
        self._vbuf[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._kbuf = self._kbuf.index_select(0, indices)
        self._vbuf = self._vbuf.index_select(0, indices)
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._kbuf = self._kbuf.repeat_interleave(repeats, dim=0)
        self._vbuf = self._vbuf.repeat_interleave(repeats, dim=0)
        self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self._kbuf.device))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("GrowableLayer.crop takes a negative count (tokens to drop from the end)")
        self._len -= min(-tokens_to_remove, self._len)
        self._views()

    def trim_left(self, k: int) -> None:
        """Drop the first ``k`` positions (a view of the same buffer: no copy)."""
        self._kbuf, self._vbuf = self._kbuf[:, :, k:], self._vbuf[:, :, k:]
        self._len -= k
        self._views()

    def reset(self) -> None:
        self._len = 0
        self._views()


def expand_rows(cache: Any, n: int) -> None:
    """In place: a 1-row cache becomes ``n`` identical rows (``[1, H, L, D] -> [n, H, L, D]``)."""
    if n != 1:
        cache.batch_repeat_interleave(n)


def select_rows(cache: Any, keep: torch.Tensor) -> None:
    """In place: keep the rows ``keep`` (``[R']`` int64 indices) of every layer."""
    cache.batch_select_indices(keep)


def _map_rows(cache: Any, take: Any) -> Any:
    """A new cache object whose layers hold ``take(tensor)`` of each layer's keys and values (``cache`` is
    left unchanged; every layer must pass :func:`supports_merge`)."""
    out = copy.copy(cache)
    out.layers = []
    for layer in cache.layers:
        la = copy.copy(layer)
        la.keys, la.values = take(layer.keys), take(layer.values)
        out.layers.append(la)
    return out


def split_rows(cache: Any, n: int) -> list[Any]:
    """A ``[n, H, L, D]`` cache as ``n`` one-row caches whose layers are views of its rows (no copy)."""
    return [_map_rows(cache, lambda t, i=i: t[i : i + 1]) for i in range(n)]


def gather_rows(cache: Any, rows: torch.Tensor) -> Any:
    """A new cache holding rows ``rows`` ([R] int64, repeats allowed) of ``cache``; ``cache`` is unchanged."""
    return _map_rows(cache, lambda t: t.index_select(0, rows))


def stack_left_padded(parts: list[tuple[Any, int]], room: int) -> tuple[Any, list[int]]:
    """Stack caches along the batch, each left-padded with zeros to the longest, into :class:`GrowableLayer`
    layers with space for ``room`` more positions (one copy of everything, whatever the number of parts).

    Args:
        parts: ``(cache, rows)`` pairs; a 1-row cache with ``rows > 1`` is repeated (a prompt's prefill
            expanded to its samples). Every cache must pass :func:`supports_merge`.
        room: positions to preallocate beyond the common length.

    Returns:
        ``(cache, pads)``: the first part's cache object, its layers replaced by the stacked ones, and the
        number of padding columns put in front of each part. The caller masks them (attention mask 0).
    """
    lengths = [c.get_seq_length() for c, _ in parts]
    length = max(lengths)
    dst = parts[0][0]
    for i in range(len(dst.layers)):
        rows = [(c.layers[i], r) for c, r in parts]
        dst.layers[i] = GrowableLayer.from_parts([(la.keys, r) for la, r in rows], [(la.values, r) for la, r in rows],
                                                 length + room)
    return dst, [length - n for n in lengths]


def trim_left(cache: Any, k: int) -> None:
    """In place: drop the first ``k`` positions of every layer (columns that are padding for every row)."""
    if k <= 0:
        return
    for layer in cache.layers:
        if isinstance(layer, GrowableLayer):
            layer.trim_left(k)
        else:
            layer.keys = layer.keys[:, :, k:]
            layer.values = layer.values[:, :, k:]


class PaddedStore:
    """Rows of several prompts in one left-padded cache with a 2-D attention mask ``[R, L]`` (0 on padding).

    Works with any model (the model's own attention reads the padded keys); every row holds its own copy
    of its prompt's keys/values. See :class:`mstar_fast.rollout.shared_prefix.SharedPrefixStore` for the
    variant that keeps one copy per prompt.
    """

    def __init__(self, device: torch.device):
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)

    @staticmethod
    def can_merge(cache: Any) -> bool:
        return supports_merge(cache)

    def add(self, parts: list[tuple[Any, int]], room: int) -> None:
        """Append ``rows`` rows for each ``(1-row prefill cache, rows)`` part; ``room`` positions are
        preallocated for the steps to come."""
        running = self.cache is not None
        allparts = ([(self.cache, self.mask.shape[0])] if running else []) + parts
        lengths = [c.get_seq_length() for c, _ in allparts]
        if all(supports_merge(c) for c, _ in allparts):
            self.cache, pads = stack_left_padded(allparts, room)
        elif len(allparts) == 1:  # a cache we cannot pad (sliding window, ...): one prompt per batch
            expand_rows(allparts[0][0], allparts[0][1])
            self.cache, pads = allparts[0][0], [0]
        else:
            raise RuntimeError("PaddedStore.add: these caches cannot be merged into one batch")
        m = self.mask
        self.mask = torch.cat([torch.cat([m.new_zeros(r, pad), m if i == 0 and running else m.new_ones(r, n)], dim=1)
                               for i, ((_, r), pad, n) in enumerate(zip(allparts, pads, lengths, strict=True))], dim=0)

    def select(self, idx: torch.Tensor) -> None:
        """Keep rows ``idx`` (ascending int64); drop the left columns that are padding for every row."""
        if idx.numel() == 0:
            self.cache, self.mask = None, self.mask[:0, :0]
            return
        select_rows(self.cache, idx)
        self.mask = self.mask.index_select(0, idx)
        if supports_merge(self.cache):
            lead = int((self.mask.cumsum(1) == 0).sum(1).min())
            if lead:
                trim_left(self.cache, lead)
                self.mask = self.mask[:, lead:]

    def step_mask(self) -> torch.Tensor:
        """The attention mask for the next decode step (one more column), also kept for the step after."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        return self.mask

    def check_step(self) -> None:
        """Nothing to verify: the model's own attention read the cache."""
