"""The one backend fixture of the op tests.

A test that takes ``backend`` runs once per backend: those its module's ``OP`` declares in the op registry
(``mstar_fast.ops._registry``), all backends when the module names no op, or the ones a
``@pytest.mark.backends(...)`` mark lists. A backend that cannot run here is skipped with the reason; the
``cuda`` parameter carries the ``gpu`` mark. ``backend_device(name)`` (tests/ops/_util.py) is where a
backend's inputs live.
"""

from __future__ import annotations

import pytest

from mstar_fast.ops._registry import BACKENDS, OPS, backend_problem
from tests.ops._util import backend_device


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run the test on these backends only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    op = getattr(metafunc.module, "OP", None)
    names = marker.args if marker else (OPS[op].backends if op else BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown backend(s) {unknown}")
    params = [pytest.param(n, id=n, marks=[pytest.mark.gpu] if n == "cuda" else []) for n in names]
    metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name; skips the test when that backend cannot run on this machine."""
    name = request.param
    problem = backend_problem(name, backend_device(name))
    if problem:
        pytest.skip(f"backend {name} unavailable: {problem}")
    return name
