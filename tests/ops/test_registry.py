"""The op registry and its dispatch: every op declared once and checked against the compiled library,
forcing, environment variable, fallback when a backend is missing, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from mstar_fast import _ext
from mstar_fast.ops import BackendUnavailableError, available_backends, sample_from_logits, use_backend
from mstar_fast.ops import _registry
from mstar_fast.ops._registry import OPS, OpSpec


def _fake_torch_impl(x):
    return ("torch", x)


@pytest.fixture
def fake_op(monkeypatch):
    """A throwaway op declared like the real ones (cpp + torch), removed afterwards."""
    monkeypatch.setitem(OPS, "op", OpSpec("op", "op(Tensor x) -> Tensor", ("cpp", "torch"), _fake_torch_impl))
    _registry._loaded.cache_clear()
    yield "op"
    _registry._loaded.cache_clear()


def test_available_backends_always_has_torch():
    names = available_backends()
    assert "torch" in names
    assert set(names) <= {"cuda", "triton", "cpp", "torch"}
    if not torch.cuda.is_available():
        assert "cuda" not in names


def test_use_backend_forces_and_restores(monkeypatch):
    monkeypatch.delenv("MSTAR_FAST_BACKEND", raising=False)
    assert _registry.forced_backend() == "auto"
    with use_backend("torch"):
        assert _registry.forced_backend() == "torch"
        with use_backend("auto"):
            assert _registry.forced_backend() == "auto"
        assert _registry.forced_backend() == "torch"
    assert _registry.forced_backend() == "auto"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with use_backend("fast"):
            pass


def test_environment_variable_forces_a_backend(monkeypatch, fake_op):
    monkeypatch.setenv("MSTAR_FAST_BACKEND", "torch")
    name, fn = _registry.implementation(fake_op, torch.device("cpu"))
    assert name == "torch" and fn(1) == ("torch", 1)
    monkeypatch.setenv("MSTAR_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="MSTAR_FAST_BACKEND='nope'"):
        _registry.implementation(fake_op, torch.device("cpu"))


def test_forcing_an_unavailable_backend_says_why(fake_op):
    x = torch.randn(2, 10)
    with use_backend("cuda"), pytest.raises(BackendUnavailableError, match="cuda backend runs on CUDA tensors"):
        sample_from_logits(x)
    with pytest.raises(BackendUnavailableError, match="no cpp implementation"):
        with use_backend("cpp"):
            _registry.implementation("fused_linear_cross_entropy", torch.device("cpu"))


def test_missing_extension_falls_back_with_one_log_line(monkeypatch, caplog, fake_op):
    reason = "compiled extension mstar_fast._C is not available (simulated)"
    monkeypatch.setattr(_ext, "load_extension", lambda: (None, reason))
    monkeypatch.setattr(_registry, "_logged", set())
    monkeypatch.delenv("MSTAR_FAST_BACKEND", raising=False)
    with caplog.at_level(logging.INFO, logger="mstar_fast"):
        for _ in range(3):
            assert _registry.implementation(fake_op, torch.device("cpu")) == ("torch", _fake_torch_impl)
    assert sum("skips backend cpp" in r.message for r in caplog.records) == 1
    assert "cpp" not in available_backends("cpu")
    with use_backend("cpp"), pytest.raises(BackendUnavailableError, match="simulated"):
        _registry.implementation(fake_op, torch.device("cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in _registry.backend_problem("triton", torch.device("cpu"))


def test_import_has_no_side_effects_and_works_without_the_extension():
    """`import mstar_fast` and `import mstar_fast.ops` load neither the extension nor triton."""
    code = (
        "import sys, mstar_fast, mstar_fast.ops\n"
        "assert 'mstar_fast._C' not in sys.modules, 'extension loaded at import'\n"
        "assert 'triton' not in sys.modules, 'triton imported at import'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_every_op_is_declared_once_with_a_reference_and_a_module_named_after_it():
    import importlib

    import mstar_fast.ops as ops

    assert set(OPS) == {"sample_from_logits", "prm_step_scores", "segment_reduce", "group_topk",
                        "fused_linear_cross_entropy"}
    for name, spec in OPS.items():
        assert spec.name == name and spec.reference.__name__ == f"{name}_reference"
        assert set(spec.backends) <= set(_registry.BACKENDS) and "torch" in spec.backends
        module = importlib.import_module(f"mstar_fast.ops.{name}")
        assert getattr(ops, name) is getattr(module, name)


def test_compiled_library_registers_exactly_the_declared_schemas():
    """csrc/registration.cpp and the registry declare the same ops with the same signatures."""
    if _registry.backend_problem("cpp", torch.device("cpu")):
        pytest.skip("compiled extension not built")
    _ext.load_extension()
    for name, spec in OPS.items():
        packet = getattr(torch.ops.mstar_fast, name, None) if spec.schema else None
        if spec.schema is None:
            assert "cpp" not in spec.backends and "cuda" not in spec.backends
            continue
        assert str(packet.default._schema) == f"mstar_fast::{spec.schema}"


def test_a_stale_extension_is_reported_not_called(monkeypatch):
    if _registry.backend_problem("cpp", torch.device("cpu")):
        pytest.skip("compiled extension not built")
    spec = OpSpec("segment_reduce", "segment_reduce(Tensor values, Tensor offsets) -> Tensor", ("cpp",),
                  OPS["segment_reduce"].reference)
    with pytest.raises(BackendUnavailableError, match="built from other sources"):
        _registry._load_compiled(spec)


def test_triton_kernels_live_in_the_package():
    """A plain source checkout has mstar_fast.kernels: one module per op with a Triton backend."""
    from pathlib import Path

    import mstar_fast

    root = Path(mstar_fast.__file__).parent / "kernels"
    for name, spec in OPS.items():
        if "triton" in spec.backends:
            assert (root / f"{name}.py").is_file(), name


def test_declaring_an_op_twice_or_with_an_unknown_backend_fails():
    spec = OPS["group_topk"]
    with pytest.raises(ValueError, match="already registered"):
        _registry.register_op(spec)
    with pytest.raises(ValueError, match="unknown backend"):
        _registry.register_op(OpSpec("new_op", None, ("tpu",), spec.reference))
