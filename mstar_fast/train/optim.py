"""Optimizer and learning-rate schedule of the SFT engine.

The schedules are picklable callables (not lambdas) so ``LambdaLR.state_dict`` saves their fields and a
resumed run continues the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

SCHEDULES = ("constant", "cosine")


class WarmupSchedule:
    """LR multiplier at scheduler step ``s`` (0-based: the step about to be taken).

    Warm-up: ``(s + 1) / warmup_steps`` for ``s < warmup_steps`` (the first step already moves the
    weights). Then ``constant``: 1; ``cosine``: from 1 down to ``min_lr_ratio`` over
    ``total_steps - warmup_steps`` steps, and ``min_lr_ratio`` after that.
    """

    def __init__(self, kind: str, warmup_steps: int, total_steps: int | None = None, min_lr_ratio: float = 0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {kind!r}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if kind == "cosine" and (total_steps is None or total_steps < 1):
            raise ValueError(f"the cosine schedule needs total_steps >= 1, got {total_steps!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.kind, self.warmup_steps, self.total_steps, self.min_lr_ratio = kind, warmup_steps, total_steps, min_lr_ratio

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        assert self.total_steps is not None
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (s - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay, biases and norm scales (1-D) do not."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (everything is frozen)")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable[dict], name: str, lr: float, betas: tuple[float, float], eps: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """``adamw`` (default) or ``sgd``. torch's default (foreach) AdamW: it also takes FSDP2's DTensor
    parameters, where the fused variant is not guaranteed to."""
    del device
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
