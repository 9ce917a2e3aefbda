"""Plain-torch references for every op, written for clarity (sort-based where that is clearest).

They define the semantics the fused kernels are tested against; they are also the ``torch`` backend.
"""

from __future__ import annotations

import torch

# Status codes written in place of a token (mirrors csrc/include/mstar/sample_from_logits.h).
STATUS_NON_FINITE = -1
STATUS_ALL_MASKED = -2
# Temperatures below this are greedy on every backend (kGreedyTemperature in
# csrc/include/mstar/sample_from_logits.h). At T < 1e-5 a token trailing the max by 0.004 (about one bf16 step of a
# logit near 1) has weight below exp(-400): sampling is greedy in all but name; and below ~3e-39, 1 / T
# overflows to inf, so (l - max) / T would be 0 * inf = NaN for the maximum itself.
GREEDY_TEMPERATURE = 1e-5

_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi and lo 32-bit words of a * b for a constant a < 2^32 and int64 tensor b < 2^32, without
    overflowing int64: split a into 16-bit halves."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_hi = a_hi * b  # < 2^48
    p_lo = a_lo * b  # < 2^48
    lo = ((p_hi & 0xFFFF) << 16) + p_lo
    hi = (p_hi >> 16) + (lo >> 32)
    return hi & _M32, lo & _M32


def philox4x32_10(counter: list[torch.Tensor], key: list[torch.Tensor]) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding 32-bit words (counter: 4 words, key: 2 words)."""
    c0, c1, c2, c3 = (c & _M32 for c in counter)
    k0, k1 = (k & _M32 for k in key)
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
    return [c0, c1, c2, c3]


def philox_uniform(seed: torch.Tensor, offset: int, draw: int) -> torch.Tensor:
    """Uniform [0, 1) float32 per row from Philox(key=seed, counter=(offset lo, offset hi, draw, 0)),
    24 random bits; the same function as ``mstar::philox_uniform`` in csrc/include/mstar/philox.h."""
    seed = seed.to(torch.int64)
    zeros = torch.zeros_like(seed)
    out = philox4x32_10(
        [zeros + (offset & _M32), zeros + ((offset >> 32) & _M32), zeros + (draw & _M32), zeros],
        [seed & _M32, (seed >> 32) & _M32],
    )
    return (out[0] >> 8).to(torch.float32) * (1.0 / 16777216.0)


def _filtered_sorted(
    x: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered, normalised probabilities in descending order: (probs_sorted float64 [B, V], order [B, V])."""
    B, V = x.shape
    m = x.max(dim=1, keepdim=True).values
    t = temperature.float().view(B, 1)
    greedy = t < GREEDY_TEMPERATURE
    e = torch.exp((x - m) / torch.where(greedy, torch.ones_like(t), t))
    s, idx = torch.sort(e, dim=1, descending=True, stable=True)
    k = top_k.to(torch.int64).view(B, 1)
    kth = s.gather(1, (k.clamp(1, V) - 1))
    keep = torch.where((k > 0) & (k < V), s >= kth, torch.ones_like(s, dtype=torch.bool))
    z_k = (s * keep).sum(dim=1, keepdim=True)
    # Mass strictly above each value = exclusive cumsum at the first index of its tie group.
    pos = torch.arange(V, device=x.device).expand(B, V)
    group_start = torch.ones_like(s, dtype=torch.bool)
    group_start[:, 1:] = s[:, 1:] != s[:, :-1]
    first = torch.cummax(torch.where(group_start, pos, torch.zeros_like(pos)), dim=1).values
    above = (torch.cumsum(s, dim=1) - s).gather(1, first)
    p = top_p.float().view(B, 1)
    keep &= torch.where(p < 1, above < p * z_k, torch.ones_like(keep))
    keep &= s >= min_p.float().view(B, 1)
    keep = torch.where(greedy, pos == 0, keep)  # greedy: the first maximum (the stable sort puts it first)
    kept = (s * keep).double()
    return kept / kept.sum(dim=1, keepdim=True), idx


def filtered_probs_reference(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
) -> torch.Tensor:
    """The exact distribution ``sample_from_logits`` draws from, ``[B, V]`` float64 (rows sum to 1).

    Per row: e = exp((l - max) / T) in fp32; top-k keeps e >= its k-th largest value (ties kept);
    top-p keeps a token when the top-k mass strictly more probable than it is < top_p times the top-k
    mass; min-p keeps e >= min_p (e is relative to the most probable token). Greedy rows
    (T < GREEDY_TEMPERATURE) put
    all mass on the first maximum.
    """
    probs_sorted, idx = _filtered_sorted(logits.float(), temperature, top_k, top_p, min_p)
    return torch.zeros_like(probs_sorted).scatter(1, idx, probs_sorted)


def sample_from_logits_reference(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seed: torch.Tensor,
    offset: int,
    return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort-based sampler with the contract of ``ops.sample_from_logits`` on expanded ``[B]`` parameters.

    Draws by inverse CDF over the filtered distribution in descending-probability order with one
    Philox uniform per row (draw index 0). Returns (tokens int64 [B], logprobs fp32 [B] or [0]); rows
    that cannot be sampled hold a negative status code instead of a token.
    """
    x = logits.float()
    B, V = x.shape
    nan_or_inf = torch.isnan(x).any(dim=1) | torch.isposinf(x).any(dim=1)
    all_masked = torch.isneginf(x).all(dim=1)
    x = torch.where((nan_or_inf | all_masked).view(B, 1), torch.zeros_like(x), x)  # these rows get a status

    probs_sorted, order = _filtered_sorted(x, temperature, top_k, top_p, min_p)
    cdf = torch.cumsum(probs_sorted, dim=1)
    u = philox_uniform(seed, offset, 0).double().view(B, 1)
    pos = (cdf <= u).sum(dim=1, keepdim=True)
    n_kept = (probs_sorted > 0).sum(dim=1, keepdim=True)  # rounding can leave u above the last cdf value
    tokens = order.gather(1, torch.minimum(pos, n_kept - 1)).view(B)
    tokens = torch.where(all_masked, torch.full_like(tokens, STATUS_ALL_MASKED), tokens)
    tokens = torch.where(nan_or_inf, torch.full_like(tokens, STATUS_NON_FINITE), tokens)

    logprobs = torch.empty(0, dtype=torch.float32, device=x.device)
    if return_logprobs:
        t = temperature.float().view(B, 1)
        scale = torch.where(t < GREEDY_TEMPERATURE, torch.ones_like(t), t)
        # Shift by the row max first: x / T of finite logits near the fp32 maximum overflows to inf, and
        # log_softmax of a row holding inf is NaN; x - max <= 0 only ever underflows to -inf (weight 0).
        m = x.max(dim=1, keepdim=True).values
        lsm = torch.log_softmax((x - m) / scale, dim=1)
        logprobs = lsm.gather(1, tokens.clamp(min=0).view(B, 1)).view(B)
    return tokens, logprobs


def fused_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """The semantics of ``ops.fused_linear_cross_entropy``, written the obvious way: full ``[N, V]``
    logits ``hidden @ weight.T + bias`` in the inputs' dtype, then ``F.cross_entropy`` in fp32 (fp64 for fp64
    inputs), the dtype of the op's loss. hidden ``[..., H]``, weight ``[V, H]``, labels ``[...]``, bias ``[V]``."""
    import torch.nn.functional as F

    logits = hidden.reshape(-1, hidden.shape[-1]) @ weight.t()
    if bias is not None:
        logits = logits + bias
    x = logits if logits.dtype == torch.float64 else logits.float()
    loss = F.cross_entropy(x, labels.reshape(-1).long(), ignore_index=ignore_index, reduction=reduction)
    return loss.view(labels.shape) if reduction == "none" else loss


def prm_step_scores_reference(
    hidden: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """P(good step) at the step-tag rows: fp32 ``[S]``.

    hidden ``[N, H]``, positions ``[S]`` int64 row indices, weight ``[2, H]`` (good and bad reward-token
    rows of the LM head) or ``[1, H]`` (a value head), bias ``[2]`` / ``[1]`` or None. Logits are
    ``hidden[positions] @ weight.T + bias`` in fp32; two rows give ``softmax(logits)[:, 0]``, written as
    the equal ``sigmoid(l_good - l_bad)``; one row gives ``sigmoid(l)``.
    """
    logits = hidden.index_select(0, positions).float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    if weight.shape[0] == 2:
        return torch.sigmoid(logits[:, 0] - logits[:, 1])
    return torch.sigmoid(logits[:, 0])


def segment_reduce_reference(values: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    """``out[r] = reduce(values[offsets[r]:offsets[r+1]])``: ``[R]`` in values' dtype.

    reduce in {min, max, mean, sum, prod, last}; accumulated in fp32 (fp64 for fp64 values); an empty
    segment gives NaN; min and max propagate NaN. offsets ``[R + 1]`` int64 from 0 to ``len(values)``.
    """
    acc_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    x = values.to(acc_dtype)
    R = offsets.shape[0] - 1
    counts = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(R, device=values.device), counts)
    nan = torch.full((R,), float("nan"), dtype=acc_dtype, device=values.device)
    if reduce == "last":
        out = torch.where(counts > 0, x[(offsets[1:] - 1).clamp(min=0)] if x.numel() else nan, nan)
    elif reduce in ("min", "max", "sum", "prod", "mean"):
        how = {"min": "amin", "max": "amax", "sum": "sum", "prod": "prod", "mean": "sum"}[reduce]
        out = torch.zeros(R, dtype=acc_dtype, device=values.device).scatter_reduce(0, seg, x, how, include_self=False)
        if reduce == "mean":
            out = out / counts.to(acc_dtype)
        out = torch.where(counts > 0, out, nan)
    else:
        raise ValueError(f"segment_reduce: reduce must be one of min, max, mean, sum, prod, last; got {reduce!r}")
    return out.to(values.dtype)


def group_topk_reference(
    scores: torch.Tensor, group_offsets: torch.Tensor, k: int, valid: torch.Tensor | None
) -> torch.Tensor:
    """Per group, the k best valid rows as a bool mask ``[L]``.

    Rows rank by score, highest first, NaN after every number, ties (and NaN against NaN) to the lower
    index; invalid rows are never marked. Done as stable sorts from the least to the most significant
    key: score (descending, NaN as -inf), NaN last, valid first, group.
    """
    L = scores.shape[0]
    G = group_offsets.shape[0] - 1
    counts = group_offsets[1:] - group_offsets[:-1]
    group = torch.repeat_interleave(torch.arange(G, device=scores.device), counts)
    s = scores.double()
    is_nan = torch.isnan(s)
    ok = valid if valid is not None else torch.ones(L, dtype=torch.bool, device=scores.device)
    order = torch.arange(L, device=scores.device)
    for key, descending in ((torch.where(is_nan, float("-inf"), s), True), (is_nan.long(), False),
                            ((~ok).long(), False), (group, False)):
        order = order[torch.sort(key[order], descending=descending, stable=True).indices]
    rank = torch.empty(L, dtype=torch.long, device=scores.device)
    rank[order] = torch.arange(L, device=scores.device) - group_offsets[group[order]]
    return ok & (rank < k)
