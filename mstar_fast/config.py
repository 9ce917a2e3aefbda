"""Run configuration: one dataclass per stage, composed into :class:`RunConfig`.

A run is described by a YAML file whose top-level keys are the stage names below (any key may be left
out: it keeps its default). On the command line, ``key=value`` pairs with dotted keys override single
fields (``mstar run configs/demo.yaml train.lr=2e-5 iterate.iterations=4``); values are parsed as YAML
and checked against the field's type, and an unknown key or a value of the wrong type raises
``ValueError`` naming the key. The resolved config (defaults + file + overrides) is saved as
``RUN_DIR/config.yaml`` so a run can be resumed (``mstar run --resume RUN_DIR``) and reproduced.

Defaults are the paper's final recipe (docs/recipe.md): continuous self-evolving training, interval 25%, K=16,
top-2 by PRM among correct responses, adaptive temperature by validation Reward-Pass@2 every 2 iterations
over 0.3..1.6, LR 1e-6 constant, global batch 128. Fields the paper is silent on are marked "(ours)".
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mstar_fast.constants import (
    PAPER_TEMPERATURE_GRID,
    PRM_HEADS,
    ROLLOUT_BACKENDS,
    SELECTIONS,
    TEMPERATURE_CRITERIA,
    TRAIN_MODES,
)

__all__ = [
    "ModelConfig",
    "SFTConfig",
    "TinyModelConfig",
    "DataConfig",
    "RolloutConfig",
    "WarmupConfig",
    "PRMConfig",
    "IterateConfig",
    "TemperatureConfig",
    "MonitorConfig",
    "PseudoConfig",
    "LogConfig",
    "RunConfig",
    "load_config",
    "save_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "SELECTIONS",
    "TEMPERATURE_CRITERIA",
]


def _paper_grid() -> list[float]:
    return list(PAPER_TEMPERATURE_GRID)


@dataclass
class TinyModelConfig:
    """The tiny random-weight VLM the embedded demo builds (``model.policy: tiny``), see
    :func:`mstar_fast.demo.tiny.make_tiny_vlm`, and the short SFT on gold reasoning that makes it a weak
    base model (standing in for a pre-trained VLM)."""

    arch: str = "qwen2_vl"
    vocab_size: int = 768
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    vision_layers: int = 2
    seed: int = 0
    #: train prompts whose gold chain of thought the base SFT sees (the first ones of the train split)
    base_prompts: int = 600
    base_steps: int = 60
    base_lr: float = 1e-3
    base_batch_size: int = 32
    #: share of the base SFT examples whose question carries the warm-up hint (the gold answer): a pre-trained
    #: VLM can use an answer it is given, which is what the warm-up relies on; a tiny model must be shown
    base_hint_fraction: float = 0.5


@dataclass
class ModelConfig:
    """The policy and (optionally) the PRM's starting weights.

    Attributes:
        policy: a local model directory or hub id; ``tiny`` builds the demo's tiny VLM (see ``tiny``).
        prm: the PRM's starting model; None starts it from the warm-up policy (ours).
        dtype: weight dtype (``float32``, ``bfloat16``, ``auto``, ...).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        trust_remote_code: for MiniCPM-V, InternVL2, Phi-3.5-V.
        attn_implementation: passed to ``from_pretrained`` (None: transformers' choice).
        threads: torch intra-op threads on CPU (0: leave torch's default; ``mstar demo`` picks the count by
            a short measurement at start).
    """

    policy: str = "tiny"
    prm: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    threads: int = 0
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)


@dataclass
class DataConfig:
    """Where prompts come from. ``synthetic`` generates the built-in multimodal task
    (:mod:`mstar_fast.demo.synthetic`); anything else is a file or directory for
    :func:`mstar_fast.data.load_prompts`.

    Attributes:
        train, val, test: labeled prompts (test may be None: no test evaluation).
        unlabeled: prompts for pseudo-labels (``pseudo``); None: none.
        n_train, n_val, n_test: synthetic split sizes; for files, a limit (0: all).
        synthetic_families, synthetic_levels, synthetic_image_size, synthetic_seed: see
            :class:`mstar_fast.data.SyntheticConfig`.
        instruction: text appended to every question (None: none).
        include_choices: append the options as ``(A) ...`` lines (off for MathV360K-style questions that
            already list them; on for the synthetic task).
    """

    train: str = "synthetic"
    val: str = "synthetic"
    test: str | None = "synthetic"
    unlabeled: str | None = None
    n_train: int = 0
    n_val: int = 250
    n_test: int = 0
    synthetic_families: list[str] = field(default_factory=lambda: ["shape_count", "bar_chart", "clock",
                                                                  "grid_geometry"])
    synthetic_levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    synthetic_image_size: int = 64
    synthetic_seed: int = 0
    instruction: str | None = None
    include_choices: bool = False


@dataclass
class RolloutConfig:
    """Sampling settings shared by every stage that generates (warm-up, PRM data, iterations, monitor).

    ``chunk_prompts``: prompts per engine call in the resumable stages; each chunk is appended to the
    sample file when done, so a kill loses at most one chunk of work."""

    backend: str = "hf"
    max_new_tokens: int = 1024
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_batch_tokens: int = 65536
    max_batch_rows: int = 256
    chunk_prompts: int = 64


@dataclass
class WarmupConfig:
    """Warm-up (docs/recipe.md): sample CoT with the gold answer in the prompt, keep responses whose final answer
    matches, SFT on them without the answer in the prompt.

    Attributes:
        enabled: run the stage (False: the policy is used as the warm-up model).
        n_prompts: train prompts used (0: all).
        samples: responses per prompt.
        temperature: sampling temperature (ours).
        keep_per_prompt: correct responses kept per prompt after de-duplication (ours).
        hint: the instruction added to the question; ``{answer}`` is replaced by the gold answer.
        epochs: SFT passes over the kept responses.
        lr: SFT learning rate (None: ``train.lr``).
    """

    enabled: bool = True
    n_prompts: int = 0
    samples: int = 4
    temperature: float = 0.7
    keep_per_prompt: int = 2
    hint: str = ("The answer is {answer}. Think step by step: separate the steps with a blank line and end "
                 "with '# Answer' followed by the answer.")
    epochs: int = 1
    lr: float | None = None


@dataclass
class PRMConfig:
    """PRM data (Monte-Carlo step labels from the warm-up policy's responses) and training.

    Attributes:
        enabled: train a PRM (False: no PRM; selection among correct responses falls back to ``random``
            for ``topk`` / ``threshold``, and Reward-Pass@2 is not measured).
        path: a trained PRM directory to use instead of training one.
        n_prompts: train prompts whose responses are labelled.
        samples: warm-up policy responses per prompt to label.
        temperature: sampling temperature of those responses and of the rollouts (ours).
        m: Monte-Carlo completions per step prefix (ours: 8).
        soft: soft labels (fraction that reaches the gold answer) or hard (any does) (ours: soft).
        head: ``reward_tokens`` (two reward tokens at a step tag) or ``value`` (a value head).
        step_tag, reward_tokens: the tag after every step and the (good, bad) tokens.
        lr, epochs, batch_size: PRM training.
    """

    enabled: bool = True
    path: str | None = None
    n_prompts: int = 0
    samples: int = 4
    temperature: float = 1.0
    m: int = 8
    soft: bool = True
    head: str = "reward_tokens"
    step_tag: str = "ки"
    reward_tokens: list[str] = field(default_factory=lambda: ["+", "-"])
    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 32


@dataclass
class IterateConfig:
    """The self-evolving iterations.

    Attributes:
        iterations: how many.
        interval: share of the labeled train prompts each iteration samples (25%; the ``iterative_rft`` and
            ``rest_em`` baselines use 1.0). Prompts are taken in order, wrapping around.
        k: samples per prompt (K).
        select: ``topk`` (by PRM score among correct), ``threshold`` (PRM score > ``threshold``), ``random``
            (``select_k`` random correct) or ``all`` (every correct response).
        select_k: kept per prompt by ``topk`` / ``random`` (2).
        threshold: PRM score threshold of ``threshold``.
        dedupe: de-duplicate identical responses of a prompt before selection (ours).
        require_format: only responses in the output format (steps, then ``# Answer`` once, then the
            answer) are eligible (ours; the warm-up always requires it).
        epochs: SFT passes over each iteration's selected responses.
        steps: SFT steps per iteration instead of epochs (None: epochs).
        shuffle_prompts: shuffle the train prompts once (with ``seed``) before chunking.
    """

    iterations: int = 10
    interval: float = 0.25
    k: int = 16
    select: str = "topk"
    select_k: int = 2
    threshold: float = 0.5
    dedupe: bool = True
    require_format: bool = True
    epochs: int = 1
    steps: int | None = None
    shuffle_prompts: bool = True


@dataclass
class TemperatureConfig:
    """Sampling temperature of the iterations: adaptive (M-STaR) or static.

    Attributes:
        initial: T before the first adaptation (static runs: 1.0).
        grid: candidate temperatures (0.3..1.6 step 0.1).
        adapt_every: choose T every this many iterations (2).
        criterion: ``reward_pass_at_2`` (M-STaR), ``pass_at_k`` or ``static``.
    """

    initial: float = 1.0
    grid: list[float] = field(default_factory=_paper_grid)
    adapt_every: int = 2
    criterion: str = "reward_pass_at_2"


@dataclass
class MonitorConfig:
    """Validation dynamics (every iteration) and test accuracy.

    Attributes:
        k: samples per validation prompt for Pass@K / Reward-Pass@2 (K).
        n_val: validation prompts used (0: all).
        test_every: evaluate test greedy accuracy every this many iterations (0: only at the end).
        max_new_tokens: generation length for monitoring (None: ``rollout.max_new_tokens``).
    """

    k: int = 16
    n_val: int = 0
    test_every: int = 0
    max_new_tokens: int | None = None


@dataclass
class PseudoConfig:
    """Unlabeled prompts with (PRM-)weighted-vote pseudo-labels (docs/recipe.md Table 3; off in the final recipe).

    Attributes:
        enabled: mix pseudo-labeled prompts in.
        start_iteration: first iteration (0-based) that mixes them in.
        ratio: unlabeled prompts per labeled prompt of a chunk.
        weighted: weight votes by PRM scores (False: plain majority vote).
        min_agreement: keep a pseudo-label only when its share of the vote weight is at least this.
    """

    enabled: bool = False
    start_iteration: int = 0
    ratio: float = 0.5
    weighted: bool = True
    min_agreement: float = 0.5


@dataclass
class LogConfig:
    """Logging: progress bars, TensorBoard (when installed), W&B (opt-in)."""

    progress: bool = True
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "mstar"
    keep_checkpoints: int = 2


@dataclass
class SFTConfig:
    """Settings of :class:`SFTEngine` (the paper's run: lr 1e-6 constant, global batch 128).

    Attributes:
        mode: ``continuous`` | ``iterative_rft`` | ``rest_em`` (see the module doc).
        lr, weight_decay, betas, eps: AdamW (``optimizer="sgd"`` for plain SGD); weight decay applies
            to matrices only.
        lr_schedule: ``constant`` (after warm-up) | ``cosine``.
        warmup_steps: linear warm-up length, in optimizer steps.
        total_steps: the cosine horizon of a ``continuous`` run (required there); in the other modes
            each call's schedule spans that call's steps.
        min_lr_ratio: the cosine floor, as a fraction of ``lr``.
        global_batch_size: examples per optimizer step, over all ranks.
        micro_batch_size: examples per forward pass on one rank; gradients accumulate over them.
        max_grad_norm: clip the global gradient norm to this (None or <= 0: off).
        group_by_length: sort each global batch by length before cutting micro-batches (less padding).
        shuffle: shuffle the items of each epoch (order depends only on seed, call index and epoch).
        seed: data-order seed.
        gradient_checkpointing: recompute activations in backward (``transformers``' own switch).
        bf16: bf16 autocast; None = on where supported (CUDA with bf16), off on CPU.
        freeze_vision: freeze the vision encoder (the projector / connector stays trainable).
        parallel: ``auto`` | ``none`` | ``ddp`` | ``fsdp`` (see :mod:`mstar_fast.train.distributed`).
        find_unused_parameters: DDP's option (for batches that skip a branch of the model).
        loss_chunk_size: rows per chunk of the fused loss (None: its memory-based default).
        log_every: log one line every this many steps (0: never).
    """

    mode: str = "continuous"
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    optimizer: str = "adamw"
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    global_batch_size: int = 128
    micro_batch_size: int = 4
    max_grad_norm: float | None = 1.0
    group_by_length: bool = True
    shuffle: bool = True
    seed: int = 0
    gradient_checkpointing: bool = False
    bf16: bool | None = None
    freeze_vision: bool = False
    parallel: str = "auto"
    find_unused_parameters: bool = False
    loss_chunk_size: int | None = None
    log_every: int = 10

    def validate(self) -> None:
        """Check values that types alone do not; raise ValueError naming the field."""
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"SFTConfig.mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"SFTConfig.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.mode == "continuous" and self.lr_schedule == "cosine" and not self.total_steps:
            raise ValueError("SFTConfig: a continuous run with the cosine schedule needs total_steps (its horizon)")
        for name in ("global_batch_size", "micro_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {v!r}")
        if self.lr < 0:
            raise ValueError(f"SFTConfig.lr must be >= 0, got {self.lr}")


@dataclass
class RunConfig:
    """A whole M-STaR run.

    Attributes:
        run_dir: where ``config.yaml``, ``samples/``, ``metrics.jsonl``, ``checkpoints/``, ``plots/`` go.
        seed: the run seed (sampling seeds, prompt order, SFT data order).
        train: the SFT engine's settings (:class:`SFTConfig`; ``train.mode``: ``continuous`` |
            ``iterative_rft`` | ``rest_em``).
    """

    run_dir: str = "runs/mstar"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    train: SFTConfig = field(default_factory=SFTConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Check values that types alone do not; raise ValueError naming the key."""
        def need(ok: bool, key: str, rule: str, value: Any) -> None:
            if not ok:
                raise ValueError(f"config: {key} must be {rule}, got {value!r}")

        _check_ranges(self)  # every numeric field (RANGES), before the rules that combine fields
        it, t, p = self.iterate, self.temperature, self.prm
        need(it.iterations >= 0, "iterate.iterations", ">= 0", it.iterations)
        need(0 < it.interval <= 1, "iterate.interval", "in (0, 1]", it.interval)
        need(it.k >= 1, "iterate.k", ">= 1", it.k)
        need(it.select in SELECTIONS, "iterate.select", f"one of {SELECTIONS}", it.select)
        need(it.select_k >= 1, "iterate.select_k", ">= 1", it.select_k)
        need(it.epochs >= 1, "iterate.epochs", ">= 1", it.epochs)
        need(it.steps is None or it.steps >= 1, "iterate.steps", ">= 1 or null", it.steps)
        need(self.train.mode in TRAIN_MODES, "train.mode", f"one of {TRAIN_MODES}", self.train.mode)
        need(bool(t.grid) and all(g > 0 for g in t.grid), "temperature.grid", "a non-empty list of T > 0", t.grid)
        need(t.initial >= 0, "temperature.initial", ">= 0", t.initial)
        need(t.adapt_every >= 1, "temperature.adapt_every", ">= 1", t.adapt_every)
        need(t.criterion in TEMPERATURE_CRITERIA, "temperature.criterion", f"one of {TEMPERATURE_CRITERIA}",
             t.criterion)
        need(t.criterion != "reward_pass_at_2" or p.enabled or p.path is not None, "temperature.criterion",
             "'pass_at_k' or 'static' when no PRM is trained or given (prm.enabled: false)", t.criterion)
        need(p.head in PRM_HEADS, "prm.head", f"one of {PRM_HEADS}", p.head)
        need(p.m >= 1, "prm.m", ">= 1", p.m)
        need(len(p.reward_tokens) == 2, "prm.reward_tokens", "two strings (good, bad)", p.reward_tokens)
        need(self.rollout.chunk_prompts >= 1, "rollout.chunk_prompts", ">= 1", self.rollout.chunk_prompts)
        need(self.monitor.k >= 2, "monitor.k", ">= 2 (Reward-Pass@2 ranks 2 samples)", self.monitor.k)
        need(self.warmup.samples >= 1, "warmup.samples", ">= 1", self.warmup.samples)
        need("{answer}" in self.warmup.hint, "warmup.hint", "a text containing '{answer}'", self.warmup.hint)
        need(0 < self.pseudo.ratio, "pseudo.ratio", "> 0", self.pseudo.ratio)
        need(not self.pseudo.enabled or self.data.unlabeled is not None, "data.unlabeled",
             "set when pseudo.enabled is true", self.data.unlabeled)
        need(0 <= self.model.tiny.base_hint_fraction <= 1, "model.tiny.base_hint_fraction", "in [0, 1]",
             self.model.tiny.base_hint_fraction)
        need(self.log.keep_checkpoints >= 1, "log.keep_checkpoints", ">= 1", self.log.keep_checkpoints)
        self.train.validate()


# ---------------------------------------------------------------------------------------- value ranges
# Every numeric field's allowed values, checked when the config loads (RunConfig.validate): a NaN lr or a
# top_p of 1.5 fails at once with its dotted key, not 40-60 s into a run when the stage reaches it.
@dataclass(frozen=True)
class _Range:
    """Allowed values of one numeric field: an ``int`` or a finite ``real`` between ``lo`` and ``hi``
    (open ends where ``lo_open`` / ``hi_open``); ``null`` allowed when ``nullable``; ``each``: the field is a
    non-empty list and every item must fit (``distinct``: no repeats)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False
    each: bool = False
    distinct: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.lo is not None and self.hi is not None:
            rng = f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            rng = f" {'>' if self.lo_open else '>='} {self.lo:g}"
        elif self.hi is not None:
            rng = f" {'<' if self.hi_open else '<='} {self.hi:g}"
        else:
            rng = ""
        return what + rng + (" or null" if self.nullable else "")

    def fits(self, v: Any) -> bool:
        import math

        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


def _int(lo: float | None = None, **kw: Any) -> _Range:
    return _Range("int", lo, **kw)


def _real(lo: float | None = None, hi: float | None = None, **kw: Any) -> _Range:
    return _Range("real", lo, hi, **kw)


_PROBABILITY = _real(0, 1)
#: dotted key -> allowed values; every int / float field of RunConfig is here (tests/recipe enforce it)
RANGES: dict[str, _Range] = {
    "seed": _int(),
    "model.threads": _int(0),
    **{f"model.tiny.{k}": _int(1) for k in ("vocab_size", "hidden_size", "num_layers", "num_heads", "image_size",
                                             "patch_size", "vision_layers", "base_batch_size")},
    "model.tiny.seed": _int(),
    "model.tiny.base_prompts": _int(0),
    "model.tiny.base_steps": _int(0),
    "model.tiny.base_lr": _real(0, lo_open=True),
    "model.tiny.base_hint_fraction": _PROBABILITY,
    "data.n_train": _int(0), "data.n_val": _int(0), "data.n_test": _int(0),
    "data.synthetic_levels": _int(1, each=True),
    "data.synthetic_image_size": _int(1),
    "data.synthetic_seed": _int(),
    "rollout.max_new_tokens": _int(1),
    "rollout.top_p": _real(0, 1, lo_open=True),
    "rollout.top_k": _int(0),  # 0: off
    "rollout.min_p": _PROBABILITY,
    "rollout.max_batch_tokens": _int(1),
    "rollout.max_batch_rows": _int(1),
    "rollout.chunk_prompts": _int(1),
    "warmup.n_prompts": _int(0),
    "warmup.samples": _int(1),
    "warmup.temperature": _real(0),  # 0: greedy
    "warmup.keep_per_prompt": _int(1),
    "warmup.epochs": _int(1),
    "warmup.lr": _real(0, nullable=True),
    "prm.n_prompts": _int(0),
    "prm.samples": _int(1),
    "prm.temperature": _real(0),
    "prm.m": _int(1),
    "prm.lr": _real(0),
    "prm.epochs": _int(1),
    "prm.batch_size": _int(1),
    "iterate.iterations": _int(0),
    "iterate.interval": _real(0, 1, lo_open=True),
    "iterate.k": _int(1),
    "iterate.select_k": _int(1),
    "iterate.threshold": _PROBABILITY,  # PRM scores are probabilities of a good step
    "iterate.epochs": _int(1),
    "iterate.steps": _int(1, nullable=True),
    "temperature.initial": _real(0, lo_open=True),
    "temperature.grid": _real(0, lo_open=True, each=True, distinct=True),
    "temperature.adapt_every": _int(1),
    "monitor.k": _int(2),  # Reward-Pass@2 ranks 2 samples
    "monitor.n_val": _int(0),
    "monitor.test_every": _int(0),
    "monitor.max_new_tokens": _int(1, nullable=True),
    "train.lr": _real(0),
    "train.weight_decay": _real(0),
    "train.betas": _real(0, 1, hi_open=True, each=True),
    "train.eps": _real(0, lo_open=True),
    "train.warmup_steps": _int(0),
    "train.total_steps": _int(1, nullable=True),
    "train.min_lr_ratio": _PROBABILITY,
    "train.global_batch_size": _int(1),
    "train.micro_batch_size": _int(1),
    "train.max_grad_norm": _real(nullable=True),  # <= 0: no clipping
    "train.seed": _int(),
    "train.loss_chunk_size": _int(1, nullable=True),
    "train.log_every": _int(0),
    "pseudo.start_iteration": _int(0),
    "pseudo.ratio": _real(0, lo_open=True),
    "pseudo.min_agreement": _PROBABILITY,
    "log.keep_checkpoints": _int(1),
}


def _check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the dotted key, the bad value and the allowed values, for the first field of
    :data:`RANGES` whose value does not fit (then for ``rollout.backend``)."""
    for key, rule in RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is None and rule.nullable:
            continue
        if rule.each:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"config: {key} must be a non-empty list, each item {rule.describe()}; got {value!r}")
            for i, v in enumerate(value):
                if not rule.fits(v):
                    raise ValueError(f"config: {key}[{i}] must be {rule.describe()}, got {v!r}")
            if rule.distinct and len(set(value)) != len(value):
                raise ValueError(f"config: {key} must not repeat a value, got {value!r}")
        elif not rule.fits(value):
            raise ValueError(f"config: {key} must be {rule.describe()}, got {value!r}")
    # The other choices fail within seconds (the engine is built first); the backend only at the first sampling.
    if cfg.rollout.backend not in ROLLOUT_BACKENDS:
        raise ValueError(f"config: rollout.backend must be one of {ROLLOUT_BACKENDS}, got {cfg.rollout.backend!r}")


# ---------------------------------------------------------------------------------------- conversion
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """``value`` converted to the annotated type ``tp``; ValueError naming ``key`` when it does not fit."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"config: {key} may not be null (expected {_type_name(tp)})")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, a, value)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"config: {key}: {value!r} is not a {_type_name(tp)}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ValueError(f"config: {key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, key)
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {key} must be a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"config: {key} must have {len(args)} items, got {len(value)}: {value!r}")
            return tuple(_coerce(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(f"{key}[{i}]", item, v) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config: {key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"config: {key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config: {key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a path "2024" read by YAML as a number
        raise ValueError(f"config: {key} must be a string, got {value!r}")
    raise ValueError(f"config: {key}: unsupported field type {_type_name(tp)}")  # pragma: no cover


def _from_dict(cls: type, d: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in d if k not in hints]
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"config: unknown key {where}{unknown[0]!r}; {cls.__name__} has {names}")
    kwargs = {k: _coerce(f"{prefix}.{k}" if prefix else k, hints[k], v) for k, v in d.items()}
    return cls(**kwargs)


def config_from_dict(d: dict[str, Any] | None) -> RunConfig:
    """A :class:`RunConfig` from a (possibly partial) nested dict, with type checks."""
    return _from_dict(RunConfig, dict(d or {}))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), ready for YAML."""
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply ``key=value`` overrides with dotted keys (``train.lr=2e-5``, ``temperature.grid=[0.5,1.0]``,
    ``model.prm=null``) in place; returns ``cfg``.

    Raises:
        ValueError: a pair without ``=``, an unknown key (the message lists the valid ones) or a value
            that does not fit the field's type.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"config override {item!r}: expected key=value (e.g. train.lr=2e-5)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        obj: Any = cfg
        for i, name in enumerate(parts):
            if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
                raise ValueError(f"config override {key!r}: {'.'.join(parts[:i])} is not a section")
            hints = _hints(type(obj))
            if name not in hints:
                where = ".".join(parts[:i]) or "the top level"
                raise ValueError(f"config override: unknown key {key!r}; {where} has "
                                 f"{[f.name for f in dataclasses.fields(obj)]}")
            if i == len(parts) - 1:
                tp = hints[name]
                value = _parse_value(text)
                if _is_dataclass_type(tp) and not isinstance(value, dict):
                    raise ValueError(f"config override {key!r}: is a section; set its fields ({key}.<field>=...)")
                if _is_dataclass_type(tp):
                    merged = config_to_dict(getattr(obj, name))
                    merged.update(value)
                    value = merged
                setattr(obj, name, _coerce(key, tp, value))
            else:
                obj = getattr(obj, name)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file ``path`` (if any), then ``overrides``; validated.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a YAML mapping, or a key / value is wrong (named in the message).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    try:
        cfg = config_from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") if path is not None else e
    apply_overrides(cfg, list(overrides))
    cfg.validate()
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temporary file, then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    os.replace(tmp, p)
    return p
