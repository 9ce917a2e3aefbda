"""``RUN_DIR/plots/dynamics.png``: the training dynamics of a run, like the paper's Fig. 4/5.

Four panels against iteration, from ``metrics.jsonl``: validation greedy accuracy (and test greedy accuracy
where measured), Pass@K, Reward-Pass@2 and the sampling temperature T. matplotlib is optional: without it
:func:`plot_run` writes nothing and returns a message saying so (``pip install matplotlib``).
"""

from __future__ import annotations

import os
from pathlib import Path

from mstar_fast.data.jsonl import iter_jsonl

__all__ = ["plot_run"]


def plot_run(run_dir: str | os.PathLike) -> str:
    """Draw ``RUN_DIR/plots/dynamics.png``; returns a one-line message (the path, or why nothing was drawn).

    Raises:
        ValueError: ``RUN_DIR/metrics.jsonl`` does not exist or is empty.
    """
    d = Path(run_dir)
    rows = [r for r in iter_jsonl(d / "metrics.jsonl", errors="skip") if "iteration" in r]
    if not rows:
        raise ValueError(f"plot: {d / 'metrics.jsonl'} is missing or holds no iteration rows")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return (f"plot: matplotlib is not installed, so {d / 'plots' / 'dynamics.png'} was not drawn "
                f"(pip install matplotlib, then `mstar plot {d}`); the numbers are in {d / 'metrics.jsonl'}")
    it = [r["iteration"] for r in rows]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(r["iteration"], 100 * r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    ax = axes[0]
    ax.plot(*series("val_greedy_acc"), "o-", label="val greedy")
    xs, ys = series("test_greedy_acc")
    if xs:
        ax.plot(xs, ys, "s--", label="test greedy")
    ax.set_title("greedy accuracy (%)")
    ax.legend()
    axes[1].plot(*series("val_pass_at_k"), "o-", color="tab:green")
    axes[1].set_title("Pass@K (%)")
    axes[2].plot(*series("val_reward_pass_at_2"), "o-", color="tab:purple")
    axes[2].set_title("Reward-Pass@2 (%)")
    axes[3].step(it, [r["temperature"] for r in rows], where="post", color="tab:red")
    axes[3].set_title("sampling temperature T")
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
        a.set_xlabel("iteration")
        a.grid(alpha=0.3)
    fig.suptitle(f"M-STaR dynamics: {d.name}")
    fig.tight_layout()
    out = d / "plots" / "dynamics.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return f"plot: {out}"
