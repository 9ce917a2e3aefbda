"""Triton segment_reduce: each program takes a block of BLOCK_R segments and walks them together in
[BLOCK_R, BLOCK_L] tiles (up to the longest segment of its block), keeping a fp32 (fp64 for fp64
input) accumulator tile, then reduces along the tile: min / max / mean / sum / prod, or reads each
segment's last element. Empty segments give NaN; a NaN in a segment makes its min / max NaN, tracked as a
flag so the result does not depend on how min / max treat NaN (contract:
csrc/include/mstar/segment_reduce.h). Blocks of segments keep programs few, which the interpreter needs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast import _ext
from mstar_fast.kernels._launch import device_guard

REDUCE_CODES = {"min": 0, "max": 1, "mean": 2, "sum": 3, "prod": 4, "last": 5}


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _segment_reduce_kernel(
    values_ptr,
    offsets_ptr,
    out_ptr,
    R,
    REDUCE: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_L: tl.constexpr,
    L_STATIC: tl.constexpr,  # under the interpreter the longest segment, else -1 (kernels/_launch.py: static_bound)
):
    pid = tl.program_id(0)
    r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R
    start = tl.load(offsets_ptr + r, mask=rmask, other=0)
    end = tl.load(offsets_ptr + r + 1, mask=rmask, other=0)
    n = end - start
    nan = float("nan")
    if REDUCE == 5:  # last
        res = tl.load(values_ptr + end - 1, mask=rmask & (n > 0), other=nan).to(ACC)
    else:
        if REDUCE == 0:
            init = float("inf")
        elif REDUCE == 1:
            init = float("-inf")
        elif REDUCE == 4:
            init = 1.0
        else:
            init = 0.0
        acc = tl.full([BLOCK_R, BLOCK_L], init, dtype=ACC)
        saw_nan = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.int32)
        longest = tl.max(n, axis=0)
        for l0 in range(0, L_STATIC if L_STATIC >= 0 else longest, BLOCK_L):
            idx = start[:, None] + l0 + tl.arange(0, BLOCK_L)[None, :]
            x = tl.load(values_ptr + idx, mask=idx < end[:, None], other=init).to(ACC)
            if REDUCE == 0:
                saw_nan = saw_nan | (x != x).to(tl.int32)
                acc = tl.minimum(acc, tl.where(x != x, init, x))
            elif REDUCE == 1:
                saw_nan = saw_nan | (x != x).to(tl.int32)
                acc = tl.maximum(acc, tl.where(x != x, init, x))
            elif REDUCE == 4:
                acc = acc * x
            else:
                acc = acc + x
        if REDUCE == 0:
            res = tl.min(acc, axis=1)
        elif REDUCE == 1:
            res = tl.max(acc, axis=1)
        elif REDUCE == 4:
            res = tl.reduce(acc, 1, _mul)
        else:
            res = tl.sum(acc, axis=1)
        if REDUCE == 2:
            res = res / tl.maximum(n, 1).to(ACC)
        if REDUCE <= 1:
            res = tl.where(tl.max(saw_nan, axis=1) > 0, nan, res)
        res = tl.where(n > 0, res, nan)
    tl.store(out_ptr + r, res.to(out_ptr.dtype.element_ty), mask=rmask)


def segment_reduce(values: torch.Tensor, offsets: torch.Tensor, reduce: str) -> torch.Tensor:
    """Launch ``_segment_reduce_kernel`` on checked inputs: values ``[L]`` floating, offsets ``[R + 1]``
    int64 (0, non-decreasing, ending at L), ``reduce`` in min/max/mean/sum/prod/last. Returns ``[R]`` in
    values' dtype."""
    if reduce not in REDUCE_CODES:
        raise ValueError(f"segment_reduce: reduce must be one of {sorted(REDUCE_CODES)}, got {reduce!r}")
    values = values.contiguous()
    offsets = offsets.contiguous()
    R = offsets.shape[0] - 1
    out = torch.empty(R, dtype=values.dtype, device=values.device)
    if R == 0:
        return out
    if values.device.type == "cpu":  # the interpreter: few big blocks are fastest
        block_r, block_l = min(256, triton.next_power_of_2(R)), 128
    else:
        block_r, block_l = 32, 32
    acc = tl.float64 if values.dtype == torch.float64 else tl.float32
    # The interpreter needs the loop bound as a Python int; it runs on CPU tensors, so reading it is free.
    longest = int((offsets[1:] - offsets[:-1]).max()) if _ext.triton_interpret() else -1
    grid = (triton.cdiv(R, block_r),)
    with device_guard(values.device):  # Triton launches on the current device, not the tensors' one
        _segment_reduce_kernel[grid](
            values, offsets, out, R, REDUCE=REDUCE_CODES[reduce], ACC=acc, BLOCK_R=block_r, BLOCK_L=block_l,
            L_STATIC=longest,
        )
    return out
