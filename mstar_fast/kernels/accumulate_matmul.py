# acc (fp32) += a @ b for bf16 / fp16 / fp32 a, b, with the product accumulated in fp32 inside the kernel:
# the in-place accumulation FLCE's weight gradient needs on a torch without `addmm(out_dtype=)` (before
# 2.8), where the alternative is upcasting both operands and running an fp32 GEMM (several times slower
# on tensor-core GPUs) or a [M, N] fp32 temporary per call. A plain tiled GEMM: each program owns one
# [BLOCK_M, BLOCK_N] tile of acc, reads it once, adds the K loop of tl.dot (bf16/fp16 inputs, fp32
# accumulator) and writes it back; tiles are grouped along M so neighbouring programs share b in L2.
"""Triton ``acc += a @ b`` with fp32 accumulation (used by ``mstar_fast.ops.fused_linear_cross_entropy``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mstar_fast import _ext
from mstar_fast.kernels._launch import device_guard, static_bound

__all__ = ["accumulate_matmul_"]


@triton.jit
def _accumulate_matmul_kernel(
    acc_ptr, a_ptr, b_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    K_STATIC: tl.constexpr,  # K as a Python int under the interpreter, -1 on a GPU (see _static_bound)
    UPCAST: tl.constexpr,  # convert operands to fp32 after loading (the interpreter's dot needs it)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K_STATIC if K_STATIC >= 0 else K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        total = tl.dot(a, b, total)
    c_ptrs = acc_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    c_mask = (rm[:, None] < M) & (rn[None, :] < N)
    c = tl.load(c_ptrs, mask=c_mask, other=0.0)
    tl.store(c_ptrs, c + total, mask=c_mask)


def accumulate_matmul_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc += a @ b`` in place, the product accumulated in fp32 (never rounded to a's dtype).

    Args:
        acc: ``[M, N]`` float32, any strides, on the device of ``a`` and ``b``; updated in place.
        a: ``[M, K]`` bfloat16 / float16 / float32, any strides (a transposed view is fine).
        b: ``[K, N]``, the same dtype as ``a``.

    Returns:
        ``acc``.

    Raises:
        ValueError: mismatched shapes, dtypes or devices.
    """
    shapes_ok = acc.dim() == a.dim() == b.dim() == 2 and a.shape[1] == b.shape[0]
    if not shapes_ok or tuple(acc.shape) != (a.shape[0], b.shape[1]):
        raise ValueError(
            f"accumulate_matmul_: need acc [M, N] += a [M, K] @ b [K, N], got {tuple(acc.shape)}, "
            f"{tuple(a.shape)}, {tuple(b.shape)}"
        )
    low = (torch.bfloat16, torch.float16, torch.float32)
    if acc.dtype != torch.float32 or a.dtype != b.dtype or a.dtype not in low:
        raise ValueError(
            f"accumulate_matmul_: acc must be float32 and a, b one of bfloat16/float16/float32, got "
            f"{acc.dtype}, {a.dtype}, {b.dtype}"
        )
    if not (acc.device == a.device == b.device):
        raise ValueError(f"accumulate_matmul_: acc on {acc.device}, a on {a.device}, b on {b.device}")
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0 or K == 0:
        return acc
    interp = _ext.triton_interpret() or acc.device.type == "cpu"
    if interp:  # one big tile per program is what the interpreter runs fastest
        bm, bn, bk, warps, stages = 64, 64, 64, 4, 1
    else:  # a common tensor-core tile for bf16 / fp16 on sm_80 / sm_90
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    with device_guard(acc.device):  # Triton launches on the current device, not the tensors' one
        _accumulate_matmul_kernel[grid](
            acc, a, b, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), acc.stride(0), acc.stride(1),
            K_STATIC=static_bound(K), UPCAST=interp,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=warps, num_stages=stages,
        )
    return acc
