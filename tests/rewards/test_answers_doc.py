"""The verdict table of docs/answers.md holds: a user predicting a verdict from that page is right."""

from pathlib import Path

import pytest

from mstar_fast.rewards import answers_match, extract_answer

DOC = Path(__file__).resolve().parents[2] / "docs" / "answers.md"


def _rows() -> list[tuple[str, str, list[str] | None, int | None, bool]]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- verdicts:begin -->")[1].split("<!-- verdicts:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:  # skip header and rule
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        response, gold, choices, precision, verdict = cells
        assert response.startswith("`") and response.endswith("`"), line
        response = response[1:-1].replace("\\n", "\n")
        rows.append((response, gold, None if choices == "–" else [c.strip() for c in choices.split(";")],
                     None if precision == "–" else int(precision), {"correct": True, "wrong": False}[verdict]))
    return rows


ROWS = _rows()


def test_doc_table_is_not_empty():
    assert len(ROWS) >= 20


@pytest.mark.parametrize("response,gold,choices,precision,expected", ROWS)
def test_doc_verdict(response, gold, choices, precision, expected):
    assert answers_match(extract_answer(response), gold, choices, precision) is expected
