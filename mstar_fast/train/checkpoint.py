"""Atomic, resumable checkpoints of an :class:`~mstar_fast.train.engine.SFTEngine`.

Layout of one checkpoint directory::

    model/               save_pretrained: config.json + model.safetensors (+ the processor when given);
                         loadable by plain transformers (``AutoModel*.from_pretrained``)
    optimizer.pt         optimizer state (single process / DDP; identical on every DDP rank)
    sharded/             FSDP runs: model + optimizer shards (torch.distributed.checkpoint), the
                         state a resume loads; ``model/`` is still written (gathered on rank 0) unless
                         ``export_model=False``
    scheduler.pt         LR scheduler state
    initial.safetensors  rest_em only: the initial weights every call restarts from
                         (``initial_sharded/`` under FSDP)
    rng/rank-NNNNN.pt    python, numpy, torch (and CUDA) RNG states of each rank
    trainer_state.json   global step, train_on call counters, the open call (for a mid-call resume),
                         and the caller's ``extra`` state (data cursor, temperature, ...)

Atomicity: everything is written under ``.<name>.tmp`` next to the target, files are fsynced, and the
directory is renamed into place in one ``os.rename``; a crash at any point leaves either the previous
checkpoint or the new one, never a half one (``.tmp`` leftovers are ignored, and removed by the next save
into the same parent directory, which assumes one run writes there at a time). Resuming restores weights, optimizer, scheduler, counters and RNG states, so on CPU a run stopped
after step s and resumed equals the uninterrupted run bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mstar_fast.train import distributed as D

if TYPE_CHECKING:
    from mstar_fast.train.engine import SFTEngine

FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
_WRAP_PREFIX = "model."  # CausalLMLoss holds the model as .model


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_json(extra: Any) -> None:
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"save_checkpoint: extra state must be JSON-serialisable ({exc})") from exc


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(_WRAP_PREFIX):] if k.startswith(_WRAP_PREFIX) else k: v for k, v in sd.items()}


def save_checkpoint(engine: SFTEngine, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                    processor: Any = None, export_model: bool = True) -> Path:
    """Write ``engine``'s full training state to the directory ``path``, atomically; collective under torchrun.

    Args:
        engine: the engine to save.
        path: the checkpoint directory (replaced atomically if it exists).
        extra: the caller's state (JSON-serialisable: data cursor, temperature, iteration, ...), handed
            back by :func:`load_checkpoint`.
        processor: also ``save_pretrained`` the processor / tokenizer into ``model/``.
        export_model: write ``model/`` (always written without FSDP, where it is what resume loads).

    Returns:
        ``Path(path)``.
    """
    extra = dict(extra or {})
    _check_json(extra)
    final = Path(path)
    tmp = final.parent / f".{final.name}.tmp"
    rank = D.get_rank()
    if rank == 0:
        final.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of crashed saves into this directory (one run writes a checkpoint directory at a time).
        # A ".X.old" without X is a complete checkpoint whose replacement crashed mid-swap: put it back.
        for p in list(final.parent.iterdir()):
            if not (p.is_dir() and p.name.startswith(".")):
                continue
            if p.name.endswith(".old") and not (final.parent / p.name[1:-4]).exists():
                os.rename(p, final.parent / p.name[1:-4])
            elif p.name.endswith(".tmp") or p.name.endswith(".old"):
                shutil.rmtree(p)
        (tmp / "rng").mkdir(parents=True)
    D.barrier()

    fsdp = D.is_fsdp(engine.wrapped)
    if fsdp:
        D.save_sharded(tmp / "sharded", engine.loss_module, engine.optimizer)
    if export_model or not fsdp:
        sd = D.full_model_state_dict(engine.loss_module)
        if rank == 0:
            assert sd is not None
            engine.model.save_pretrained(tmp / "model", state_dict=_strip(sd))
            if processor is not None:
                processor.save_pretrained(tmp / "model")
    if engine._initial_state is not None:  # rest_em: the weights every call restarts from
        if fsdp:
            import torch.distributed.checkpoint as dcp

            dcp.save({"initial": engine._initial_state}, checkpoint_id=str(tmp / "initial_sharded"))
        elif rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in engine._initial_state.items()}, str(tmp / "initial.safetensors"))
    if rank == 0:
        if not fsdp:
            torch.save(engine.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(engine.scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"format_version": FORMAT_VERSION, **engine.trainer_state(), "extra": extra}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    torch.save(_rng_state(), tmp / "rng" / f"rank-{rank:05d}.pt")
    D.barrier()

    if rank == 0:
        _fsync_tree(tmp)
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.rename(final, old)  # the one non-atomic window: both old and tmp are complete here
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    D.barrier()
    return final


def _load_model_dir(model: torch.nn.Module, model_dir: Path) -> None:
    """Load the ``save_pretrained`` weights in ``model_dir`` into ``model`` in place.

    transformers 5 saves some models (LLaVA, Qwen2-VL, ...) under their original checkpoint key names,
    which differ from the module names; when the keys do not match, the weights go through the model
    class's own ``from_pretrained`` (which knows the renaming) and are then copied over."""
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"load_checkpoint: no *.safetensors under {model_dir}")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    own = model.state_dict()
    if not set(sd) <= set(own):
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(model_dir, dtype=dtype)
        sd = loaded.state_dict()
        del loaded
    result = model.load_state_dict(sd, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"load_checkpoint: {model_dir} holds weights the model does not have: {result.unexpected_keys[:5]}")
    loaded_ptrs = {own[k].data_ptr() for k in sd if k in own}
    untied = [k for k in result.missing_keys if own[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise ValueError(f"load_checkpoint: {model_dir} lacks weights of the model: {untied[:5]}")


def load_checkpoint(engine: SFTEngine, path: str | os.PathLike) -> dict[str, Any]:
    """Restore ``engine`` from a :func:`save_checkpoint` directory; collective under torchrun.

    Restores weights, optimizer, scheduler, global step and call counters (a checkpoint written from
    ``on_step`` mid-call makes the next ``train_on`` with the same data continue that call), and this
    rank's RNG states.

    Returns:
        The caller's ``extra`` state saved with the checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint.
        ValueError: the checkpoint belongs to another mode or layout (e.g. sharded vs not).
    """
    root = Path(path)
    state_file = root / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"load_checkpoint: {root} is not a checkpoint (no {STATE_FILE})")
    state = json.loads(state_file.read_text())
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: unknown checkpoint format {state.get('format_version')!r}")
    fsdp = D.is_fsdp(engine.wrapped)
    if fsdp:
        if not (root / "sharded").is_dir():
            raise ValueError(f"load_checkpoint: {root} has no sharded/ state, but this engine runs FSDP")
        D.load_sharded(root / "sharded", engine.loss_module, engine.optimizer)
    else:
        if not (root / "optimizer.pt").is_file():
            raise ValueError(f"load_checkpoint: {root} holds sharded (FSDP) state; load it with parallel='fsdp'")
        _load_model_dir(engine.model, root / "model")
        engine.optimizer.load_state_dict(torch.load(root / "optimizer.pt", map_location=engine.device,
                                                    weights_only=False))
    if engine._initial_state is not None:
        if fsdp:
            import torch.distributed.checkpoint as dcp

            box = {"initial": engine._initial_state}
            dcp.load(box, checkpoint_id=str(root / "initial_sharded"))  # in place, into the same DTensors
        else:
            from safetensors.torch import load_file

            saved = load_file(str(root / "initial.safetensors"))
            for k, v in engine._initial_state.items():
                v.copy_(saved[k])
    engine.scheduler.load_state_dict(torch.load(root / "scheduler.pt", weights_only=False))
    engine.load_trainer_state(state)
    rng_file = root / "rng" / f"rank-{D.get_rank():05d}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    D.barrier()
    return dict(state.get("extra") or {})


_STEP_RE = re.compile(r"(\d+)$")


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint under ``directory`` whose name ends with the largest number
    (e.g. ``step-000120``), ignoring temporary (dot-prefixed) leftovers, except a ``.X.old`` whose ``X``
    is missing (the previous checkpoint, when a save crashed between its two renames); None when none."""
    d = Path(directory)
    if not d.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for p in d.iterdir():
        if not (p / STATE_FILE).is_file():
            continue
        if p.name.startswith("."):
            # Only a ".X.old" whose X is missing counts (a crash between the two renames of a save).
            if not (p.name.endswith(".old") and not (d / p.name[1:-4]).exists()):
                continue
        m = _STEP_RE.search(p.name[1:-4] if p.name.startswith(".") else p.name)
        key = int(m.group(1)) if m else -1
        if best is None or key > best[0]:
            best = (key, p)
    return None if best is None else best[1]
