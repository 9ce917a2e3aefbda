"""What makes the kernels ready for a GPU, tested where it can be here: Triton's interpreter-safe loop
bounds, the device guard on every Triton launch, the sampler's sync-free CUDA default and its batch size
never specialised, and the FLCE weight-gradient accumulation (no [V, H] fp32 temporary per chunk, and a
fast path on a torch without ``addmm(out_dtype=)``). Tests that need a CUDA device (or two) carry the gpu
mark and are skipped with the reason elsewhere."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mstar_fast import _ext
from mstar_fast.ops import sample_from_logits, use_backend
from mstar_fast.ops.reference import STATUS_ALL_MASKED, STATUS_NON_FINITE
from mstar_fast.ops.sample_from_logits import raise_for_status
from tests.ops._util import backend_device

ROOT = Path(__file__).resolve().parents[2]
# (the package's `fused_linear_cross_entropy` attribute is the function of that name, not the module)
flce_mod = importlib.import_module("mstar_fast.ops.fused_linear_cross_entropy")
needs_triton = pytest.mark.skipif(_ext.load_triton()[0] is None, reason="triton is not importable")


# ------------------------------------------------------------------------------ Triton launch helpers


@needs_triton
def test_static_bound_is_the_size_only_under_the_interpreter(monkeypatch):
    from mstar_fast.kernels._launch import static_bound

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert static_bound(151936) == 151936
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert static_bound(151936) == -1  # compiled kernels keep the runtime argument: one compile for all sizes


@needs_triton
def test_device_guard_makes_the_tensor_device_current():
    from mstar_fast.kernels._launch import device_guard

    with device_guard(torch.device("cpu")):  # a no-op on the CPU
        pass
    if torch.cuda.device_count() < 1:
        return
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    with device_guard(last):
        assert torch.cuda.current_device() == last.index


def _clean_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports mstar_fast from this source tree only (the editable
    install's import hook removed, the repository root first on sys.path), TRITON_INTERPRET unset."""
    prelude = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if not type(f).__module__.startswith('_editable')]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


@needs_triton
def test_kernels_import_from_a_plain_source_checkout():
    r = _clean_python(
        "import mstar_fast.kernels as k, mstar_fast.kernels.fused_linear_cross_entropy, "
        "mstar_fast.kernels.accumulate_matmul\nprint(k.__file__)"
    )
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == ROOT / "mstar_fast" / "kernels" / "__init__.py"


@needs_triton
def test_sampler_kernel_never_specialises_on_the_batch_size():
    """Checked on the compiled (not interpreted) JITFunction: B, like the Philox offset, is a runtime
    argument Triton must not specialise (B == 1 and B % 16 == 0 would each get their own compile)."""
    r = _clean_python(
        "import importlib\n"
        "k = importlib.import_module('mstar_fast.kernels.sample_from_logits')._sample_from_logits_kernel\n"
        "print(type(k).__name__, ' '.join(p.name for p in k.params if p.do_not_specialize))"
    )
    assert r.returncode == 0, r.stderr
    kind, *names = r.stdout.split()
    assert kind == "JITFunction" and {"B", "offset_lo", "offset_hi"} <= set(names)
    assert "V" not in names  # V stays specialisable: one vocabulary per model


@pytest.mark.gpu
@needs_triton
def test_triton_sampler_compiles_once_for_every_batch_size():
    """B = 1, 16, 17, 64 (Triton would specialise 1 and multiples of 16) reuse one compiled kernel."""
    mod = importlib.import_module("mstar_fast.kernels.sample_from_logits")
    if _ext.triton_interpret():
        pytest.skip("TRITON_INTERPRET is set: nothing is compiled")
    kernel = mod._sample_from_logits_kernel

    def n_compiled() -> int | None:
        caches = getattr(kernel, "device_caches", None)
        if caches is None:
            return None
        cache = caches[torch.cuda.current_device()]
        return len(cache[0] if isinstance(cache, tuple) else cache)

    def draw(B: int) -> None:
        with use_backend("triton"):
            sample_from_logits(torch.randn(B, 5000, device="cuda"), seed=torch.arange(B, device="cuda"))
        torch.cuda.synchronize()

    draw(1)
    before = n_compiled()
    if before is None:
        pytest.skip("this triton keeps no inspectable kernel cache (JITFunction.device_caches)")
    for B in (16, 17, 64):
        draw(B)
    assert n_compiled() == before, f"{n_compiled() - before} more compiled variant(s) for other batch sizes"


# ------------------------------------------------------------------------------ sampler checks


@pytest.mark.backends("cpp", "torch", "triton", "cuda")
def test_unchecked_calls_return_statuses_instead_of_raising(backend):
    dev = backend_device(backend)
    x = torch.randn(4, 100)
    x[2, 50] = float("nan")
    x[3] = float("-inf")
    with use_backend(backend):
        tok = sample_from_logits(x.to(dev), seed=torch.arange(4, device=dev), check=False)
        with pytest.raises(ValueError, match="row 2 holds NaN"):
            sample_from_logits(x.to(dev), seed=torch.arange(4, device=dev), check=True)
    assert tok[2] == STATUS_NON_FINITE and tok[3] == STATUS_ALL_MASKED and (tok[:2] >= 0).all()
    with pytest.raises(ValueError, match="logits row 2 holds NaN or \\+inf; 2 bad row"):
        raise_for_status(tok)
    raise_for_status(tok[:2])  # good rows: no error


@pytest.mark.backends("cpp", "cuda")
def test_compiled_op_check_flag(backend):
    """torch.ops.mstar_fast.sample_from_logits(..., check=False) skips only the value checks (ranges, row
    statuses); shapes, dtypes and devices are still checked; the default keeps every check."""
    dev = backend_device(backend)
    x = torch.randn(3, 10)
    x[1, 2] = float("nan")
    row = [torch.ones(3), torch.zeros(3, dtype=torch.int64), torch.ones(3), torch.zeros(3), torch.arange(3)]
    args = [a.to(dev) for a in [x, *row]]
    tok, _ = torch.ops.mstar_fast.sample_from_logits(*args, 0, False, False)
    assert int(tok[1]) == STATUS_NON_FINITE and (tok[[0, 2]] >= 0).all()
    with pytest.raises(ValueError, match="logits row 1 holds NaN"):
        torch.ops.mstar_fast.sample_from_logits(*args, 0, False)
    bad_p = list(args)
    bad_p[3] = torch.zeros(3, device=dev)  # top_p = 0: out of range, but not checked
    torch.ops.mstar_fast.sample_from_logits(*bad_p, 0, False, False)
    with pytest.raises(ValueError, match="top_p must be in"):
        torch.ops.mstar_fast.sample_from_logits(*bad_p, 0, False, True)
    bad_shape = list(args)
    bad_shape[1] = torch.ones(5, device=dev)
    with pytest.raises(ValueError, match="temperature must have shape"):
        torch.ops.mstar_fast.sample_from_logits(*bad_shape, 0, False, False)


def test_cpu_calls_check_by_default():
    x = torch.randn(3, 10)
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        sample_from_logits(x)
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_from_logits(torch.randn(3, 10), top_p=torch.tensor([1.0, 0.0, 1.0]))


@pytest.mark.gpu
@pytest.mark.backends("cuda", "triton")
def test_cuda_default_never_syncs_the_host(backend):
    """With the default check=None on CUDA tensors the whole call (parameter broadcast, int-seed keys, the
    kernel) queues work without one host sync: torch's sync debug mode raises on any."""
    B, V = 8, 3000
    x = torch.randn(B, V, device="cuda")
    temps = torch.linspace(0.5, 1.5, B, device="cuda")
    with use_backend(backend):
        sample_from_logits(x, temperature=temps, top_k=50, top_p=0.9, seed=3)  # compile / load first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            tok, lp = sample_from_logits(x, temperature=temps, top_k=50, top_p=0.9, seed=3, offset=1,
                                         return_logprobs=True)
            tok2 = sample_from_logits(x, temperature=0.0, seed=torch.arange(B, device="cuda"))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(tok2.cpu(), x.argmax(1).cpu())
    assert (tok >= 0).all() and torch.isfinite(lp).all()


@pytest.mark.gpu
@pytest.mark.backends("triton", "cuda")
def test_launches_on_the_tensors_device_not_the_current_one(backend):
    """Inputs on the last GPU while device 0 is current: every op still gives the CPU result."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from mstar_fast.ops import group_topk, prm_step_scores, segment_reduce

    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    torch.cuda.set_device(0)
    x = torch.randn(6, 700)
    h, w, pos = torch.randn(20, 64), torch.randn(2, 64), torch.tensor([1, 5, 19])
    vals, offs = torch.randn(10), torch.tensor([0, 3, 3, 10])
    with use_backend(backend):
        tok = sample_from_logits(x.to(dev), temperature=0.0)
        scores = prm_step_scores(h.to(dev), pos.to(dev), w.to(dev))
        red = segment_reduce(vals.to(dev), offs.to(dev), "sum")
        top = group_topk(vals.to(dev), offs.to(dev), 2)
    with use_backend("torch"):
        assert torch.equal(tok.cpu(), sample_from_logits(x, temperature=0.0))
        torch.testing.assert_close(scores.cpu(), prm_step_scores(h, pos, w), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(red.cpu(), segment_reduce(vals, offs, "sum"), equal_nan=True)
        assert torch.equal(top.cpu(), group_topk(vals, offs, 2))


# ------------------------------------------------------------------------------ FLCE weight-gradient accumulation


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("M,K,N", [(70, 33, 45), (128, 64, 64), (5, 200, 3)])
def test_triton_accumulate_matmul_adds_an_fp32_product(dtype, M, K, N):
    from mstar_fast.kernels.accumulate_matmul import accumulate_matmul_

    dev = backend_device("triton")
    gen = torch.Generator().manual_seed(M + K + N)
    g = torch.randn(K, M, generator=gen).to(dtype)  # a = g.t(): the transposed view FLCE passes
    h = torch.randn(K, N, generator=gen).to(dtype)
    acc = torch.randn(M, N, generator=gen)
    want = acc + g.t().double() @ h.double()
    got = acc.to(dev)
    out = accumulate_matmul_(got, g.to(dev).t(), h.to(dev))
    assert out is got
    tol = 1e-4 if dtype != torch.float32 or dev.type == "cpu" else 2e-2  # a GPU's fp32 dot may use tf32
    torch.testing.assert_close(got.cpu().double(), want, rtol=tol, atol=tol * K**0.5)


@needs_triton
def test_triton_accumulate_matmul_rejects_bad_input():
    from mstar_fast.kernels.accumulate_matmul import accumulate_matmul_

    with pytest.raises(ValueError, match="acc \\[M, N\\]"):
        accumulate_matmul_(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="acc must be float32"):
        accumulate_matmul_(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="acc must be float32"):
        accumulate_matmul_(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, dtype=torch.bfloat16))


def test_out_dtype_feature_test_runs_the_op_instead_of_reading_versions():
    flce_mod._addmm_out_dtype.cache_clear()
    # No CPU build of torch has addmm(out_dtype=) for CPU tensors: the probe must say so, not crash.
    assert flce_mod._addmm_out_dtype(torch.device("cpu"), torch.bfloat16) is False


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["auto", "triton"])
def test_cuda_weight_gradient_accumulates_without_a_VxH_temporary(monkeypatch, path):
    """acc [V, H] fp32 += g.T @ h in bf16: the peak extra memory stays far below one [V, H] fp32 tensor,
    on the cuBLAS out_dtype path and on the Triton path a torch without it takes."""
    if path == "triton":
        if _ext.load_triton()[0] is None or _ext.triton_interpret():
            pytest.skip("needs compiled Triton")
        monkeypatch.setattr(flce_mod, "_addmm_out_dtype", lambda device, dtype: False)
    V, H, C = 32768, 1024, 256
    g = torch.randn(C, V, device="cuda", dtype=torch.bfloat16)
    h = torch.randn(C, H, device="cuda", dtype=torch.bfloat16)
    acc = torch.zeros(V, H, device="cuda")
    flce_mod._addmm_fp32(acc, g.t(), h)  # warm up (feature probe, compilation)
    acc.zero_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    flce_mod._addmm_fp32(acc, g.t(), h)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < V * H * 4 // 8, f"{extra} bytes extra for a {V}x{H} fp32 accumulator"
    want = g.t().float() @ h.float()
    torch.testing.assert_close(acc, want, rtol=2e-3, atol=2e-2)
