"""The M-STaR recipe, one module per stage (warm-up, sample, reward, select, train, monitor, temperature) and
``loop.py`` that runs them top to bottom (PAPER.md, DESIGN.md)."""
