"""``torchrun`` support: process-group setup, model wrapping (FSDP2 or DDP), sharded checkpoints, and the
list helpers the recipe uses to spread prompts over ranks and collect samples on rank 0.

Every function also works in a plain single process (no ``torchrun``, no process group): rank 0 of a
world of 1, wrapping is a no-op, ``shard_list`` returns everything, ``gather_to_rank0`` returns its input.
The backend is ``nccl`` for CUDA and ``gloo`` for CPU (so 2-process tests run on any machine).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from mstar_fast.constants import PARALLEL

logger = logging.getLogger("mstar_fast")
T = TypeVar("T")



@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class World:
    """The processes a stage runs over, passed to the stages that shard work or exchange objects (never
    patched in). :meth:`current` is the torchrun world (rank 0 of 1 without one); :meth:`single` is one
    process working alone, e.g. rank 0 doing a stage while the other ranks wait at a barrier: it runs no
    collective, so it cannot hang on ranks that are not there.

    Attributes:
        rank, size: this process's rank and the number of processes (``0 <= rank < size``).
    """

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        return cls(get_rank(), get_world_size())

    @classmethod
    def single(cls) -> World:
        return cls(0, 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            barrier()

    def broadcast(self, obj: T, src: int = 0) -> T:
        """``obj`` from rank ``src`` on every rank."""
        return broadcast_object(obj, src) if self.size > 1 else obj

    def gather(self, objs: Sequence[T]) -> list[T] | None:
        """Every rank's list concatenated on rank 0, in rank order; None on the other ranks."""
        return gather_to_rank0(objs) if self.size > 1 else list(objs)


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rendezvous variables with a world size > 1."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None, device: str | torch.device | None = None,
                     timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from torchrun's environment, once; a no-op without it.

    Args:
        backend: ``"nccl"`` | ``"gloo"``; default ``nccl`` when CUDA is available, else ``gloo``.
        device: the device this process trains on; default ``cuda:LOCAL_RANK`` with CUDA, else ``cpu``.
        timeout_s: collective timeout.

    Returns:
        This process's :class:`DistInfo` (rank 0 of 1 without torchrun).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if backend not in ("nccl", "gloo"):
            raise ValueError(f"init_distributed: backend must be 'nccl' or 'gloo', got {backend!r}")
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        logger.info("mstar_fast: process group up: rank %d/%d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    used = dist.get_backend() if dist.is_initialized() else None
    return DistInfo(get_rank(), get_world_size(), local_rank, device, used)


def destroy_distributed() -> None:
    """Tear the process group down (call once at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous share; the first n % world ranks get one extra item."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_list(items: Sequence[T], rank: int | None = None, world_size: int | None = None) -> list[T]:
    """This rank's contiguous share of ``items`` (sizes differ by at most one; order kept), so that
    concatenating the shards in rank order (:func:`gather_to_rank0`) gives back the original order."""
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    if not 0 <= rank < world:
        raise ValueError(f"shard_list: rank {rank} is not in [0, {world})")
    start, end = _shard_bounds(len(items), rank, world)
    return list(items[start:end])


def gather_to_rank0(objs: Sequence[T]) -> list[T] | None:
    """Concatenate every rank's list of picklable objects on rank 0, in rank order; other ranks get None.
    Without a process group, returns ``list(objs)``."""
    if not is_distributed():
        return list(objs)
    out: list[list[T]] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None  # type: ignore[list-item]
    dist.gather_object(list(objs), out, dst=0)
    if out is None:
        return None
    return [o for part in out for o in part]


def all_gather_list(objs: Sequence[T]) -> list[T]:
    """Like :func:`gather_to_rank0`, but every rank gets the concatenation."""
    if not is_distributed():
        return list(objs)
    out: list[list[T]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(out, list(objs))
    return [o for part in out for o in part]


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum of ``t`` over ranks (returned for chaining); unchanged without a process group."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def resolve_parallel(parallel: str, device: torch.device) -> str:
    """``"auto"`` -> ``"none"`` in one process, ``"fsdp"`` on CUDA, ``"ddp"`` on CPU (the model already
    fits one CPU process's memory there, and DDP's bucketed all-reduce is cheaper over gloo)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {PARALLEL}, got {parallel!r}")
    if not is_distributed():
        if parallel in ("ddp", "fsdp"):
            logger.info("mstar_fast: parallel=%s without a process group; training in one process", parallel)
        return "none"
    if parallel == "auto":
        return "fsdp" if device.type == "cuda" else "ddp"
    return parallel


def _block_modules(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: classes named in ``_no_split_modules`` (transformers'
    list of blocks that must stay whole), else every child of every ``nn.ModuleList``."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        blocks = [c for m in model.modules() if isinstance(m, nn.ModuleList) for c in m
                  if any(True for _ in c.parameters())]
    return blocks


def wrap_module(module: nn.Module, parallel: str, device: torch.device, *,
                find_unused_parameters: bool = False) -> nn.Module:
    """Wrap ``module`` for data-parallel training.

    Args:
        module: the module whose ``forward`` computes the loss (its parameters are what gets trained).
        parallel: ``"none"`` (returned as is), ``"ddp"`` (``DistributedDataParallel``) or ``"fsdp"``
            (FSDP2: ``fully_shard`` on every transformer block, then on ``module``; parameters become
            DTensors, so build the optimizer after this call).
        device: this rank's device.
        find_unused_parameters: DDP's option, for models with branches some batches skip (e.g. a vision
            tower and text-only batches).

    Returns:
        The module to call in training (``module`` itself for none/fsdp, the DDP wrapper for ddp).
    """
    if parallel == "none":
        return module
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (get_world_size(),))
        for block in _block_modules(module):
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    raise ValueError(f"wrap_module: parallel must be 'none', 'ddp' or 'fsdp', got {parallel!r}")


def is_fsdp(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def save_sharded(path: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Save the (FSDP-sharded) model and optimizer state with ``torch.distributed.checkpoint``: every rank
    writes its own shards under ``path``; collective (call on every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state: dict[str, Any] = {"model": get_model_state_dict(module)}
    else:
        msd, osd = get_state_dict(module, optimizer)
        state = {"model": msd, "optim": osd}
    dcp.save(state, checkpoint_id=str(path))


def load_sharded(path: str | os.PathLike, module: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load what :func:`save_sharded` wrote into ``module`` / ``optimizer`` (resharding as needed)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        state: dict[str, Any] = {"model": get_model_state_dict(module)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(module, state["model"])
        return
    msd, osd = get_state_dict(module, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def has_sharded_parameters(module: nn.Module) -> bool:
    """True when some parameter of ``module`` is a DTensor (``module`` is, or lies inside, an FSDP2 module)."""
    return any(hasattr(p, "full_tensor") for p in module.parameters())


def full_model_state_dict(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) model state dict on rank 0's CPU, None on other ranks; collective when
    ``module`` is or lies inside an FSDP2 module (call on every rank)."""
    if is_fsdp(module) or has_sharded_parameters(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if is_main_process() else None
    return module.state_dict() if is_main_process() else None


def copy_full_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy every parameter and buffer of ``src`` into the same-named one of ``dst``, casting to ``dst``'s
    dtype and device. FSDP2 shards (DTensors) are all-gathered one tensor at a time, so beyond ``dst`` at
    most one full tensor is in flight.

    Collective when ``src`` holds DTensors: call on every rank (tensors are visited in ``src``'s
    registration order, which is the same on every rank).

    Raises:
        ValueError: the two modules do not have the same tensor names and shapes.
    """
    src_t = {**dict(src.named_parameters()), **dict(src.named_buffers())}
    dst_t = {**dict(dst.named_parameters()), **dict(dst.named_buffers())}
    if set(src_t) != set(dst_t):
        only_src, only_dst = sorted(set(src_t) - set(dst_t)), sorted(set(dst_t) - set(src_t))
        raise ValueError(f"copy_full_weights: the modules differ: only in the source {only_src[:3]}, only in the "
                         f"destination {only_dst[:3]}")
    with torch.no_grad():
        for name, s in src_t.items():
            full = s.full_tensor() if hasattr(s, "full_tensor") else s
            d = dst_t[name]
            if tuple(d.shape) != tuple(full.shape):
                raise ValueError(f"copy_full_weights: {name} has shape {tuple(full.shape)} in the source, "
                                 f"{tuple(d.shape)} in the destination")
            d.copy_(full.to(device=d.device, dtype=d.dtype))
            del full
