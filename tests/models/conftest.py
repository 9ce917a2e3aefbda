"""Collects the outcomes of tests/models/test_families.py into ``build/family_results.json`` (the input of
``tests/models/family_table.py``) when every family and check of the matrix ran in this session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS_PATH = Path(__file__).resolve().parents[2] / "build" / "family_results.json"


@pytest.fixture(scope="session")
def family_results():
    """``{model_type: {"class", "kind", check: {"status", "detail"}}}``, written out at the end of the
    session if complete (a partial run, e.g. ``-k llava``, leaves the previous file alone)."""
    from tests.models.test_families import CHECKS, FAMILIES

    results: dict[str, dict] = {}
    yield results
    if all(check in results.get(f.model_type, {}) for f in FAMILIES for check in CHECKS):
        import transformers

        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        payload = {"transformers": transformers.__version__, "checks": list(CHECKS),
                   "families": {k: results[k] for k in sorted(results)}}
        RESULTS_PATH.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
