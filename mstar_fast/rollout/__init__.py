"""Generation engines: the built-in prefix-sharing engine (``backend="hf"``) and an optional vLLM adapter
(``backend="vllm"``), both behind ``RolloutEngine(model, processor, **options).generate(...)``."""

from mstar_fast.rollout.engine import BACKENDS, RolloutEngine
from mstar_fast.rollout.params import SamplingParams, resolve_params
from mstar_fast.rollout.seeds import sample_seed

__all__ = ["BACKENDS", "RolloutEngine", "SamplingParams", "resolve_params", "sample_seed"]
