"""fused_linear_cross_entropy vs F.cross_entropy(hidden @ W.T + b): values and gradients for hidden,
weight and bias, every reduction, ignored rows, odd sizes, chunk boundaries, fp32 / bf16 / fp64, autocast,
both backends (torch, and triton under TRITON_INTERPRET=1), and that no [N, V] tensor is ever made."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mstar_fast.ops import BackendUnavailableError, fused_linear_cross_entropy, use_backend
from mstar_fast.ops.reference import fused_linear_cross_entropy_reference

OP = "fused_linear_cross_entropy"
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(N, H, V, dtype, bias, ignore_every=0, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, H, generator=g) * scale).to(dtype)
    w = (torch.randn(V, H, generator=g) * scale).to(dtype)
    b = torch.randn(V, generator=g).to(dtype) if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        y[::ignore_every] = -100
    return h, w, b, y


def _run(fn, h, w, b, y, reduction, go_seed=1, **kw):
    """Loss and the gradients for (hidden, weight, bias) under a random upstream gradient."""
    h = h.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_() if b is not None else None
    loss = fn(h, w, y, bias=b, reduction=reduction, **kw)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(go_seed), dtype=loss.dtype)
    (loss * go).sum().backward()
    return [loss.detach(), h.grad, w.grad] + ([b.grad] if b is not None else [])


def _torch_ce(h, w, y, bias=None, reduction="mean"):
    logits = h @ w.t()
    if bias is not None:
        logits = logits + bias
    return F.cross_entropy(logits, y, ignore_index=-100, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "N,H,V,bias,ignore_every,chunk",
    [
        (37, 24, 101, True, 3, 5),  # odd sizes, ignored rows, many chunks with a ragged last one
        (64, 16, 257, False, 0, None),  # no ignored row, one chunk
        (1, 7, 2, True, 0, 1),  # a single row, V = 2
        (19, 8, 1, False, 4, 4),  # V = 1: loss 0, gradient 0
    ],
)
def test_fp32_matches_torch(backend, reduction, N, H, V, bias, ignore_every, chunk):
    h, w, b, y = _inputs(N, H, V, torch.float32, bias, ignore_every)
    with use_backend(backend):
        ours = _run(fused_linear_cross_entropy, h, w, b, y, reduction, chunk_size=chunk)
    ref = _run(_torch_ce, h, w, b, y, reduction)
    assert ours[0].dtype == torch.float32
    for name, a, r in zip(["loss", "hidden", "weight", "bias"], ours, ref):
        assert a.shape == r.shape, name
        torch.testing.assert_close(a, r, rtol=2e-5, atol=2e-6, msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bf16_error_within_twice_torch(backend, reduction):
    """bf16 rule: our error vs an fp64 reference on the same (bf16-rounded) inputs is at most 2x the error
    of torch's own bf16 path."""
    h, w, b, y = _inputs(300, 64, 1000, torch.bfloat16, True, ignore_every=7)
    with use_backend(backend):
        ours = _run(fused_linear_cross_entropy, h, w, b, y, reduction, chunk_size=64)
    torch_bf16 = _run(_torch_ce, h, w, b, y, reduction)
    ref = _run(_torch_ce, h.double(), w.double(), b.double(), y, reduction)
    for name, a, t, r in zip(["loss", "hidden", "weight", "bias"], ours, torch_bf16, ref):
        assert a.dtype == (torch.float32 if name == "loss" else torch.bfloat16), name
        err = (a.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, f"{name}: error {err:.3g} > 2 x torch bf16 error {torch_err:.3g}"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_fp64(reduction):
    h, w, b, y = _inputs(13, 5, 11, torch.float64, True, ignore_every=4)
    args = tuple(t.requires_grad_() for t in (h, w, b))
    with use_backend("torch"):
        assert torch.autograd.gradcheck(
            lambda h, w, b: fused_linear_cross_entropy(h, w, y, bias=b, reduction=reduction, chunk_size=3), args
        )


def test_all_rows_ignored(backend):
    h, w, b, y = _inputs(9, 8, 17, torch.float32, True)
    y[:] = -100
    for reduction in ("mean", "sum", "none"):
        with use_backend(backend):
            ours = _run(fused_linear_cross_entropy, h, w, b, y, reduction)
        ref = _run(_torch_ce, h, w, b, y, reduction)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, equal_nan=True)


def test_custom_ignore_index_and_leading_dims():
    h, w, b, y = _inputs(24, 8, 30, torch.float32, False)
    y[::5] = 7  # class 7 is "ignored" here
    h3, y3 = h.view(2, 12, 8), y.view(2, 12)
    out = fused_linear_cross_entropy(h3, w, y3, ignore_index=7, reduction="none")
    assert out.shape == (2, 12)
    ref = F.cross_entropy(h @ w.t(), y, ignore_index=7, reduction="none").view(2, 12)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    mean = fused_linear_cross_entropy(h3, w, y3, ignore_index=7)
    torch.testing.assert_close(mean, F.cross_entropy(h @ w.t(), y, ignore_index=7), rtol=1e-5, atol=1e-6)


def test_reference_matches_torch():
    h, w, b, y = _inputs(20, 6, 9, torch.float32, True, ignore_every=3)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(fused_linear_cross_entropy_reference(h, w, y, b, reduction=reduction),
                                   _torch_ce(h, w, y, b, reduction))


def test_autocast_bf16_with_fp32_weight():
    """Under autocast, fp32 hidden/weight are cast to bf16 like F.linear; gradients reach the fp32 weight."""
    h, w, b, y = _inputs(40, 16, 50, torch.float32, False, ignore_every=3)
    w = w.requires_grad_()
    h = h.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused_linear_cross_entropy(h, w, y)
    loss.backward()
    assert loss.dtype == torch.float32 and w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    ref = F.cross_entropy(h.detach().bfloat16().double() @ w.detach().bfloat16().double().t(), y)
    assert abs(loss.item() - ref.item()) < 1e-2


def test_retain_graph_second_backward():
    h, w, b, y = _inputs(21, 8, 33, torch.float64, True, ignore_every=4)
    h.requires_grad_()
    loss = fused_linear_cross_entropy(h, w, y, bias=b, chunk_size=4) * 3.0
    (g1,) = torch.autograd.grad(loss, h, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, h)
    (ref,) = torch.autograd.grad(_torch_ce(h, w, y, b) * 3.0, h)
    torch.testing.assert_close(g1, ref)
    torch.testing.assert_close(g2, ref)


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_never_builds_full_logits(reduction):
    N, H, V, C = 256, 16, 512, 32
    h, w, _, y = _inputs(N, H, V, torch.float32, False, ignore_every=5)
    h.requires_grad_()
    w.requires_grad_()
    with _MaxNumel() as rec:
        loss = fused_linear_cross_entropy(h, w, y, reduction=reduction, chunk_size=C)
        loss.sum().backward()
    # The largest buffers are one [C, V] chunk and the [V, H] weight gradient, far below N * V.
    assert rec.max_numel <= max(C * V, V * H)
    assert rec.max_numel < N * V // 4


def test_default_chunk_covers_many_rows():
    from mstar_fast.ops.fused_linear_cross_entropy import _chunk_rows

    assert _chunk_rows(4096, 151936, 4, torch.device("cpu"), None) >= 768
    assert _chunk_rows(10, 151936, 4, torch.device("cpu"), None) == 10
    assert _chunk_rows(4096, 32000, 2, torch.device("cpu"), None) % 64 == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(reduction="avg"), "reduction"),
        (dict(labels=torch.tensor([0, 1, 99])), "outside"),
        (dict(labels=torch.tensor([0, -1, 2])), "outside"),
        (dict(labels=torch.tensor([0.0, 1.0, 2.0])), "integer"),
        (dict(labels=torch.tensor([0, 1])), "leading shape"),
        (dict(weight=torch.randn(10, 5)), "last dim"),
        (dict(weight=torch.randn(10, 4, dtype=torch.float64)), "cast them"),
        (dict(bias=torch.randn(9)), "bias"),
        (dict(weight=torch.randn(0, 4)), "empty"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(hidden=torch.randn(3, 4), weight=torch.randn(10, 4), labels=torch.tensor([0, 1, 2]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fused_linear_cross_entropy(**args)


def test_forcing_an_unimplemented_backend_fails_clearly():
    with use_backend("cpp"), pytest.raises(BackendUnavailableError, match="no cpp implementation"):
        fused_linear_cross_entropy(torch.randn(3, 4), torch.randn(10, 4), torch.tensor([0, 1, 2]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_triton_matches_cpu(dtype):
    h, w, b, y = _inputs(300, 64, 5000, dtype, True, ignore_every=7)
    cpu = _run(fused_linear_cross_entropy, h, w, b, y, "mean")
    with use_backend("triton"):
        gpu = _run(fused_linear_cross_entropy, h.cuda(), w.cuda(), b.cuda(), y.cuda(), "mean")
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    for a, r in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu().float(), r.float(), **tol)
