# Triton part of fused_linear_cross_entropy: one program per row of a [C, V] logits chunk (the chunk
# itself comes from a torch matmul). Pass 1 is an online softmax (running max + rescaled sum) over the
# row in BLOCK_V tiles, giving lse and the row's loss; pass 2 overwrites the logits in place with the
# gradient (softmax - onehot(label)) * scale, so no second [C, V] buffer is ever allocated. Loads are
# converted to fp32 at once (bf16 arithmetic is wrong under TRITON_INTERPRET and imprecise anyway).
"""Triton backend of ``mstar_fast.ops.fused_linear_cross_entropy`` (see mstar_fast/ops/fused_linear_cross_entropy.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast import _ext
from mstar_fast.kernels._launch import device_guard, static_bound

__all__ = ["cross_entropy_chunk"]


@triton.jit
def _fused_linear_cross_entropy_kernel(
    logits_ptr,  # [C, V] fp32/bf16/fp16, row stride `stride_row`; overwritten with the gradient
    stride_row,
    labels_ptr,  # [C] int64
    scale_ptr,  # [C] fp32 per-row gradient scale (read only when HAS_SCALE)
    loss_ptr,  # [C] fp32 out: lse - logit[label], 0 for ignored rows
    n_cols,
    ignore_index,
    HAS_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BF16_RNE: tl.constexpr,  # round fp32 -> bf16 to nearest-even by hand (only the interpreter needs it)
    BLOCK_V: tl.constexpr,
    N_STATIC: tl.constexpr,  # n_cols under the interpreter, -1 when compiled (kernels/_launch.py: static_bound)
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 past 2^31 elements
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    offs = tl.arange(0, BLOCK_V)

    # Pass 1: online softmax. m is the running max, d the sum of exp(x - m) rescaled when m grows.
    m = float("-inf")
    d = 0.0
    for start in range(0, N_STATIC if N_STATIC >= 0 else n_cols, BLOCK_V):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    safe_label = tl.where(valid, label, 0)
    x_label = tl.load(base + safe_label).to(tl.float32)
    loss = tl.where(valid, lse - x_label, 0.0)
    tl.store(loss_ptr + row, loss)

    if WRITE_GRAD:
        if HAS_SCALE:
            scale = tl.load(scale_ptr + row).to(tl.float32)
        else:
            scale = 1.0
        scale = tl.where(valid, scale, 0.0)  # ignored rows get an all-zero gradient
        # Pass 2: d loss / d logits = softmax - onehot(label), written over the logits.
        for start in range(0, N_STATIC if N_STATIC >= 0 else n_cols, BLOCK_V):
            cols = start + offs
            mask = cols < n_cols
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            g = (p - tl.where(cols == label, 1.0, 0.0)) * scale
            if BF16_RNE:
                # The interpreter truncates on fp32 -> bf16 while GPUs round to nearest even; rounding
                # here keeps the interpreter's numerics (and so the tests) equal to the GPU's.
                bits = g.to(tl.int32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
                g = bits.to(tl.float32, bitcast=True)
            tl.store(base + cols, g.to(logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_chunk(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    scale: torch.Tensor | None,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row cross-entropy of one logits chunk, and its gradient written over ``logits``.

    Args:
        logits: ``[C, V]`` fp32/bf16/fp16 with unit column stride; owned by the caller and overwritten
            with the gradient when ``want_grad``.
        labels: ``[C]`` int64 in ``[0, V)`` or ``ignore_index``.
        ignore_index: label value whose rows get loss 0 and gradient 0.
        scale: ``[C]`` fp32 factor for each row's gradient (the upstream gradient), or None for 1.
        want_grad: compute the gradient.

    Returns:
        (loss ``[C]`` fp32, gradient ``[C, V]`` in logits' dtype (the same storage as ``logits``) or None).
    """
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"fused_linear_cross_entropy (triton): logits must be fp32, bf16 or fp16, got {logits.dtype}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    C, V = logits.shape
    loss = torch.empty(C, dtype=torch.float32, device=logits.device)
    if C == 0:
        return loss, (logits if want_grad else None)
    labels = labels.contiguous().to(torch.int64)
    if scale is not None:
        scale = scale.contiguous().to(torch.float32)
    # The interpreter runs one big tile per program fastest; on a GPU 8-32K columns per tile keep the
    # registers from spilling (the same bound Liger uses).
    cap = 1 << 16 if _ext.triton_interpret() else 1 << 14
    block = min(cap, triton.next_power_of_2(V))
    num_warps = 32 if block >= 1 << 14 else (16 if block >= 1 << 12 else 8)
    with device_guard(logits.device):  # Triton launches on the current device, not the tensors' one
        _fused_linear_cross_entropy_kernel[(C,)](
            logits,
            logits.stride(0),
            labels,
            scale if scale is not None else loss,  # any valid pointer; not read when HAS_SCALE is False
            loss,
            V,
            ignore_index,
            HAS_SCALE=scale is not None,
            WRITE_GRAD=want_grad,
            BF16_RNE=logits.dtype == torch.bfloat16 and _ext.triton_interpret(),
            BLOCK_V=block,
            N_STATIC=static_bound(V),
            num_warps=num_warps,
        )
    return loss, (logits if want_grad else None)
