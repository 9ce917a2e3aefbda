"""Triton group_topk: each program takes BLOCK_I consecutive rows; row i reads its group [start, end)
and counts, in [BLOCK_I, BLOCK_J] tiles, the valid rows j of that group that rank before it (higher
score; a number before NaN; ties and NaN pairs to the lower index). Row i is kept when it is valid and
that count is below k (contract: csrc/include/mstar/group_topk.h). O(n^2) comparisons per group of n
rows: cheap for the K samples per prompt of self-evolving training. Scores widen to fp32 (fp64 stays)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast import _ext
from mstar_fast.kernels._launch import device_guard


@triton.jit
def _group_topk_kernel(
    scores_ptr,
    group_ptr,
    offsets_ptr,
    valid_ptr,
    out_ptr,
    L,
    k,
    KEY: tl.constexpr,
    HAS_VALID: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
    L_STATIC: tl.constexpr,  # under the interpreter the largest group, else -1 (kernels/_launch.py: static_bound)
):
    pid = tl.program_id(0)
    i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = i < L
    g = tl.load(group_ptr + i, mask=imask, other=0)
    start = tl.load(offsets_ptr + g, mask=imask, other=0)
    end = tl.load(offsets_ptr + g + 1, mask=imask, other=0)
    si = tl.load(scores_ptr + i, mask=imask, other=0.0).to(KEY)
    if HAS_VALID:
        vi = (tl.load(valid_ptr + i, mask=imask, other=0) != 0) & imask
    else:
        vi = imask
    a = si[:, None]
    ni = (si != si)[:, None]
    before = tl.zeros([BLOCK_I], dtype=tl.int32)
    longest = tl.max(end - start, axis=0)
    for d in range(0, L_STATIC if L_STATIC >= 0 else longest, BLOCK_J):
        j = start[:, None] + d + tl.arange(0, BLOCK_J)[None, :]
        jmask = (j < end[:, None]) & imask[:, None]
        b = tl.load(scores_ptr + j, mask=jmask, other=0.0).to(KEY)
        if HAS_VALID:
            jmask = jmask & (tl.load(valid_ptr + j, mask=jmask, other=0) != 0)
        nj = b != b
        lower = j < i[:, None]
        # j ranks before i: a number before NaN; else the higher score; else (equal, or both NaN) lower index.
        better = (ni & ~nj) | (~ni & ~nj & ((b > a) | ((b == a) & lower))) | (ni & nj & lower)
        before += tl.sum((better & jmask).to(tl.int32), axis=1)
    keep = vi & (before < k)
    tl.store(out_ptr + i, keep.to(tl.int8), mask=imask)


def group_topk(
    scores: torch.Tensor, group_offsets: torch.Tensor, k: int, valid: torch.Tensor | None
) -> torch.Tensor:
    """Launch ``_group_topk_kernel`` on checked inputs: scores ``[L]`` floating, group_offsets ``[G + 1]``
    int64 (0, non-decreasing, ending at L), ``k >= 0``, valid ``[L]`` bool or None. Returns bool ``[L]``."""
    scores = scores.contiguous()
    group_offsets = group_offsets.contiguous()
    L, G = scores.shape[0], group_offsets.shape[0] - 1
    out = torch.zeros(L, dtype=torch.int8, device=scores.device)
    if L == 0 or k == 0:
        return out.bool()
    counts = group_offsets[1:] - group_offsets[:-1]
    group = torch.repeat_interleave(torch.arange(G, device=scores.device), counts, output_size=L)
    if scores.device.type == "cpu":  # the interpreter: few big blocks are fastest
        block_i, block_j = min(256, triton.next_power_of_2(L)), 64
    else:
        block_i, block_j = 64, 32
    key = tl.float64 if scores.dtype == torch.float64 else tl.float32  # bf16 / fp16 widen exactly
    valid_arg = valid.contiguous().view(torch.uint8) if valid is not None else out
    k = min(int(k), L)  # fits the int32 counts
    # The interpreter needs the loop bound as a Python int; it runs on CPU tensors, so reading it is free.
    largest = int(counts.max()) if _ext.triton_interpret() else -1
    with device_guard(scores.device):  # Triton launches on the current device, not the tensors' one
        _group_topk_kernel[(triton.cdiv(L, block_i),)](
            scores, group, group_offsets, valid_arg, out, L, k,
            KEY=key, HAS_VALID=valid is not None, BLOCK_I=block_i, BLOCK_J=block_j,
            L_STATIC=largest,
        )
    return out.bool()
