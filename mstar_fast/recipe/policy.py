"""The weights rollouts run on when training shards the policy with FSDP2 (``train.parallel=fsdp``).

FSDP2 keeps 1/N of every parameter on each rank and all-gathers a block's parameters inside each of its
forwards, so sampling from the sharded model would force every rank through the same forwards in
lockstep. The recipe's sampling is not lockstep: each rank generates its own share of prompts, with its
own batch shapes and number of decoding steps. So under FSDP each rank holds a plain, unsharded
**inference copy** of the policy next to its shards: the built-in rollout engine (and the monitor, the
warm-up's test accuracy, pseudo-labelling) runs on that copy unchanged, and :meth:`RolloutPolicy.refresh`
rewrites it from the shards (one all-gather per tensor) after every training call and after a resume.
Training, the optimizer state and checkpoints stay sharded. (docs/scaling.md has the memory arithmetic.)

Memory condition, per rank: the inference copy (every weight, in the model's dtype) plus the rollout KV
cache (``rollout.max_batch_tokens`` positions) must fit next to the shards (weights, gradients and
optimizer state, each 1/N). :meth:`RolloutPolicy.create` checks it before the copy is built and refuses
the run with the numbers when it does not hold (on every rank at once, so no rank waits on a failed one).

Without FSDP (``none`` / ``ddp``) rollouts run on the trained model itself and nothing is copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mstar_fast.errors import UserError
from mstar_fast.train import SFTEngine
from mstar_fast.train.distributed import all_gather_list, copy_full_weights

__all__ = ["RolloutPolicy", "check_inference_copy_fits", "free_memory_bytes", "kv_bytes_per_position"]

_GiB = float(1 << 30)


def kv_bytes_per_position(model: nn.Module) -> int | None:
    """Bytes of KV cache one position takes in ``model``'s language model: ``2 (K and V) x layers x
    kv_heads x head_dim x bytes per element`` of the weights' dtype; None when the config does not say."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers, heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if not (layers and heads):
        return None
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    itemsize = next(model.parameters()).dtype.itemsize
    return 2 * int(layers) * int(kv_heads) * int(head_dim) * itemsize


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory this rank can still allocate: on CUDA the device's free memory plus what torch's caching
    allocator holds unused (e.g. the full weights freed when FSDP2 sharded them), on CPU the node's
    ``MemAvailable`` split between the node's ranks (torchrun's ``LOCAL_WORLD_SIZE``); None if unknown."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None
        return kib * 1024 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return None


def check_inference_copy_fits(*, weights_bytes: int, kv_bytes: int | None, pending_bytes: int,
                              free_bytes: int | None, where: str) -> str | None:
    """Why an inference copy of ``weights_bytes`` plus ``kv_bytes`` of KV cache, next to ``pending_bytes``
    the trainer will still allocate (gradient and optimizer shards of its first step), does not fit in
    ``free_bytes``; None when it fits (or ``free_bytes`` is unknown: nothing to check against).

    All sizes in bytes; ``where`` names the device in the message."""
    if free_bytes is None:
        return None
    need = weights_bytes + (kv_bytes or 0) + pending_bytes
    if need <= free_bytes:
        return None
    kv = f"{(kv_bytes or 0) / _GiB:.2f} GiB KV cache (rollout.max_batch_tokens)" if kv_bytes is not None \
        else "the KV cache (size unknown)"
    return (f"train.parallel=fsdp samples from an unsharded inference copy of the policy on every rank: "
            f"{weights_bytes / _GiB:.2f} GiB of weights + {kv} + {pending_bytes / _GiB:.2f} GiB of gradient and "
            f"optimizer shards still to allocate = {need / _GiB:.2f} GiB, but only {free_bytes / _GiB:.2f} GiB is "
            f"free on {where}. Use more ranks (smaller shards), a smaller rollout.max_batch_tokens, or "
            f"train.parallel=ddp where the whole training state fits one device (docs/scaling.md)")


def _pending_bytes(trainer: SFTEngine) -> int:
    """Bytes of this rank's gradient and optimizer shards that are not allocated yet (both appear at the
    first step): a gradient per trainable parameter, plus AdamW's two moments (in the parameter's dtype)."""
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() * p.dtype.itemsize
                for p in trainer.loss_module.parameters() if p.requires_grad)
    grads = 0 if any(p.grad is not None for p in trainer.loss_module.parameters()) else local
    moments = 0 if trainer.optimizer.state or trainer.config.optimizer != "adamw" else 2 * local
    return grads + moments


@dataclass
class RolloutPolicy:
    """The model rollouts run on during a training run (module doc).

    Attributes:
        trainer: the run's trainer (its ``model`` is the policy being trained).
        model: what the rollout engine should run on: ``trainer.model`` itself, or under FSDP2 a plain
            unsharded copy holding the same weights as of the last :meth:`refresh`.
    """

    trainer: SFTEngine
    model: nn.Module

    @property
    def is_copy(self) -> bool:
        """True under FSDP2 (a separate inference copy that :meth:`refresh` must keep current)."""
        return self.model is not self.trainer.model

    @classmethod
    def create(cls, trainer: SFTEngine, load: Callable[[], nn.Module], *, max_batch_tokens: int) -> RolloutPolicy:
        """``trainer.model`` without FSDP; under FSDP2 a copy built by ``load`` (the same architecture and
        dtype, e.g. the policy loaded again from its directory) and filled with the trainer's current
        weights. Collective under FSDP2: call on every rank.

        Raises:
            UserError: (every rank) the copy and the KV cache do not fit next to the shards on some rank.
        """
        if trainer.parallel != "fsdp":
            return cls(trainer, trainer.model)
        src = trainer.model
        weights = sum(p.numel() * p.dtype.itemsize for p in src.parameters())  # DTensor.numel(): the full size
        per_pos = kv_bytes_per_position(src)
        why = check_inference_copy_fits(weights_bytes=weights,
                                        kv_bytes=None if per_pos is None else per_pos * max_batch_tokens,
                                        pending_bytes=_pending_bytes(trainer), free_bytes=free_memory_bytes(
                                            trainer.device), where=f"{trainer.device} (rank {trainer.rank})")
        verdicts = [v for v in all_gather_list([why]) if v is not None]
        if verdicts:
            raise UserError(verdicts[0])
        model = load()
        model.requires_grad_(False)
        policy = cls(trainer, model)
        policy.refresh()
        return policy

    def refresh(self) -> None:
        """Copy the trainer's current weights into the inference copy (a no-op without one). Collective
        under FSDP2: call on every rank after each training call and after loading a checkpoint."""
        if self.is_copy:
            copy_full_weights(self.trainer.model, self.model)
