"""Adapters that plug mstar_fast into other training stacks.

Each submodule imports its framework lazily (inside the functions that need it), so ``import mstar_fast``
and even ``import mstar_fast.integrations.trl`` work without TRL, verl or accelerate installed:

* :mod:`mstar_fast.integrations.trl` -- reward functions (PRM and outcome) with TRL's reward signature, a
  ``rollout_func`` for ``GRPOTrainer`` backed by :class:`~mstar_fast.rollout.RolloutEngine`, and per-token
  step rewards for PPO-style trainers;
* :mod:`mstar_fast.integrations.verl` -- verl's custom reward function (``compute_score``) and a batched
  PRM reward for verl's ``batch`` reward manager;
* :mod:`mstar_fast.integrations.hf_generate` -- ``model.generate(...)`` with the package's sampler
  (per-row temperature / top-k / top-p / min-p and per-row seeds).

The Liger-style loss patch lives in :mod:`mstar_fast.patch`.
"""

__all__ = ["hf_generate", "trl", "verl"]
