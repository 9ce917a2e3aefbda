"""``fused_linear_cross_entropy``: cross-entropy of a linear layer's output without the ``[N, V]`` logits.

The rows are processed in chunks of ``C`` rows: per chunk the ``[C, V]`` logits are built by one matmul,
turned into per-row losses and, in the same pass, into the gradient of the logits, which is immediately
folded into the gradients of ``hidden`` (``g @ W``), ``weight`` (``g.T @ h``, accumulated in fp32) and
``bias``. For ``mean`` / ``sum`` this all happens in forward (the upstream gradient is a scalar that
backward multiplies in), so backward costs nothing and no chunk is recomputed; for ``none`` the upstream
gradient differs per row and must be folded in before the sum over rows, so forward only computes losses
and backward recomputes the chunks. Rows whose label is ``ignore_index`` are dropped before any matmul.

Backends (declared in ``_registry``): ``triton`` (the per-chunk softmax + gradient kernel in
``mstar_fast/kernels/fused_linear_cross_entropy.py``, the default on CUDA) and ``torch`` (the same chunking with
in-place torch ops, the default on CPU). The matmuls are torch in both. With ``MSTAR_FAST_FLCE_LIGER=1``
and ``liger_kernel`` importable, CUDA calls with reduction mean/sum go to Liger-Kernel's implementation.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable

import torch

from mstar_fast import _ext
from mstar_fast.ops import _registry

logger = logging.getLogger("mstar_fast")

REDUCTIONS = ("mean", "sum", "none")
# Bytes of one [C, V] logits chunk when the caller does not choose C. 512 MiB keeps C >= 768 rows for
# V = 152K (each chunk reads all of W, so C must stay large for the matmuls to be compute bound: the
# arithmetic intensity of a chunk is about C / 2 flop per byte of W) while staying small next to the
# fp32 [V, H] weight gradient that any training step holds anyway.
_CHUNK_BYTES = {"cpu": 512 << 20, "cuda": 512 << 20}
_MIN_CHUNK_ROWS = 64

# A chunk CE: (logits [C, V] owned by the caller, labels [C], ignore_index, scale [C] fp32 or None,
# want_grad) -> (loss [C] fp32, grad [C, V] in logits' dtype or None).
ChunkCE = Callable[[torch.Tensor, torch.Tensor, int, "torch.Tensor | None", bool], tuple[torch.Tensor, "torch.Tensor | None"]]


def cross_entropy_chunk_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    scale: torch.Tensor | None,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch version of the per-chunk kernel: in-place softmax so only one extra [C] vector is made.

    ``logits`` is ``[C, V]``; for fp32/fp64 it is modified in place; bf16/fp16 chunks are upcast to one
    fp32 copy first (softmax in half precision would lose the small probabilities)."""
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    C = x.shape[0]
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    x_label = x.gather(1, safe.view(C, 1)).view(C)
    m = x.amax(dim=1, keepdim=True)
    x.sub_(m).exp_()  # x = exp(logits - max)
    s = x.sum(dim=1, keepdim=True)
    lse = (m + s.log()).view(C)
    loss = torch.where(valid, lse - x_label, torch.zeros_like(lse))
    if not want_grad:
        return loss, None
    x.div_(s)  # softmax
    rows = torch.arange(C, device=x.device)
    x[rows, safe] -= 1.0
    if scale is not None or not bool(valid.all()):  # callers drop ignored rows, so usually skipped
        row_scale = valid.to(x.dtype) if scale is None else torch.where(valid, scale.to(x.dtype), 0.0)
        x.mul_(row_scale.view(C, 1))
    return loss, x.to(logits.dtype)


def _chunk_rows(n: int, v: int, itemsize: int, device: torch.device, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return max(1, min(int(chunk_size), max(n, 1)))
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES["cuda"])
    rows = max(_MIN_CHUNK_ROWS, budget // max(1, v * max(itemsize, 4)))
    rows = (rows // _MIN_CHUNK_ROWS) * _MIN_CHUNK_ROWS
    return max(1, min(rows, n))


@functools.lru_cache(maxsize=None)
def _addmm_out_dtype(device: torch.device, dtype: torch.dtype) -> bool:
    """Feature test, once per (device, dtype): does ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)``
    accumulate a low-precision product into an fp32 ``acc`` in place, and get it right? (torch >= 2.8 on
    CUDA has the overload; CPU builds and older releases raise.) Tested by running it, never by comparing
    version strings."""
    try:
        a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=dtype, device=device)
        acc = torch.full((2, 2), 0.5, dtype=torch.float32, device=device)
        torch.addmm(acc, a, a.t(), out_dtype=torch.float32, out=acc)
        want = torch.tensor([[5.5, 11.5], [11.5, 25.5]])
        return bool(torch.equal(acc.cpu(), want))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=None)
def _triton_accumulate() -> Callable | None:
    mod, why = _ext.load_triton()
    if mod is None:
        logger.warning("mstar_fast: fused_linear_cross_entropy on a torch without addmm(out_dtype=) and without "
                       "triton upcasts each chunk's weight-gradient GEMM to fp32 (slow): %s", why)
        return None
    return importlib.import_module("mstar_fast.kernels.accumulate_matmul").accumulate_matmul_


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32/fp64) += a @ b for a, b in the compute dtype, without rounding the product to bf16/fp16
    first (that rounding, repeated per chunk, would make the weight gradient worse than torch's own), and
    on CUDA without an fp32 temporary the size of acc ([V, H] for the weight gradient) per chunk.

    CUDA: cuBLAS accumulating into acc (``addmm(out_dtype=float32, out=acc)``, torch >= 2.8) where the
    feature test passes; else the Triton kernel ``kernels/accumulate_matmul.py`` (bf16/fp16 tensor cores,
    fp32 accumulator, acc read and written once); else upcast copies of a and b and an fp32 GEMM.
    CPU: upcast copies of a and b (``[V, C]`` and ``[C, H]``; the CPU has no fp32-output bf16 GEMM)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.device.type == "cuda" and acc.dtype == torch.float32:
        if _addmm_out_dtype(acc.device, a.dtype):
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        accumulate = _triton_accumulate()
        if accumulate is not None:
            accumulate(acc, a, b)
            return
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _flce_chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    row_scale: torch.Tensor | float,
    need: tuple[bool, bool, bool],
    chunk_size: int | None,
    ce: ChunkCE,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The chunk loop over rows that are all valid (ignored rows were dropped by the caller).

    Args:
        hidden: ``[n, H]``; weight ``[V, H]``; bias ``[V]`` or None; labels ``[n]`` int64 in [0, V).
        row_scale: gradient factor per row: a float, or a ``[n]`` fp32 tensor.
        need: which of (hidden, weight, bias) gradients to compute; all False computes only losses.

    Returns:
        (loss ``[n]`` fp32 (fp64 for fp64 inputs), grad_hidden ``[n, H]`` in hidden's dtype, grad_weight ``[V, H]`` fp32 (fp64 for
        fp64 inputs), grad_bias ``[V]`` same accumulation dtype), unneeded gradients as None.
    """
    n, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    want_grad = any(need)
    loss = torch.empty(n, dtype=acc_dtype, device=dev)
    grad_h = torch.empty_like(hidden) if need[0] else None
    grad_w = torch.zeros(V, H, dtype=acc_dtype, device=dev) if need[1] else None
    grad_b = torch.zeros(V, dtype=acc_dtype, device=dev) if need[2] and bias is not None else None
    C = _chunk_rows(n, V, hidden.element_size(), dev, chunk_size)
    if not isinstance(row_scale, torch.Tensor) and row_scale != 1.0:
        # A [n] vector lets the chunk kernel fold the factor into the pass that writes the gradient.
        row_scale = torch.full((n,), float(row_scale), dtype=acc_dtype, device=dev)
    wt = weight.t()
    # One logits buffer for all chunks: the chunk kernels work in place, and reusing the pages saves a
    # fresh (page-faulting, on CPU) allocation of C x V per chunk.
    buf = torch.empty(min(C, n), V, dtype=hidden.dtype, device=dev) if n > 0 else None
    for start in range(0, n, C):
        end = min(start + C, n)
        h = hidden[start:end]
        logits = buf[: end - start]
        if bias is not None:
            torch.addmm(bias, h, wt, out=logits)
        else:
            torch.mm(h, wt, out=logits)
        scale = row_scale[start:end] if isinstance(row_scale, torch.Tensor) else None
        chunk_loss, g = ce(logits, labels[start:end], ignore_index, scale, want_grad)
        loss[start:end] = chunk_loss
        if not want_grad:
            continue
        assert g is not None
        if grad_h is not None:
            torch.mm(g, weight, out=grad_h[start:end])
        if grad_w is not None:
            _addmm_fp32(grad_w, g.t(), h)
        if grad_b is not None:
            grad_b.add_(g.sum(dim=0, dtype=acc_dtype))
        del g
    return loss, grad_h, grad_w, grad_b


def _select_valid(
    hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(row index of valid rows or None when all are valid, hidden rows, labels rows)."""
    valid = labels != ignore_index
    n_valid = int(valid.sum())
    if n_valid == labels.numel():
        return None, hidden, labels
    idx = valid.nonzero().view(-1)
    return idx, hidden.index_select(0, idx), labels.index_select(0, idx)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Autograd glue; inputs are already validated, flattened and of one dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, chunk_size, ce):  # noqa: D102
        N = hidden.shape[0]
        idx, h, y = _select_valid(hidden, labels, ignore_index)
        n_valid = y.shape[0]
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        ctx.reduction = reduction
        # Inputs are saved in every mode (they are alive anyway): "none" recomputes from them, and a
        # second backward through a retained graph recomputes from them too.
        ctx.save_for_backward(hidden, weight, bias, labels)
        ctx.ignore_index, ctx.chunk_size, ctx.ce = ignore_index, chunk_size, ce
        ctx.grads = None
        if reduction == "none":
            # The per-row upstream gradient is unknown here: recompute the chunks in backward.
            loss_v, _, _, _ = _flce_chunks(h, weight, bias, y, ignore_index, 1.0, (False,) * 3, chunk_size, ce)
            out = torch.zeros(N, dtype=loss_v.dtype, device=hidden.device)
            if idx is None:
                out.copy_(loss_v)
            else:
                out.index_copy_(0, idx, loss_v)
            return out

        # mean: 1 / n_valid per row; with no valid row torch returns NaN and zero gradients, so do we.
        scale = 1.0 if reduction == "sum" else (1.0 / n_valid if n_valid > 0 else 0.0)
        ctx.scale = scale
        loss_v, g_h, g_w, g_b = _flce_chunks(h, weight, bias, y, ignore_index, scale, need, chunk_size, ce)
        total = loss_v.sum()
        if reduction == "mean":
            total = total / n_valid if n_valid > 0 else torch.full_like(total, float("nan"))
        if g_h is not None and idx is not None:
            g_h = torch.zeros_like(hidden).index_copy_(0, idx, g_h)
        ctx.grads = (
            g_h,
            None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype),
        )
        return total

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        if ctx.grads is not None:
            g_h, g_w, g_b = ctx.grads
            # Dropping ctx's reference lets autograd move these into .grad without a copy.
            ctx.grads = None
            # A scalar upstream gradient: scale the gradients made in forward, in place (we own them).
            if float(grad_out) != 1.0:
                for g in (g_h, g_w, g_b):
                    if g is not None:
                        g.mul_(grad_out.to(g.dtype))
            return g_h, g_w, g_b, None, None, None, None, None

        # reduction "none", or a second backward through a retained graph: recompute chunk by chunk.
        hidden, weight, bias, labels = ctx.saved_tensors
        idx, h, y = _select_valid(hidden, labels, ctx.ignore_index)
        if ctx.reduction == "none":
            go = grad_out if idx is None else grad_out.index_select(0, idx)
        else:
            go = float(grad_out) * ctx.scale
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        _, g_h, g_w, g_b = _flce_chunks(h, weight, bias, y, ctx.ignore_index, go, need, ctx.chunk_size, ctx.ce)
        if g_h is not None and idx is not None:
            g_h = torch.zeros_like(hidden).index_copy_(0, idx, g_h)
        return (
            g_h,
            None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype),
            None, None, None, None, None,
        )


@functools.lru_cache(maxsize=None)
def _liger() -> Callable | None:
    try:
        mod = importlib.import_module("liger_kernel.transformers.functional")
        return getattr(mod, "liger_fused_linear_cross_entropy")
    except (ImportError, AttributeError) as exc:
        logger.info("mstar_fast: MSTAR_FAST_FLCE_LIGER=1 but liger_kernel is unusable (%s)", exc)
        return None


def _use_liger(device: torch.device, reduction: str) -> Callable | None:
    """Liger-Kernel's FLCE, when asked for with MSTAR_FAST_FLCE_LIGER=1 and it can serve this call."""
    if os.environ.get("MSTAR_FAST_FLCE_LIGER", "0") in ("", "0") or device.type != "cuda":
        return None
    if reduction == "none":  # older Liger releases scale the summed weight gradient wrongly for "none"
        return None
    if _registry.forced_backend() not in ("auto", "triton"):
        return None
    return _liger()


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
) -> None:
    name = "fused_linear_cross_entropy"
    for arg, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise ValueError(f"{name}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"{name}: ignore_index must be an int, got {ignore_index!r}")
    if hidden.dim() < 1:
        raise ValueError(f"{name}: hidden must be [..., H], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
    H = hidden.shape[-1]
    V = weight.shape[0]
    if weight.shape[1] != H:
        raise ValueError(f"{name}: weight is [V, H] = {tuple(weight.shape)} but hidden's last dim is {H}")
    if V == 0:
        raise ValueError(f"{name}: weight has an empty vocabulary dimension (V == 0)")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{name}: labels must have hidden's leading shape {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be an integer tensor, got {labels.dtype}")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"{name}: bias must be [V] = [{V}], got shape {tuple(bias.shape)}")
    for arg, t in (("hidden", hidden), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"{name}: {arg} must be float32, bfloat16, float16 or float64, got {t.dtype}")
        if t.device != hidden.device:
            raise ValueError(f"{name}: {arg} is on {t.device} but hidden is on {hidden.device}")
    if labels.device != hidden.device:
        raise ValueError(f"{name}: labels is on {labels.device} but hidden is on {hidden.device}")


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, labels)`` with autograd, never holding ``[N, V]`` logits.

    Args:
        hidden: ``[N, H]`` (or ``[..., H]``) float32, bfloat16, float16 or float64.
        weight: ``[V, H]``, the same dtype as ``hidden`` (under ``torch.autocast`` both are cast to the
            autocast dtype, as ``F.linear`` would).
        labels: ``[N]`` (or ``[...]``) integer class ids in ``[0, V)``, or ``ignore_index``.
        bias: optional ``[V]``.
        ignore_index: rows with this label contribute no loss and no gradient (and cost no matmul).
        reduction: ``"mean"`` over non-ignored rows (NaN when there are none, like torch), ``"sum"``, or
            ``"none"`` (per-row losses shaped like ``labels``, 0 at ignored rows).
        chunk_size: rows per chunk; default: as many as fit a 256 MiB (CPU) / 512 MiB (CUDA) logits chunk.

    Returns:
        float32 loss (float64 for float64 inputs): a scalar, or ``labels.shape`` for ``reduction="none"``. Gradients flow to
        ``hidden``, ``weight`` and ``bias`` in their own dtypes; the weight and bias gradients are
        accumulated over chunks in fp32.

    Raises:
        ValueError: wrong shapes, dtypes, devices, a label outside ``[0, V)``, or a bad argument.
    """
    _check_inputs(hidden, weight, labels, bias, ignore_index, reduction)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be a positive int or None, got {chunk_size!r}")
    device = hidden.device
    if torch.is_autocast_enabled(device.type):
        dt = torch.get_autocast_dtype(device.type)
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    if weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(
            f"fused_linear_cross_entropy: hidden is {hidden.dtype} but weight is {weight.dtype}"
            + (f" and bias is {bias.dtype}" if bias is not None else "")
            + "; cast them to one dtype (or call under torch.autocast)"
        )
    lead = labels.shape
    V, H = weight.shape
    hidden2 = hidden.reshape(-1, H)
    labels1 = labels.reshape(-1).to(torch.int64)
    valid = labels1 != ignore_index
    if bool(valid.any()):
        lo, hi = int(labels1[valid].min()), int(labels1[valid].max())
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"fused_linear_cross_entropy: label {bad} is outside [0, {V}) and is not ignore_index={ignore_index}"
            )
    if not weight.is_contiguous():
        weight = weight.contiguous()
    if not hidden2.is_contiguous():
        hidden2 = hidden2.contiguous()

    liger = _use_liger(device, reduction)
    if liger is not None:
        out = liger(hidden2, weight, labels1, bias=bias, ignore_index=ignore_index, reduction=reduction)
        out = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
        return out.float()

    _, ce = _registry.implementation("fused_linear_cross_entropy", device)
    with torch.autocast(device.type, enabled=False):  # the chunk matmuls run in the inputs' dtype
        out = _FusedLinearCrossEntropy.apply(hidden2, weight, bias, labels1, ignore_index, reduction, chunk_size, ce)
    return out.view(lead) if reduction == "none" else out
