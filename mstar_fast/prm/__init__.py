"""PRM scoring with the fused ops (``PRMScorer``: one forward on the shared prefix, hidden states at the
step tags only), and the step splitter shared with PRM data and training."""

from mstar_fast.prm.scorer import PRMScorer, PRMScores, split_steps

__all__ = ["PRMScorer", "PRMScores", "split_steps"]
