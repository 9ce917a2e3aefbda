"""group_topk on every backend: random groups with heavy ties, NaN, -inf, invalid rows and empty
groups, against a plain-Python oracle (and the torch reference against the same oracle), plus checks."""

from __future__ import annotations

import math

import pytest
import torch

from mstar_fast import ops
from mstar_fast.ops.reference import group_topk_reference
from tests.ops._util import backend_device, ragged_offsets

OP = "group_topk"

NAN = float("nan")


def _oracle(scores: list[float], offsets: list[int], k: int, valid: list[bool] | None) -> list[bool]:
    out = [False] * len(scores)
    for a, b in zip(offsets[:-1], offsets[1:]):
        rows = [i for i in range(a, b) if valid is None or valid[i]]
        # Higher score first, NaN after every number, then the lower index.
        rows.sort(key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0.0, i))
        for i in rows[:k]:
            out[i] = True
    return out


def _groups(seed: int, G: int = 120, max_len: int = 20):
    gen = torch.Generator().manual_seed(seed)
    offsets = ragged_offsets(gen, G, max_len)
    offsets[-1] += 300  # one big group: several tiles in the Triton kernel
    L = int(offsets[-1])
    scores = torch.randint(0, 6, (L,), generator=gen).double() / 4  # many ties
    r = torch.rand(L, generator=gen)
    scores[r < 0.1] = NAN
    scores[(r >= 0.1) & (r < 0.15)] = float("-inf")
    valid = torch.rand(L, generator=gen) < 0.7
    return scores, offsets, valid


@pytest.mark.parametrize("k", [0, 1, 2, 5, 400])
def test_reference_matches_oracle(k):
    scores, offsets, valid = _groups(0)
    for v in (valid, None):
        want = _oracle(scores.tolist(), offsets.tolist(), k, None if v is None else v.tolist())
        assert group_topk_reference(scores, offsets, k, v).tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_matches_oracle(backend, dtype):
    device = backend_device(backend)
    scores, offsets, valid = _groups(1)
    scores = scores.to(dtype)  # quarters are exact in every dtype, so ties survive
    counts = offsets[1:] - offsets[:-1]
    assert (counts == 0).any() and (counts == 1).any()
    for k in (0, 1, 2, 7):
        for v in (valid, None):
            want = _oracle(scores.double().tolist(), offsets.tolist(), k, None if v is None else v.tolist())
            with ops.use_backend(backend):
                got = ops.group_topk(scores.to(device), offsets.to(device), k, None if v is None else v.to(device))
            assert got.dtype == torch.bool and got.shape == scores.shape
            assert got.cpu().tolist() == want, (k, v is None)
            # Exactly min(k, #valid) rows per group.
            per_group = ops.segment_reduce(got.cpu().float(), offsets, "sum").nan_to_num(0)
            n_valid = ops.segment_reduce((v if v is not None else torch.ones_like(got.cpu())).float(), offsets, "sum")
            assert torch.equal(per_group, n_valid.nan_to_num(0).clamp(max=k))


def test_hand_worked_example(backend):
    device = backend_device(backend)
    #              group 0 (k=2)                 | group 1 (empty) | group 2
    scores = torch.tensor([0.3, NAN, 0.9, 0.9, 0.1, 0.5, NAN, NAN], device=device)
    offsets = torch.tensor([0, 5, 5, 8], device=device)
    valid = torch.tensor([True, True, True, False, True, False, True, True], device=device)
    with ops.use_backend(backend):
        plain = ops.group_topk(scores, offsets, 2).cpu().tolist()
        masked = ops.group_topk(scores, offsets, 2, valid).cpu().tolist()
    # Ties at 0.9 keep both (k=2); group 2 keeps 0.5 then the first NaN.
    assert plain == [False, False, True, True, False, True, True, False]
    # Row 3 is invalid: 0.9 then 0.3; group 2: 0.5 is invalid, so the two NaN rows are kept.
    assert masked == [True, False, True, False, False, False, True, True]


@pytest.mark.backends("torch", "cpp")
def test_bad_inputs_raise_value_error(backend):
    s, o = torch.rand(4), torch.tensor([0, 2, 4])
    cases = [
        ((s, o, -1), "k must be an int >= 0"),
        ((s, o, True), "k must be an int >= 0"),
        ((s, o, 1.5), "k must be an int >= 0"),
        ((s, o, 1, torch.ones(4)), "valid must be a bool tensor"),
        ((s, o, 1, torch.ones(3, dtype=torch.bool)), r"valid must have shape \[4\]"),
        ((s, torch.tensor([0, 3, 2, 4]), 1), "group_offsets must be non-decreasing"),
        ((s, torch.tensor([0, 2]), 1), "group_offsets must end at the number of values"),
        ((s.long(), o, 1), "scores must be float32"),
        ((s, o, 1, torch.ones(4, dtype=torch.bool, device="meta")), "valid is on meta"),
    ]
    with ops.use_backend(backend):
        for args, match in cases:
            with pytest.raises(ValueError, match=match):
                ops.group_topk(*args)
