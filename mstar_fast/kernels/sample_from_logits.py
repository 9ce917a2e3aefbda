# Triton sample_from_logits: one program per row, sorting-free. Pass 1 fuses the bf16/fp16 -> fp32 load,
# NaN/+inf detection, the max, the first argmax and the online-softmax sum Z. Top-k and top-p thresholds
# are found exactly by a radix search over the int32 bit pattern of e = exp((l - max) / T) (monotone for
# e >= 0): each pass over the row tests 2^RBITS candidate thresholds at once, so a 30-bit search costs
# 30 / RBITS passes. The draw is one in-kernel Philox4x32-10 uniform and an inverse-CDF scan in index
# order over {e >= max(t_k, t_p, min_p)} that stops at the crossing tile; the logprob is fused.
"""Triton backend of ``mstar_fast.ops.sample_from_logits`` (see mstar_fast/ops/sample_from_logits.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast import _ext
from mstar_fast.kernels._launch import device_guard, static_bound
from mstar_fast.ops.reference import GREEDY_TEMPERATURE

__all__ = ["sample_from_logits"]

_M32 = 0xFFFFFFFF
_INTERP_RBITS = 3  # bits decided per search pass under TRITON_INTERPRET (the GPU uses 3 too)
_INTERP_TILE = (1 << 20) >> _INTERP_RBITS  # ROWS * BLOCK; [ROWS, 2^RBITS, BLOCK] hits triton's 2^20 numel cap


@triton.jit
def _tile_e(row_ptrs, rows_ok, offs, V, m, T):
    """e = exp((l - m) / T) in fp32 for a [ROWS, BLOCK] tile, and its int32 bit pattern (-1 outside
    the row). Every pass computes e through this one function, so a threshold found in one pass selects
    exactly the same tokens in the next."""
    mask = rows_ok[:, None] & (offs[None, :] < V)
    x = tl.load(row_ptrs[:, None] + offs[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    e = tl.exp((x - m[:, None]) / T[:, None])
    e = tl.where(mask, e, 0.0)
    bits = tl.where(mask, e.to(tl.int32, bitcast=True), -1)
    return e, bits


@triton.jit
def _radix_search(row_ptrs, rows_ok, V, m, T, e1, bits1, target, BY_MASS: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK: tl.constexpr, RBITS: tl.constexpr, ONE_TILE: tl.constexpr, V_STATIC: tl.constexpr):
    """Per row, the largest fp32 bit pattern u with F(u) >= target, where F(u) is the count
    (BY_MASS=False) or the mass (BY_MASS=True) of the e with bits(e) >= u. e lies in [0, 1], so
    u < 2^30: 30 / RBITS passes over the row, each deciding RBITS bits by testing 2^RBITS candidates.
    With ONE_TILE (V <= BLOCK) the row's (e, bits) are e1, bits1, computed once by the caller.
    Returns (u, F(u), mass of e >= u), each [ROWS]."""
    NC: tl.constexpr = 1 << RBITS
    NPASS: tl.constexpr = 30 // RBITS
    tl.static_assert(NPASS * RBITS == 30, "RBITS must divide 30")
    j = tl.arange(0, NC)[None, :]  # [1, NC]
    prefix = tl.full([ROWS], 0, tl.int32)
    f_at = tl.full([ROWS], 0.0, tl.float32)
    mass_at = tl.full([ROWS], 0.0, tl.float32)
    for it in tl.static_range(NPASS):
        shift = 30 - (it + 1) * RBITS
        cand = prefix[:, None] + (j << shift)  # [ROWS, NC]; cand[:, 0] == prefix satisfies F >= target
        # Per-lane partial sums, reduced once per pass (no cross-warp reduction per tile on a GPU).
        acc3 = tl.full([ROWS, NC, BLOCK], 0.0, tl.float32)
        if it == NPASS - 1:  # a count search also sums the masses in its last, full-resolution pass
            if not BY_MASS:
                acc3_m = tl.full([ROWS, NC, BLOCK], 0.0, tl.float32)
        for start in range(0, V_STATIC if V_STATIC >= 0 else V, BLOCK):
            if ONE_TILE:
                e, bits = e1, bits1
            else:
                e, bits = _tile_e(row_ptrs, rows_ok, start + tl.arange(0, BLOCK), V, m, T)
            ge = bits[:, None, :] >= cand[:, :, None]  # [ROWS, NC, BLOCK]
            if BY_MASS:
                acc3 += tl.where(ge, e[:, None, :], 0.0)
            else:
                acc3 += ge.to(tl.float32)
                if it == NPASS - 1:
                    acc3_m += tl.where(ge, e[:, None, :], 0.0)
        acc = tl.sum(acc3, axis=2)  # [ROWS, NC]
        jbest = tl.max(tl.where(acc >= target[:, None], j, 0), axis=1)  # [ROWS]
        prefix = prefix + (jbest << shift)
        if it == NPASS - 1:
            sel = j == jbest[:, None]
            f_at = tl.sum(tl.where(sel, acc, 0.0), axis=1)
            if BY_MASS:
                mass_at = f_at
            else:
                mass_at = tl.sum(tl.where(sel, tl.sum(acc3_m, axis=2), 0.0), axis=1)
    return prefix, f_at, mass_at


@triton.jit
def _masked_mass(row_ptrs, rows_ok, V, m, T, e1, bits1, thr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
                 ONE_TILE: tl.constexpr, V_STATIC: tl.constexpr):
    """Per row, the sum of e over bits(e) >= thr."""
    acc = tl.full([ROWS, BLOCK], 0.0, tl.float32)
    for start in range(0, V_STATIC if V_STATIC >= 0 else V, BLOCK):
        if ONE_TILE:
            e, bits = e1, bits1
        else:
            e, bits = _tile_e(row_ptrs, rows_ok, start + tl.arange(0, BLOCK), V, m, T)
        acc += tl.where(bits >= thr[:, None], e, 0.0)
    return tl.sum(acc, axis=1)


# B is a runtime argument that is never specialised (Triton would otherwise compile one variant for B == 1
# and one for B % 16 == 0, 33-53 s each on a GPU); V stays specialisable (fixed per model).
@triton.jit(do_not_specialize=["B", "offset_lo", "offset_hi"])
def _sample_from_logits_kernel(
    logits_ptr,  # [B, V] fp32 / bf16 / fp16, contiguous
    temp_ptr,  # [B] fp32, < GREEDY_T = greedy
    topk_ptr,  # [B] int64, 0 or >= V = off
    topp_ptr,  # [B] fp32 in (0, 1], 1 = off
    minp_ptr,  # [B] fp32 in [0, 1], 0 = off
    seed_ptr,  # [B] int64 Philox keys
    tok_ptr,  # [B] int64 out: token, or -1 (NaN/+inf) / -2 (all -inf)
    lp_ptr,  # [B] fp32 out (only with RETURN_LOGPROBS)
    B,
    V,
    offset_lo,  # Philox counter words 0 and 1
    offset_hi,
    RETURN_LOGPROBS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    RBITS: tl.constexpr,
    ONE_TILE: tl.constexpr,  # V <= BLOCK: e is computed once and kept for every later pass
    GREEDY_T: tl.constexpr,  # GREEDY_TEMPERATURE
    V_STATIC: tl.constexpr,  # V under the interpreter, -1 when compiled (kernels/_launch.py: static_bound)
):
    # ROWS rows per program; every reduction is along a row, so a row's result never depends on the
    # rows beside it (ROWS itself depends only on V and the device).
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    valid = rows < B
    row_ptrs = logits_ptr + rows.to(tl.int64) * V
    T = tl.load(temp_ptr + rows, mask=valid, other=1.0)
    greedy = T < GREEDY_T  # also the tiny T whose 1 / T overflows
    T1 = tl.where(greedy, 1.0, T)  # greedy rows: logprob under T = 1

    # Pass 1: max, first argmax, NaN/+inf flag and online Z = sum exp((l - m) / T1).
    m = tl.full([ROWS], float("-inf"), tl.float32)
    z = tl.full([ROWS], 0.0, tl.float32)
    amax = tl.full([ROWS], 0, tl.int32)
    bad = tl.full([ROWS], 0, tl.int32)
    for start in range(0, V_STATIC if V_STATIC >= 0 else V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = valid[:, None] & (offs[None, :] < V)
        x = tl.load(row_ptrs[:, None] + offs[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        nonfinite = (x != x) | (x == float("inf"))
        bad = tl.maximum(bad, tl.max(nonfinite.to(tl.int32), axis=1))
        x = tl.where(nonfinite, float("-inf"), x)  # flagged rows get a status; keep m and z NaN-free
        tm = tl.max(x, axis=1)
        ti = tl.min(tl.where(x == tm[:, None], offs[None, :], V), axis=1)
        amax = tl.where(tm > m, ti, amax)  # strict: an earlier tile keeps ties
        m_new = tl.maximum(m, tm)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        z = z * tl.exp((m - m_safe) / T1) + tl.sum(tl.exp((x - m_safe[:, None]) / T1[:, None]), axis=1)
        m = m_new

    all_neg_inf = m == float("-inf")
    ok = valid & (bad == 0) & (m > float("-inf"))
    active = ok & (greedy == 0)  # rows that draw
    m = tl.where(ok, m, 0.0)  # the passes below read only `ok` rows; the others' status is decided
    tok = amax
    if tl.max(active.to(tl.int32), axis=0) != 0:
        k = tl.load(topk_ptr + rows, mask=valid, other=0)
        p = tl.load(topp_ptr + rows, mask=valid, other=1.0)
        mp = tl.load(minp_ptr + rows, mask=valid, other=0.0)
        # Thresholds are fp32 bit patterns (0 keeps everything); z_x is the mass of e >= t_x.
        if ONE_TILE:
            e1, bits1 = _tile_e(row_ptrs, ok, tl.arange(0, BLOCK), V, m, T1)
        else:
            e1, bits1 = 0.0, 0  # unused
        use_k = active & (k > 0) & (k < V)
        t_k = tl.full([ROWS], 0, tl.int32)
        z_k = z
        if tl.max(use_k.to(tl.int32), axis=0) != 0:
            # k-th largest e: the largest t with count(e >= t) >= k (ties at the boundary kept).
            s_k, _cnt, s_zk = _radix_search(row_ptrs, ok, V, m, T1, e1, bits1, k.to(tl.float32), False, ROWS, BLOCK,
                                            RBITS, ONE_TILE, V_STATIC)
            t_k = tl.where(use_k, s_k, t_k)
            z_k = tl.where(use_k, s_zk, z_k)
        use_p = active & (p < 1.0)
        t_p = tl.full([ROWS], 0, tl.int32)
        z_p = z
        if tl.max(use_p.to(tl.int32), axis=0) != 0:
            # i passes top-p iff mass(e > e_i) < p * z_k, i.e. iff e_i >= the largest t with
            # mass(e >= t) >= p * z_k; tokens below t_k never enter this set when t < t_k.
            s_p, s_zp, _mass = _radix_search(row_ptrs, ok, V, m, T1, e1, bits1, p * z_k, True, ROWS, BLOCK, RBITS,
                                                ONE_TILE, V_STATIC)
            t_p = tl.where(use_p, s_p, t_p)
            z_p = tl.where(use_p, s_zp, z_p)
        t_min = tl.maximum(mp, 0.0).to(tl.int32, bitcast=True)
        thr = tl.maximum(tl.maximum(t_k, t_p), t_min)
        z_keep = tl.where(thr == t_p, z_p, z_k)
        need = active & (thr != t_p) & (thr != t_k)
        if tl.max(need.to(tl.int32), axis=0) != 0:
            z_keep = tl.where(need, _masked_mass(row_ptrs, ok, V, m, T1, e1, bits1, thr, ROWS, BLOCK, ONE_TILE,
                                                           V_STATIC), z_keep)

        seed = tl.load(seed_ptr + rows, mask=valid, other=0)
        zero = tl.full([ROWS], 0, tl.uint32)
        c0 = zero + offset_lo.to(tl.uint32)
        c1 = zero + offset_hi.to(tl.uint32)
        r0, _r1, _r2, _r3 = tl.philox(seed, c0, c1, zero, zero)  # key = (seed lo, seed hi), draw 0
        u = (r0 >> 8).to(tl.float32) * (1.0 / 16777216.0)
        target = u * z_keep

        # Inverse CDF in index order over the kept set; stops at the tile where every row has crossed.
        carry = tl.full([ROWS], 0.0, tl.float32)
        found = tl.where(active, -1, 0)
        last = tl.full([ROWS], -1, tl.int32)
        start = 0
        while (start < V) & (tl.min(found, axis=0) < 0):
            offs = start + tl.arange(0, BLOCK)
            if ONE_TILE:
                e, bits = e1, bits1
            else:
                e, bits = _tile_e(row_ptrs, ok, offs, V, m, T1)
            kept = tl.where(bits >= thr[:, None], e, 0.0)
            cs = tl.cumsum(kept, axis=1) + carry[:, None]
            hit = (cs > target[:, None]) & (kept > 0.0)
            first = tl.min(tl.where(hit, offs[None, :], V), axis=1)
            found = tl.where((found < 0) & (first < V), first, found)
            last = tl.maximum(last, tl.max(tl.where(kept > 0.0, offs[None, :], -1), axis=1))
            carry = tl.max(cs, axis=1)
            start += BLOCK
        # Rounding can leave target at or above the scanned total: take the last kept token with mass.
        drawn = tl.where(found >= 0, found, last)
        drawn = tl.where(drawn >= 0, drawn, amax)
        tok = tl.where(active, drawn, amax)

    out = tok.to(tl.int64)
    out = tl.where(all_neg_inf, -2, out)
    out = tl.where(bad != 0, -1, out)
    tl.store(tok_ptr + rows, out, mask=valid)
    if RETURN_LOGPROBS:
        l_tok = tl.load(row_ptrs + tok, mask=ok, other=0.0).to(tl.float32)
        tl.store(lp_ptr + rows, (l_tok - m) / T1 - tl.log(tl.where(z > 0.0, z, 1.0)), mask=valid)


def _interpreting(device: torch.device) -> bool:
    return device.type == "cpu" or _ext.triton_interpret()


def _config(B: int, V: int, device: torch.device) -> tuple[int, int, int, int]:
    """(ROWS, BLOCK, RBITS, num_warps). On a GPU a function of V only, never of B: the tile shape sets
    the reduction order, and a row's token must not depend on the batch. The interpreter runs each tile
    op as one numpy call, so few large [ROWS, BLOCK] tiles win; there ROWS may follow B, since numpy
    reduces each row along the last axis in the same order whatever the number of rows."""
    if _interpreting(device):
        block = min(triton.next_power_of_2(V), _INTERP_TILE)
        return min(max(1, _INTERP_TILE // block), triton.next_power_of_2(B)), block, _INTERP_RBITS, 4
    block = min(triton.next_power_of_2(V), 1024)
    return max(1, 1024 // block), block, 3, 8


def sample_from_logits(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seed: torch.Tensor,
    offset: int,
    return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; inputs already validated and expanded by ``mstar_fast.ops.sample_from_logits``.

    Args:
        logits: ``[B, V]`` contiguous float32, bfloat16 or float16.
        temperature: ``[B]`` float32, below ``GREEDY_TEMPERATURE`` = greedy (first argmax).
        top_k: ``[B]`` int64, ``0`` or ``>= V`` = off.
        top_p: ``[B]`` float32 in (0, 1], ``1`` = off.
        min_p: ``[B]`` float32 in [0, 1], ``0`` = off.
        seed: ``[B]`` int64 Philox keys.
        offset: int in [0, 2^63), the Philox counter; the row's uniform is draw 0 of
            ``philox_uniform(seed, offset, 0)``.
        return_logprobs: also return ``log_softmax(logits / T)[token]`` (T = 1 for greedy rows).

    Returns:
        ``(tokens, logprobs)``: tokens ``[B]`` int64 (or -1 for a row with NaN/+inf, -2 for an all -inf
        row) and logprobs ``[B]`` float32, or an empty float32 ``[0]`` tensor without return_logprobs,
        both on the logits' device.
    """
    B, V = logits.shape
    device = logits.device
    logits = logits.contiguous()
    tokens = torch.empty(B, dtype=torch.int64, device=device)
    logprobs = torch.empty(B if return_logprobs else 0, dtype=torch.float32, device=device)
    if B == 0:
        return tokens, logprobs
    rows, block, rbits, num_warps = _config(B, V, device)
    with device_guard(device):  # Triton launches on the current device, not the tensors' one
        _sample_from_logits_kernel[(triton.cdiv(B, rows),)](
            logits,
            temperature.to(device=device, dtype=torch.float32).contiguous(),
            top_k.to(device=device, dtype=torch.int64).contiguous(),
            top_p.to(device=device, dtype=torch.float32).contiguous(),
            min_p.to(device=device, dtype=torch.float32).contiguous(),
            seed.to(device=device, dtype=torch.int64).contiguous(),
            tokens,
            logprobs if return_logprobs else tokens,
            B,
            V,
            int(offset) & _M32,
            (int(offset) >> 32) & _M32,
            RETURN_LOGPROBS=bool(return_logprobs),
            GREEDY_T=GREEDY_TEMPERATURE,
            ROWS=rows,
            BLOCK=block,
            RBITS=rbits,
            ONE_TILE=V <= block,
            V_STATIC=static_bound(V),
            num_warps=num_warps,
        )
    return tokens, logprobs
