"""The process reward model, one home: Monte-Carlo step labels (:mod:`~mstar_fast.prm.data`), training and
loading (:mod:`~mstar_fast.prm.train`), and scoring with the fused ops (``PRMScorer``: one forward on the
shared prefix, hidden states at the step tags only), with the step splitter all of them share."""

from mstar_fast.prm.data import PRMExample, monte_carlo_labels, read_prm_examples
from mstar_fast.prm.scorer import PRMScorer, PRMScores, split_steps
from mstar_fast.prm.train import load_prm, train_prm

__all__ = ["PRMExample", "PRMScorer", "PRMScores", "load_prm", "monte_carlo_labels", "read_prm_examples",
           "split_steps", "train_prm"]
