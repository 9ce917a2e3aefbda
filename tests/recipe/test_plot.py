"""plots/dynamics.png from metrics.jsonl (matplotlib optional: without it, a message and no file)."""

from __future__ import annotations

import json

import pytest

from mstar_fast.recipe.plot import plot_run


def test_plot_run(tmp_path):
    with pytest.raises(ValueError, match="metrics.jsonl"):
        plot_run(tmp_path)
    rows = [{"iteration": i, "step": 10 * i, "temperature": 0.7 if i < 2 else 1.1, "val_greedy_acc": 0.1 * i,
             "val_pass_at_k": 0.5, "val_reward_pass_at_2": 0.3 + 0.01 * i, "n_selected": 5,
             "test_greedy_acc": 0.2 if i in (0, 3) else None} for i in range(4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    msg = plot_run(tmp_path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in msg and not (tmp_path / "plots").exists()
    else:
        png = tmp_path / "plots" / "dynamics.png"
        assert msg.endswith(str(png)) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
