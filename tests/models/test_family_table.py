"""tests/models/family_table.py: the README's family table rendered from test outcomes, and --check."""

from __future__ import annotations

import json

from tests.models import family_table

RESULTS = {
    "transformers": "9.9.9",
    "checks": ["rollout_auto", "prm"],
    "families": {
        "llava": {"class": "LlavaForConditionalGeneration", "kind": "image-text-to-text",
                  "rollout_auto": {"status": "exact", "detail": "shared prefix"},
                  "prm": {"status": "exact", "detail": "max |diff| 6.0e-08"}},
        "granite": {"class": "GraniteForCausalLM", "kind": "causal-lm",
                    "rollout_auto": {"status": "exact", "detail": "padded"},
                    "prm": {"status": "wrong", "detail": "step scores off a full forward by 0.05"}},
        "gemma3n": {"class": "Gemma3nForConditionalGeneration", "kind": "image-text-to-text",
                    "not_built": "needs timm",
                    "rollout_auto": {"status": "skipped", "detail": "needs timm"},
                    "prm": {"status": "skipped", "detail": "needs timm"}},
    },
}


def test_render_rows_known_marks_and_skips():
    text = family_table.render(RESULTS, {("granite", "prm"): "logits_scaling ignored"})
    lines = text.splitlines()
    assert "| llava | LlavaForConditionalGeneration | exact (shared prefix) | exact |" in lines
    assert ("| granite | GraniteForCausalLM | exact (padded) | **wrong**: step scores off a full forward by 0.05 "
            "(known, open) |") in lines
    assert "- gemma3n (Gemma3nForConditionalGeneration): needs timm" in lines
    assert "transformers 9.9.9" in text and not any(line.startswith("| gemma3n") for line in lines)


def test_check_detects_a_stale_table(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{family_table.BEGIN}\nold table\n{family_table.END}\n\nrest\n")
    args = [str(results), "--readme", str(readme)]
    assert family_table.main(args + ["--check"]) == 1
    assert family_table.main(args) == 0  # rewrite
    assert family_table.main(args + ["--check"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith(f"{family_table.END}\n\nrest\n") and "| llava |" in text
    results.unlink()
    assert family_table.main(args + ["--check"]) == 1  # no results: fails, says how to make them
    assert "run `python -m pytest" in capsys.readouterr().err
