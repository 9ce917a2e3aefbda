"""SFT step engine of self-evolving training: response-only loss through the fused linear cross-entropy,
an optimizer and LR schedule that can live for the whole run (``continuous``) or be re-created per
iteration (``iterative_rft``, ``rest_em``), atomic resumable checkpoints, and ``torchrun`` support."""

from mstar_fast.train.checkpoint import latest_checkpoint, load_checkpoint, resume_latest, save_checkpoint
from mstar_fast.train.data import IGNORE_INDEX, EncodedExample, SFTCollator, collate, eos_token_id_for
from mstar_fast.train.distributed import (
    DistInfo,
    all_gather_list,
    destroy_distributed,
    gather_to_rank0,
    init_distributed,
    shard_list,
)
from mstar_fast.train.engine import MODES, CausalLMLoss, SFTConfig, SFTEngine, StepInfo, TrainReport

__all__ = [
    "IGNORE_INDEX",
    "MODES",
    "CausalLMLoss",
    "DistInfo",
    "EncodedExample",
    "SFTCollator",
    "SFTConfig",
    "SFTEngine",
    "StepInfo",
    "TrainReport",
    "all_gather_list",
    "collate",
    "destroy_distributed",
    "eos_token_id_for",
    "gather_to_rank0",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "resume_latest",
    "save_checkpoint",
    "shard_list",
]
