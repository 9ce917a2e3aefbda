"""prm_step_scores on every backend against the torch reference and against the full-LM-head path it
replaces (softmax over all logits, then gather two columns), plus its input checks."""

from __future__ import annotations

import pytest
import torch

from mstar_fast import ops
from mstar_fast.ops.reference import prm_step_scores_reference
from tests.ops._util import backend_device

OP = "prm_step_scores"


def _inputs(gen, N, H, C, dtype, bias, S):
    hidden = torch.randn(N, H, generator=gen).to(dtype)
    weight = (torch.randn(C, H, generator=gen) / H**0.5).to(dtype)
    b = torch.randn(C, generator=gen).to(dtype) if bias else None
    positions = torch.randint(0, N, (S,), generator=gen)
    return hidden, positions, weight, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("C,bias", [(2, False), (2, True), (1, True), (1, False)])
def test_matches_reference(backend, dtype, C, bias):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(100 * C + 10 * bias + str(dtype).__len__())
    for N, H, S in [(50, 37, 20), (300, 256, 64), (7, 1, 7), (64, 515, 129)]:
        hidden, positions, weight, b = _inputs(gen, N, H, C, dtype, bias, S)
        want = prm_step_scores_reference(hidden, positions, weight, b)
        to = lambda t: None if t is None else t.to(device)  # noqa: E731
        with ops.use_backend(backend):
            got = ops.prm_step_scores(to(hidden), to(positions), to(weight), to(b))
        assert got.dtype == torch.float32 and got.shape == (S,)
        torch.testing.assert_close(got.cpu(), want, atol=2e-6, rtol=2e-5)


def test_equals_full_vocabulary_softmax_then_gather(backend):
    """The quantity the usual implementation computes: every logit, softmax over the two reward tokens."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(1)
    N, H, V, good, bad = 200, 64, 1000, 17, 933
    hidden = torch.randn(N, H, generator=gen)
    lm_head = torch.randn(V, H, generator=gen) / 8
    positions = torch.tensor([3, 50, 51, 199, 0, 3])
    logits = hidden @ lm_head.T  # [N, V]: what the fused op never builds
    want = torch.softmax(logits[positions][:, [good, bad]], dim=-1)[:, 0]
    with ops.use_backend(backend):
        got = ops.prm_step_scores(hidden.to(device), positions.to(device), lm_head[[good, bad]].to(device))
    torch.testing.assert_close(got.cpu(), want, atol=1e-6, rtol=1e-5)
    # A value head is a sigmoid of its one logit.
    head = torch.randn(1, H, generator=gen)
    with ops.use_backend(backend):
        got = ops.prm_step_scores(hidden.to(device), positions.to(device), head.to(device), torch.tensor([0.3]).to(device))
    torch.testing.assert_close(got.cpu(), torch.sigmoid(hidden[positions] @ head[0] + 0.3), atol=1e-6, rtol=1e-5)


def test_strided_rows_empty_positions_and_saturation(backend):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(40, 100, generator=gen)
    hidden = base[:, 10:74]  # row stride 100, columns contiguous: a view of a wider buffer
    weight = torch.randn(2, 64, generator=gen)
    positions = torch.tensor([0, 39, 5])
    with ops.use_backend(backend):
        got = ops.prm_step_scores(hidden.to(device), positions.to(device), weight.to(device))
        empty = ops.prm_step_scores(hidden.to(device), torch.empty(0, dtype=torch.long, device=device), weight.to(device))
        # Huge logits saturate to exactly 0 and 1, never NaN.
        sat = ops.prm_step_scores(
            torch.ones(2, 4, device=device), torch.tensor([0, 1], device=device),
            torch.tensor([[1e30, 1e30, 0, 0], [-1e30, -1e30, 0, 0]], device=device),
        )
    torch.testing.assert_close(got.cpu(), prm_step_scores_reference(hidden.contiguous(), positions, weight, None))
    assert empty.shape == (0,) and empty.dtype == torch.float32
    assert sat.cpu().tolist() == [1.0, 1.0]


def test_int32_positions_and_float64_inputs(backend):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(3)
    hidden, positions, weight, b = _inputs(gen, 30, 33, 2, torch.float64, True, 12)
    want = prm_step_scores_reference(hidden.float(), positions, weight.float(), b.float())
    with ops.use_backend(backend):
        got = ops.prm_step_scores(hidden.to(device), positions.int().to(device), weight.to(device), b.to(device))
    torch.testing.assert_close(got.cpu(), want)


@pytest.mark.backends("torch", "cpp")
def test_bad_inputs_raise_value_error_naming_the_problem(backend):
    h, w = torch.randn(10, 8), torch.randn(2, 8)
    pos = torch.tensor([0, 9])
    cases = [
        ((h, torch.tensor([0, 10]), w), r"positions\[1\] = 10"),
        ((h, torch.tensor([-1]), w), r"positions\[0\] = -1"),
        ((h, pos, torch.randn(3, 8)), "2 rows .* or 1 row"),
        ((h, pos, torch.randn(2, 9)), "9 columns but hidden has H = 8"),
        ((h, pos, w.bfloat16()), "weight dtype torch.bfloat16 does not match"),
        ((h, pos, w, torch.randn(3)), r"bias must have shape \[2\]"),
        ((h, pos, w, torch.randn(2).half()), "bias dtype"),
        ((h, pos.float(), w), "positions must be int64"),
        ((h[0], pos, w), "hidden must be 2-D"),
        ((h.int(), pos, w.int()), "hidden must be float32"),
        ((h, pos.to("meta"), w), "positions is on meta"),
        (([[1.0]], pos, w), "hidden must be a torch.Tensor"),
    ]
    for args, match in cases:
        with ops.use_backend(backend), pytest.raises(ValueError, match=match):
            ops.prm_step_scores(*args)


@pytest.mark.backends("cpp")
def test_compiled_op_checks_its_own_inputs(backend):
    """Calling torch.ops.mstar_fast.prm_step_scores directly still rejects bad input with ValueError."""
    from mstar_fast import _ext

    _ext.load_extension()
    h, w = torch.randn(10, 8), torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"positions must index rows of hidden in \[0, 10\)"):
        torch.ops.mstar_fast.prm_step_scores(h, torch.tensor([10]), w, None)
    with pytest.raises(ValueError, match="weight must be"):
        torch.ops.mstar_fast.prm_step_scores(h, torch.tensor([1]), torch.randn(4, 8), None)
