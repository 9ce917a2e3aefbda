"""Collects the outcomes of tests/models/test_families.py into ``build/family_results.json`` (the input of
``tests/models/family_table.py``).

The outcomes of the checks that ran are merged into the file (a run of a few families, ``-k llava``,
updates their rows and keeps the others), and families no longer in the matrix are dropped. A full run
(CI's) rewrites every row, so the table it is checked against is that run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS_PATH = Path(__file__).resolve().parents[2] / "build" / "family_results.json"


@pytest.fixture(scope="session")
def family_results():
    """``{model_type: {"class", "kind", check: {"status", "detail"}}}`` of this session, merged into
    ``build/family_results.json`` at its end."""
    from tests.models.test_families import CHECKS, FAMILIES

    results: dict[str, dict] = {}
    yield results
    if not results:
        return
    import transformers

    old = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.is_file() else {}
    if old.get("transformers") != transformers.__version__ or old.get("checks") != list(CHECKS):
        old = {}  # another transformers release or another set of checks: start over
    merged = {f.model_type: dict(old.get("families", {}).get(f.model_type, {})) for f in FAMILIES}
    for name, row in results.items():
        merged[name].update(row)
    merged = {k: v for k, v in merged.items() if v}
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    payload = {"transformers": transformers.__version__, "checks": list(CHECKS), "families": merged}
    RESULTS_PATH.write_text(json.dumps(payload, indent=1) + "\n")
