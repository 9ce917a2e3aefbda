"""Triton prm_step_scores: each program takes a block of step-tag rows, gathers those rows of ``hidden``
(row indices from ``positions``), accumulates their fp32 dot products with the 1 or 2 head rows over
H in tiles, adds the bias and writes P(good step): ``1 / (1 + exp(l_bad - l_good))`` for two reward-token
rows, ``sigmoid(l)`` for a value head (contract: csrc/include/mstar/prm_step_scores.h). Only the S
gathered rows are read; no vocabulary logits exist. Loads widen to fp32 at once (bf16 arithmetic is
wrong under TRITON_INTERPRET)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast.kernels._launch import device_guard, static_bound


@triton.jit
def _prm_step_scores_kernel(
    hidden_ptr,
    pos_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    S,
    H,
    stride_row,
    C: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    H_STATIC: tl.constexpr,  # H under the interpreter, -1 when compiled (kernels/_launch.py: static_bound)
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = rows < S
    pos = tl.load(pos_ptr + rows, mask=rmask, other=0).to(tl.int64)
    acc0 = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_S], dtype=tl.float32)
    for h0 in range(0, H_STATIC if H_STATIC >= 0 else H, BLOCK_H):
        cols = h0 + tl.arange(0, BLOCK_H)
        cmask = cols < H
        x = tl.load(
            hidden_ptr + pos[:, None] * stride_row + cols[None, :],
            mask=rmask[:, None] & cmask[None, :],
            other=0.0,
        ).to(tl.float32)
        w0 = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        acc0 += tl.sum(x * w0[None, :], axis=1)
        if C == 2:
            w1 = tl.load(w_ptr + H + cols, mask=cmask, other=0.0).to(tl.float32)
            acc1 += tl.sum(x * w1[None, :], axis=1)
    if HAS_BIAS:
        acc0 += tl.load(b_ptr).to(tl.float32)
        if C == 2:
            acc1 += tl.load(b_ptr + 1).to(tl.float32)
    if C == 2:
        d = acc1 - acc0
    else:
        d = -acc0
    tl.store(out_ptr + rows, 1.0 / (1.0 + tl.exp(d)), mask=rmask)


def prm_step_scores(
    hidden: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Launch ``_prm_step_scores_kernel`` on checked inputs: hidden ``[N, H]`` (last dim contiguous),
    positions ``[S]`` int64 in ``[0, N)``, weight ``[C, H]`` (C in {1, 2}), bias ``[C]`` or None, all on
    one device with one dtype. Returns fp32 ``[S]``."""
    if hidden.stride(1) != 1:
        hidden = hidden.contiguous()
    positions = positions.contiguous()
    weight = weight.contiguous()
    S, H = positions.shape[0], hidden.shape[1]
    out = torch.empty(S, dtype=torch.float32, device=hidden.device)
    if S == 0:
        return out
    if hidden.device.type == "cpu":  # the interpreter: few big blocks are fastest
        block_s, block_h, warps = min(64, triton.next_power_of_2(S)), min(4096, triton.next_power_of_2(max(H, 1))), 4
    else:
        block_s, block_h, warps = 8, min(512, triton.next_power_of_2(max(H, 1))), 4
    bias_arg = bias.contiguous() if bias is not None else weight
    grid = (triton.cdiv(S, block_s),)
    with device_guard(hidden.device):  # Triton launches on the current device, not the tensors' one
        _prm_step_scores_kernel[grid](
            hidden, positions, weight, bias_arg, out, S, H, hidden.stride(0),
            C=weight.shape[0], HAS_BIAS=bias is not None, BLOCK_S=block_s, BLOCK_H=block_h,
            H_STATIC=static_bound(H), num_warps=warps,
        )
    return out
