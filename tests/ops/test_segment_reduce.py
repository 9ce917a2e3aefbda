"""segment_reduce on every backend: random ragged layouts (many segments, empty ones, single elements,
one long segment, NaN), each reduction, against the torch reference, which is itself checked against a
plain-Python loop; plus the offsets checks."""

from __future__ import annotations

import math

import pytest
import torch

from mstar_fast import ops
from mstar_fast.ops.reference import segment_reduce_reference
from tests.ops._util import backend_device, ragged_offsets

OP = "segment_reduce"

NAN = float("nan")


def _python_oracle(values: list[float], offsets: list[int], reduce: str) -> list[float]:
    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        seg = values[a:b]
        if not seg:
            out.append(NAN)
        elif reduce == "last":
            out.append(seg[-1])
        elif reduce in ("min", "max") and any(math.isnan(x) for x in seg):
            out.append(NAN)
        else:
            out.append({"min": min, "max": max, "sum": math.fsum, "prod": math.prod,
                        "mean": lambda s: math.fsum(s) / len(s)}[reduce](seg))
    return out


def _ragged(seed: int, dtype: torch.dtype, R: int = 200, max_len: int = 24, p_nan: float = 0.02):
    gen = torch.Generator().manual_seed(seed)
    offsets = ragged_offsets(gen, R, max_len)
    offsets[-1] += 3000  # one long segment: several blocks of every kernel
    L = int(offsets[-1])
    values = 0.5 + torch.rand(L, generator=gen, dtype=torch.float64)  # prod stays finite
    values[torch.rand(L, generator=gen) < p_nan] = NAN
    return values.to(dtype), offsets


@pytest.mark.parametrize("reduce", ops.REDUCTIONS)
def test_reference_matches_python_loop(reduce):
    values, offsets = _ragged(0, torch.float64, R=60, max_len=6)
    values, offsets = values[: int(offsets[-2]) + 4], offsets.clone()
    offsets[-1] = values.shape[0]
    got = segment_reduce_reference(values, offsets, reduce)
    want = torch.tensor(_python_oracle(values.tolist(), offsets.tolist(), reduce), dtype=torch.float64)
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_reference_on_ragged_segments(backend, dtype):
    device = backend_device(backend)
    values, offsets = _ragged(1, dtype)
    counts = offsets[1:] - offsets[:-1]
    assert (counts == 0).any() and (counts == 1).any()  # the layout covers empty and one-step segments
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    for reduce in ops.REDUCTIONS:
        want = segment_reduce_reference(values, offsets, reduce)
        with ops.use_backend(backend):
            got = ops.segment_reduce(values.to(device), offsets.to(device), reduce)
        assert got.dtype == dtype and got.shape == (offsets.shape[0] - 1,)
        torch.testing.assert_close(got.cpu(), want, equal_nan=True, rtol=tol, atol=tol, msg=reduce)
        assert torch.equal(torch.isnan(got.cpu()), torch.isnan(want)), reduce


def test_hand_worked_example(backend):
    device = backend_device(backend)
    values = torch.tensor([0.9, 0.2, 0.7, 0.5, NAN, 0.4, 0.6, -1.0], device=device)
    offsets = torch.tensor([0, 3, 3, 4, 6, 8], device=device)
    want = {
        "min": [0.2, NAN, 0.5, NAN, -1.0],
        "max": [0.9, NAN, 0.5, NAN, 0.6],
        "sum": [1.8, NAN, 0.5, NAN, -0.4],
        "mean": [0.6, NAN, 0.5, NAN, -0.2],
        "prod": [0.126, NAN, 0.5, NAN, -0.6],
        "last": [0.7, NAN, 0.5, 0.4, -1.0],
    }
    with ops.use_backend(backend):
        for reduce, expected in want.items():
            got = ops.segment_reduce(values, offsets, reduce).cpu()
            torch.testing.assert_close(got, torch.tensor(expected), equal_nan=True, msg=reduce)


def test_no_segments_and_all_empty(backend):
    device = backend_device(backend)
    with ops.use_backend(backend):
        none = ops.segment_reduce(torch.empty(0, device=device), torch.zeros(1, dtype=torch.long, device=device), "min")
        empty = ops.segment_reduce(torch.empty(0, device=device), torch.zeros(4, dtype=torch.long, device=device), "sum")  # 3 empty
    assert none.shape == (0,)
    assert empty.shape == (3,) and bool(torch.isnan(empty).all())


@pytest.mark.backends("torch", "cpp")
def test_bad_inputs_raise_value_error(backend):
    v = torch.arange(5.0)
    cases = [
        ((v, torch.tensor([1, 5]), "min"), r"offsets\[0\] must be 0"),
        ((v, torch.tensor([0, 3, 2, 5]), "min"), r"non-decreasing, but offsets\[2\] = 2 < offsets\[1\] = 3"),
        ((v, torch.tensor([0, 2, 4]), "min"), r"must end at the number of values \(5\), but offsets\[-1\] = 4"),
        ((v, torch.tensor([0, 2, 6]), "min"), "must end at the number of values"),
        ((v, torch.tensor([0.0, 5.0]), "min"), "offsets must be int64"),
        ((v, torch.empty(0, dtype=torch.long), "min"), "R \\+ 1 >= 1"),
        ((v, torch.tensor([0, 5]), "median"), "reduce must be one of"),
        ((v.long(), torch.tensor([0, 5]), "sum"), "values must be float32"),
        ((v.view(5, 1), torch.tensor([0, 5]), "sum"), "values must be 1-D"),
        ((v, torch.tensor([0, 5], device="meta"), "sum"), "offsets is on meta"),
    ]
    with ops.use_backend(backend):
        for args, match in cases:
            with pytest.raises(ValueError, match=match):
                ops.segment_reduce(*args)


@pytest.mark.backends("cpp")
def test_compiled_op_checks_offsets(backend):
    from mstar_fast import _ext

    _ext.load_extension()
    with pytest.raises(ValueError, match="non-decreasing"):
        torch.ops.mstar_fast.segment_reduce(torch.arange(5.0), torch.tensor([0, 4, 3, 5]), "min")
    with pytest.raises(ValueError, match="reduce must be one of"):
        torch.ops.mstar_fast.segment_reduce(torch.arange(5.0), torch.tensor([0, 5]), "median")
