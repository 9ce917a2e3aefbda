"""``sample_from_logits``: batched sampling with per-row temperature, top-k, top-p, min-p and seeds."""

from __future__ import annotations

import numbers

import torch

from mstar_fast.ops import _registry
from mstar_fast.ops.reference import STATUS_ALL_MASKED, STATUS_NON_FINITE

Param = float | int | torch.Tensor
_GOLDEN = 0x9E3779B97F4A7C15
_U64 = (1 << 64) - 1


def _to_signed64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >= 1 << 63 else v


def _row_param(name: str, value: Param, B: int, device: torch.device, integer: bool) -> torch.Tensor:
    """Broadcast a scalar or check a ``[B]`` tensor; returns an fp32 (or int64) tensor on ``device``."""
    dtype = torch.int64 if integer else torch.float32
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.shape[0] != B:
            raise ValueError(f"sample_from_logits: {name} must be a scalar or a [{B}] tensor, got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"sample_from_logits: {name} is on {value.device} but logits are on {device}")
        if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            raise ValueError(f"sample_from_logits: {name} must be an integer tensor, got {value.dtype}")
        if not integer and not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"sample_from_logits: {name} must be a real tensor, got {value.dtype}")
        return value.to(dtype)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"sample_from_logits: {name} must be a number or a [{B}] tensor, got {type(value).__name__}")
    if integer and int(value) != value:
        raise ValueError(f"sample_from_logits: {name} must be an integer, got {value}")
    return torch.full((B,), value, dtype=dtype, device=device)


def _check_ranges(checks: list[tuple[str, torch.Tensor, torch.Tensor, str]]) -> None:
    """Raise for the first (name, values, ok, rule) whose ``ok`` is false somewhere, naming the row. One
    host sync (on CUDA tensors) when every value is in range."""
    if not checks or bool(torch.stack([ok for _, _, ok, _ in checks]).all()):
        return
    for name, t, ok, rule in checks:
        bad = ~ok
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"sample_from_logits: {name} must be {rule}; row {row} has {t[row].item()}")


def _row_seeds(seed: int | torch.Tensor | None, B: int, device: torch.device) -> torch.Tensor:
    if seed is None:  # torch's generator decides, so torch.manual_seed makes the call reproducible
        return torch.randint(-(2**63), 2**63 - 1, (B,), dtype=torch.int64, device=device)
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 1 or seed.shape[0] != B:
            raise ValueError(f"sample_from_logits: seed must be an int or a [{B}] tensor, got shape {tuple(seed.shape)}")
        if seed.is_floating_point() or seed.is_complex() or seed.dtype == torch.bool:
            raise ValueError(f"sample_from_logits: seed must be an integer tensor, got {seed.dtype}")
        if seed.device != device:
            raise ValueError(f"sample_from_logits: seed is on {seed.device} but logits are on {device}")
        return seed.to(torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"sample_from_logits: seed must be None, an int or a [B] int64 tensor, got {type(seed).__name__}")
    # One int seeds the whole batch: row b gets its own key, so equal rows still draw independently.
    base = int(seed)
    rows = torch.tensor([_to_signed64(base + (b + 1) * _GOLDEN) for b in range(B)], dtype=torch.int64)
    if device.type == "cuda":  # from pinned memory the copy is queued on the stream: no host sync
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


def sample_from_logits(
    logits: torch.Tensor,
    temperature: Param = 1.0,
    top_k: Param = 0,
    top_p: Param = 1.0,
    min_p: Param = 0.0,
    seed: int | torch.Tensor | None = None,
    offset: int = 0,
    return_logprobs: bool = False,
    *,
    check: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits``.

    Args:
        logits: ``[B, V]`` float32, bfloat16 or float16 (float64 is computed in float32).
        temperature: scalar or ``[B]``, finite and >= 0; below ``reference.GREEDY_TEMPERATURE`` (1e-5, and 0)
            means greedy (argmax, lowest index on ties), on every backend. Why: at T < 1e-5 a token trailing
            the max by 0.004 (about one bf16 step of a logit near 1) has weight below exp(-400), so
            sampling is already greedy in all but name, while a positive subnormal T would make 1 / T
            overflow and (max - max) / T = 0 * inf NaN.
        top_k: scalar or ``[B]`` integer; keep tokens at least as probable as the k-th most probable
            (ties at the boundary are all kept); ``0`` is off.
        top_p: scalar or ``[B]`` in (0, 1]; keep a token when the mass of the tokens strictly more probable
            than it is below ``top_p`` (of the top-k-filtered distribution); ``1`` is off.
        min_p: scalar or ``[B]`` in [0, 1]; keep tokens with probability >= ``min_p`` times the largest;
            ``0`` is off. Filters apply to the temperature-scaled distribution in the order top-k,
            top-p, min-p.
        seed: ``None`` (per-row keys from torch's default generator), an int (row ``b`` is keyed by a
            hash of (seed, b)), or a ``[B]`` int64 tensor of per-row seeds. With a seed tensor, a row's
            token depends only on (its logits, its parameters, its seed, ``offset``) and the backend.
        offset: int >= 0, the Philox counter; use a new offset per decoding step.
        return_logprobs: also return the log-probability of each drawn token under the
            temperature-scaled, *unfiltered* distribution, ``log_softmax(logits / T)`` (T = 1 for greedy
            rows; computed as ``log_softmax((logits - max) / T)``, so finite logits near the float32
            maximum stay finite): what a trainer's softmax over the same logits computes.
        check: check the parameter ranges and the rows the kernel could not sample (NaN / +inf / all
            -inf), raising ValueError naming the row. Both read values on the host: on CUDA tensors that
            is a device sync per call (two when the parameters are fine), so ``None`` (the default) means
            True for CPU tensors and False for CUDA tensors. Unchecked, the call never syncs the host
            (CUDA graphs and overlap work); a row that cannot be sampled then comes back as a negative
            status instead of a token (-1: NaN or +inf, -2: all -inf; see :func:`raise_for_status`), and
            out-of-range parameters are the caller's responsibility. Shape, dtype and device checks
            always run (they need no values).

    Returns:
        ``[B]`` int64 tokens on the logits' device, or ``(tokens, logprobs)`` with fp32 logprobs.

    Raises:
        ValueError: a shape, dtype or device mismatch; with ``check``, also a row holding NaN or +inf, a
            row that is all -inf, or a parameter out of range.
    """
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"sample_from_logits: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"sample_from_logits: logits must be 2-D [B, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"sample_from_logits: logits must be floating point, got {logits.dtype}")
    if logits.dtype == torch.float64:
        logits = logits.float()
    if logits.shape[1] == 0:
        raise ValueError("sample_from_logits: logits has an empty vocabulary dimension (V == 0)")
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or not 0 <= offset < 2**63:
        raise ValueError(f"sample_from_logits: offset must be an int in [0, 2^63), got {offset!r}")
    B, device = logits.shape[0], logits.device

    t = _row_param("temperature", temperature, B, device, integer=False)
    k = _row_param("top_k", top_k, B, device, integer=True)
    p = _row_param("top_p", top_p, B, device, integer=False)
    mp = _row_param("min_p", min_p, B, device, integer=False)
    if check is None:
        check = device.type != "cuda"
    if check and B > 0:
        _check_ranges([
            ("temperature", t, torch.isfinite(t) & (t >= 0), "finite and >= 0"),
            ("top_k", k, k >= 0, ">= 0"),
            ("top_p", p, (p > 0) & (p <= 1), "in (0, 1]"),
            ("min_p", mp, (mp >= 0) & (mp <= 1), "in [0, 1]"),
        ])
    seeds = _row_seeds(seed, B, device)
    if B == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return (empty, torch.empty(0, dtype=torch.float32, device=device)) if return_logprobs else empty

    name, impl = _registry.implementation("sample_from_logits", device)
    args = (logits.contiguous(), t, k, p, mp, seeds, int(offset), bool(return_logprobs))
    # The compiled ops check ranges and statuses themselves for callers of torch.ops.mstar_fast.* (check=True
    # by default); this layer has decided already, so they skip both (and their host syncs).
    tokens, logprobs = impl(*args, False) if name in ("cpp", "cuda") else impl(*args)
    if check:
        raise_for_status(tokens)
    return (tokens, logprobs) if return_logprobs else tokens


def raise_for_status(tokens: torch.Tensor) -> None:
    """Raise ValueError naming the first row of ``tokens`` (``[B]`` int64, as ``sample_from_logits``
    returns them unchecked) that holds a status instead of a token: -1 (its logits hold NaN or +inf) or
    -2 (all -inf). Reads ``tokens`` on the host: one device sync for CUDA tensors, so call it where the
    tokens are read anyway (for example after copying them to the host)."""
    bad = tokens < 0
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        status = int(tokens[row])
        if status not in (STATUS_NON_FINITE, STATUS_ALL_MASKED):
            raise ValueError(f"sample_from_logits: row {row} holds {status}, which is neither a token nor a status")
        why = "holds NaN or +inf" if status == STATUS_NON_FINITE else "is all -inf (every token masked)"
        raise ValueError(f"sample_from_logits: logits row {row} {why}; {int(bad.sum())} bad row(s) in total")
