"""Input checks shared by the public ops: each raises ValueError naming the op, the argument and the
problem, so every backend rejects bad input the same way before any kernel runs."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def tensor(op: str, name: str, x: object, dim: int) -> torch.Tensor:
    """``x`` must be a tensor of ``dim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != dim:
        shape = "[L]" if dim == 1 else "[N, H]"
        raise ValueError(f"{op}: {name} must be {dim}-D {shape}, got shape {tuple(x.shape)}")
    return x


def float_vector(op: str, name: str, x: object) -> torch.Tensor:
    """``x`` must be a 1-D float32 / float64 / bfloat16 / float16 tensor."""
    x = tensor(op, name, x, 1)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} must be float32, float64, bfloat16 or float16, got {x.dtype} (convert with .float())"
        )
    return x


def same_device(op: str, ref_name: str, ref: torch.Tensor, name: str, x: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}")


def index_tensor(op: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """An int32 / int64 tensor, returned as int64."""
    if x.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{op}: {name} must be int64 (or int32), got {x.dtype}")
    return x.to(torch.int64)


def offsets(op: str, name: str, x: object, length: int, device: torch.device) -> torch.Tensor:
    """A ``[R + 1]`` int64 offsets tensor: starts at 0, never decreases, ends at ``length``. Returns it
    as int64 on ``device`` (the check reads it: one device sync for CUDA tensors)."""
    x = tensor(op, name, x, 1)
    if x.device != device:
        raise ValueError(f"{op}: {name} is on {x.device} but the values are on {device}")
    x = index_tensor(op, name, x)
    if x.shape[0] == 0:
        raise ValueError(f"{op}: {name} must hold R + 1 >= 1 entries (a leading 0), got an empty tensor")
    host = x.cpu()
    if int(host[0]) != 0:
        raise ValueError(f"{op}: {name}[0] must be 0, got {int(host[0])}")
    if host.shape[0] > 1:
        step = host[1:] - host[:-1]
        if bool((step < 0).any()):
            i = int((step < 0).nonzero()[0, 0]) + 1
            raise ValueError(
                f"{op}: {name} must be non-decreasing, but {name}[{i}] = {int(host[i])} < "
                f"{name}[{i - 1}] = {int(host[i - 1])}"
            )
    if int(host[-1]) != length:
        raise ValueError(
            f"{op}: {name} must end at the number of values ({length}), but {name}[-1] = {int(host[-1])}"
        )
    return x
