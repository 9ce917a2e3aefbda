"""Backend dispatch: forcing, environment variable, fallback when a backend is missing, clear errors."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from mstar_fast import _ext
from mstar_fast.ops import BackendUnavailableError, available_backends, sample_from_logits, use_backend
from mstar_fast.ops import _dispatch


def test_available_backends_always_has_torch():
    names = available_backends()
    assert "torch" in names
    assert set(names) <= {"cuda", "triton", "cpp", "torch"}
    if not torch.cuda.is_available():
        assert "cuda" not in names


def test_use_backend_forces_and_restores(monkeypatch):
    monkeypatch.delenv("MSTAR_FAST_BACKEND", raising=False)
    assert _dispatch.forced_backend() == "auto"
    with use_backend("torch"):
        assert _dispatch.forced_backend() == "torch"
        with use_backend("auto"):
            assert _dispatch.forced_backend() == "auto"
        assert _dispatch.forced_backend() == "torch"
    assert _dispatch.forced_backend() == "auto"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with use_backend("fast"):
            pass


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv("MSTAR_FAST_BACKEND", "torch")
    calls = []
    impls = {"cpp": lambda: calls.append("cpp"), "torch": lambda: calls.append("torch")}
    name, fn = _dispatch.select("op", impls, torch.device("cpu"))
    assert name == "torch"
    monkeypatch.setenv("MSTAR_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="MSTAR_FAST_BACKEND='nope'"):
        _dispatch.select("op", impls, torch.device("cpu"))


def test_forcing_an_unavailable_backend_says_why():
    x = torch.randn(2, 10)
    with use_backend("cuda"), pytest.raises(BackendUnavailableError, match="cuda backend runs on CUDA tensors"):
        sample_from_logits(x)
    with pytest.raises(BackendUnavailableError, match="no cpp implementation"):
        with use_backend("cpp"):
            _dispatch.select("op", {"torch": None}, torch.device("cpu"))


def test_missing_extension_falls_back_with_one_log_line(monkeypatch, caplog):
    reason = "compiled extension mstar_fast._C is not available (simulated)"
    monkeypatch.setattr(_ext, "load_extension", lambda: (None, reason))
    monkeypatch.setattr(_dispatch, "_logged", set())
    monkeypatch.delenv("MSTAR_FAST_BACKEND", raising=False)
    impls = {"cpp": None, "torch": "ref"}
    with caplog.at_level(logging.INFO, logger="mstar_fast"):
        for _ in range(3):
            assert _dispatch.select("op", impls, torch.device("cpu")) == ("torch", "ref")
    assert sum("skips backend cpp" in r.message for r in caplog.records) == 1
    assert "cpp" not in available_backends("cpu")
    with use_backend("cpp"), pytest.raises(BackendUnavailableError, match="simulated"):
        _dispatch.select("op", impls, torch.device("cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in _dispatch.backend_problem("triton", torch.device("cpu"))


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
