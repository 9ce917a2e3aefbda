"""torch.compile over every op: the compiled library's ops trace into one graph (their fake / Meta
implementations give the shapes; ``torch.library.opcheck`` checks those against the real kernels), and
each public op, on every backend this machine has, gives the eager answer when compiled (the Python
layer's value checks, the backend choice and the Triton launchers are graph breaks, run as plain Python)."""

from __future__ import annotations

import pytest
import torch

from mstar_fast import _ext
from mstar_fast.ops import (
    fused_linear_cross_entropy,
    group_topk,
    prm_step_scores,
    sample_from_logits,
    segment_reduce,
    use_backend,
)
from mstar_fast.ops import reference as ref
from tests.ops._util import backend_device


def _inputs(dev: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    return dict(
        logits=torch.randn(5, 300, generator=gen).to(dev),
        hidden=torch.randn(12, 16, generator=gen).to(dev),
        positions=torch.tensor([0, 4, 11]).to(dev),
        head=torch.randn(2, 16, generator=gen).to(dev),
        values=torch.randn(10, generator=gen).to(dev),
        offsets=torch.tensor([0, 3, 3, 10]).to(dev),
        weight=torch.randn(40, 16, generator=gen).to(dev),
        labels=torch.tensor([1, 5, -100, 39, 0, 2, 2, 7, 8, 9, 10, 11]).to(dev),
    )


def _compiled_ops_ready() -> str:
    mod, why = _ext.load_extension()
    return why if mod is None else ""


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.skipif(bool(_compiled_ops_ready()), reason=_compiled_ops_ready() or "extension loaded")
def test_compiled_library_ops_trace_in_one_graph_and_pass_opcheck():
    d = _inputs(torch.device("cpu"))
    B = d["logits"].shape[0]
    row = dict(t=torch.full((B,), 0.8), k=torch.full((B,), 20), p=torch.full((B,), 0.9), mp=torch.zeros(B),
               seed=torch.arange(B))
    ops = torch.ops.mstar_fast
    calls = {
        "sample_from_logits": (ops.sample_from_logits,
                               (d["logits"], row["t"], row["k"], row["p"], row["mp"], row["seed"], 3, True)),
        "prm_step_scores": (ops.prm_step_scores, (d["hidden"], d["positions"], d["head"], None)),
        "segment_reduce": (ops.segment_reduce, (d["values"], d["offsets"], "mean")),
        "group_topk": (ops.group_topk, (d["values"], d["offsets"], 2, None)),
    }
    for name, (op, args) in calls.items():
        want = op(*args)
        got = torch.compile(lambda *a, op=op: op(*a), backend="aot_eager", fullgraph=True)(*args)
        for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            torch.testing.assert_close(g, w, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")
        # fake tensors, schema, autograd registration against the real kernel (skip the slow dynamic-shape test)
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("op_name", ["sample_from_logits", "prm_step_scores", "segment_reduce", "group_topk",
                                     "fused_linear_cross_entropy"])
@pytest.mark.backends("cpp", "torch", "triton", "cuda")
def test_public_op_under_torch_compile_matches_the_reference(backend, op_name):
    from mstar_fast.ops._registry import OPS

    if backend not in OPS[op_name].backends:
        pytest.skip(f"{op_name} has no {backend} backend")
    dev = backend_device(backend)
    d = _inputs(dev)
    B = d["logits"].shape[0]
    seeds = torch.arange(B, device=dev)
    if op_name == "sample_from_logits":
        def fn():
            return sample_from_logits(d["logits"], temperature=0.8, top_k=20, top_p=0.9, seed=seeds, offset=3,
                                      return_logprobs=True)

        want = None
    elif op_name == "prm_step_scores":
        fn = lambda: prm_step_scores(d["hidden"], d["positions"], d["head"])  # noqa: E731
        want = ref.prm_step_scores_reference(d["hidden"].cpu(), d["positions"].cpu(), d["head"].cpu(), None)
    elif op_name == "segment_reduce":
        fn = lambda: segment_reduce(d["values"], d["offsets"], "max")  # noqa: E731
        want = ref.segment_reduce_reference(d["values"].cpu(), d["offsets"].cpu(), "max")
    elif op_name == "group_topk":
        fn = lambda: group_topk(d["values"], d["offsets"], 2)  # noqa: E731
        want = ref.group_topk_reference(d["values"].cpu(), d["offsets"].cpu(), 2, None)
    else:
        fn = lambda: fused_linear_cross_entropy(d["hidden"], d["weight"], d["labels"])  # noqa: E731
        want = ref.fused_linear_cross_entropy_reference(d["hidden"].cpu(), d["weight"].cpu(), d["labels"].cpu())
    with use_backend(backend):
        eager = fn()
        got = torch.compile(fn, backend="eager")()
    eager = eager if isinstance(eager, tuple) else (eager,)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    # Sampling streams are per backend, so the sampler's compiled tokens must equal its eager ones (and, for
    # the logprobs, the reference's logprobs of those tokens); every other op must equal the reference.
    if op_name == "sample_from_logits":
        assert torch.equal(got[0], eager[0])
        torch.testing.assert_close(got[1], eager[1])
        full = torch.log_softmax(d["logits"].cpu() / 0.8, dim=1)
        picked = full.gather(1, got[0].cpu().view(-1, 1)).view(-1)
        torch.testing.assert_close(got[1].cpu(), picked, rtol=1e-4, atol=1e-5)
        return
    for w, g, e in zip(want, got, eager):
        if w.dtype in (torch.int64, torch.bool):
            assert torch.equal(g.cpu(), w) and torch.equal(e.cpu(), w), op_name
        else:
            torch.testing.assert_close(g.cpu(), w.to(g.dtype), rtol=1e-4, atol=1e-5, equal_nan=True)
