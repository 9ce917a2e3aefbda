"""Names and defaults that the config checks and the modules that implement them share, defined once.

A leaf: it imports nothing from the package, so ``import mstar_fast.config`` stays cheap and no arrow runs
back up from the config to the recipe. The modules that implement a name register it
(``@register_selection("topk")`` in :mod:`mstar_fast.recipe.select`, ``@register_criterion(...)`` in
:mod:`mstar_fast.recipe.temperature`); tests check that every name here has its implementation and back.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["SELECTIONS", "TEMPERATURE_CRITERIA", "PRM_HEADS", "TRAIN_MODES", "PARALLEL", "STOP_AFTER",
           "REWARD_K", "temperature_grid", "PAPER_TEMPERATURE_GRID", "PROMPT_SOURCES",
           "BASE_POLICIES", "resolve"]

#: How an iteration picks the responses it trains on (:mod:`mstar_fast.recipe.select`).
SELECTIONS: tuple[str, ...] = ("topk", "threshold", "random", "all")
#: How the automatic temperature chooses T (:mod:`mstar_fast.recipe.temperature`).
TEMPERATURE_CRITERIA: tuple[str, ...] = ("reward_pass_at_2", "pass_at_k", "static")
#: PRM heads: two reward tokens at the step tag, or a value head (:mod:`mstar_fast.prm.train`).
PRM_HEADS: tuple[str, ...] = ("reward_tokens", "value")
#: What survives between SFT calls (:class:`mstar_fast.train.SFTEngine`).
TRAIN_MODES: tuple[str, ...] = ("continuous", "iterative_rft", "rest_em")
#: Data-parallel wrapping (:mod:`mstar_fast.train.distributed`).
PARALLEL: tuple[str, ...] = ("auto", "none", "ddp", "fsdp")
#: Stages ``mstar warmup|prm-data|prm-train`` stop after (``recipe.loop.run(stop_after=...)``).
STOP_AFTER: tuple[str, ...] = ("base", "warmup", "prm-data", "prm")
#: Rollout backends (:class:`mstar_fast.rollout.RolloutEngine`): the built-in prefix-sharing engine, vLLM.
ROLLOUT_BACKENDS: tuple[str, ...] = ("hf", "vllm")
#: Reward-Pass@k's k: the recipe keeps the top 2 responses per prompt.
REWARD_K = 2


def temperature_grid(low: float = 0.3, high: float = 1.6, step: float = 0.1) -> tuple[float, ...]:
    """``(low, low + step, ..., high)`` rounded to 1 decimal, so ``0.3 + 3 * 0.1`` is exactly ``0.6``, not
    ``0.6000000000000001``: grid values are dictionary keys and are printed in metrics files."""
    n = int(round((high - low) / step))
    return tuple(round(low + i * step, 1) for i in range(n + 1))


#: The paper's temperature grid for the automatic temperature: 0.3, 0.4, ..., 1.6.
PAPER_TEMPERATURE_GRID = temperature_grid()


#: Prompt sources a config may name instead of a file (``data.train: synthetic``), as ``"module:function"``;
#: the function is ``f(split, n, data_config, start=0) -> list[Prompt]``. Imported only when a run names one.
PROMPT_SOURCES: dict[str, str] = {"synthetic": "mstar_fast.demo.synthetic:prompt_source",
                                  "synthetic_text": "mstar_fast.demo.text_task:text_prompt_source"}
#: Base policies a config may name instead of a model directory (``model.policy: tiny``), as
#: ``"module:function"``; the function builds the model into the run directory and returns its path
#: (:func:`mstar_fast.demo.base_model.prepare_base`). Imported only when a run names one.
BASE_POLICIES: dict[str, str] = {"tiny": "mstar_fast.demo.base_model:prepare_base"}


def resolve(ref: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` reference names (imported now: a named source or policy pulls
    in its module only when a run uses it, and the recipe never imports the demo)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)
