"""What every stage of a run shares: where it writes, which processes run it, what it prints, and how it
builds policies, rollout engines and trainers from the config's ``model``, ``rollout``, ``train`` and
``data`` sections."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from mstar_fast.config import DataConfig, ModelConfig, RolloutConfig, RunConfig, SFTConfig
from mstar_fast.models import get_tokenizer, load_policy
from mstar_fast.recipe.run_dir import Console, RunDir
from mstar_fast.rollout import RolloutEngine
from mstar_fast.train import SFTCollator, SFTEngine, eos_token_id_for
from mstar_fast.train.distributed import World

__all__ = ["Model", "Models", "Processor", "RunContext", "special_token_ids", "steps_for"]

#: A policy (a ``transformers`` causal LM or image-text-to-text model) and its processor (or tokenizer).
Model = PreTrainedModel
Processor = ProcessorMixin | PreTrainedTokenizerBase


def special_token_ids(processor: Processor) -> set[int]:
    """Ids of the tokenizer's special tokens (image placeholders, chat markers, EOS)."""
    tok = get_tokenizer(processor)
    ids = {int(i) for i in getattr(tok, "all_special_ids", [])}
    # Added special tokens (image placeholders, chat markers) are not always in all_special_ids.
    added = getattr(tok, "added_tokens_decoder", None) or {}
    ids |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    return ids


@dataclass
class Models:
    """Builds the run's policies, rollout engines and trainers from their config sections."""

    model: ModelConfig
    rollout: RolloutConfig
    train: SFTConfig
    data: DataConfig
    device: torch.device

    def load(self, path: str | os.PathLike) -> tuple[Model, Processor]:
        """``(model, processor)`` of a model directory or hub id.

        Raises:
            FileNotFoundError: ``path`` names a local path that does not exist (:func:`load_policy`).
        """
        m = self.model
        return load_policy(path, dtype=m.dtype, device=self.device, trust_remote_code=m.trust_remote_code,
                           attn_implementation=m.attn_implementation)

    def rollout_engine(self, model: Model, processor: Processor) -> RolloutEngine:
        r = self.rollout
        return RolloutEngine(model, processor, backend=r.backend, max_batch_tokens=r.max_batch_tokens,
                             max_batch_rows=r.max_batch_rows, progress=False, instruction=self.data.instruction,
                             include_choices=self.data.include_choices)

    def trainer(self, model: Model, processor: Processor, **overrides: Any) -> SFTEngine:
        """An :class:`SFTEngine` with ``train``'s settings, ``overrides`` replacing some of them."""
        collator = SFTCollator(processor, eos_token_id=eos_token_id_for(model, processor),
                               instruction=self.data.instruction, include_choices=self.data.include_choices)
        return SFTEngine(model, dataclasses.replace(self.train, **overrides), collator=collator)


@dataclass
class RunContext:
    """What every stage shares (one per process of a run)."""

    run: RunDir
    world: World
    console: Console
    models: Models
    rollout: RolloutConfig
    seed: int

    @classmethod
    def create(cls, cfg: RunConfig, world: World, device: torch.device) -> RunContext:
        return cls(run=RunDir(cfg.run_dir, world), world=world, console=Console(world, cfg.log.progress),
                   models=Models(cfg.model, cfg.rollout, cfg.train, cfg.data, device), rollout=cfg.rollout,
                   seed=cfg.seed)

    @property
    def progress(self) -> bool:
        return self.console.progress



def steps_for(n_items: int, batch: int, epochs: int, steps: int | None) -> int:
    """Optimizer steps of a training call: ``steps``, else ``epochs`` passes over ``n_items`` in batches."""
    return steps if steps is not None else epochs * math.ceil(n_items / batch)
