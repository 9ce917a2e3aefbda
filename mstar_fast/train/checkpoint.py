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
    rng/rank-NNNNN.pt    python, numpy, torch (and CUDA) RNG states of each rank, as tensors and plain numbers
    trainer_state.json   global step, train_on call counters, the open call (for a mid-call resume),
                         and the caller's ``extra`` state (data cursor, temperature, ...)

Atomicity: everything is written under ``.<name>.tmp`` next to the target, files are fsynced, and the
directory is renamed into place in one ``os.rename``; a crash at any point leaves either the previous
checkpoint or the new one, never a half one (``.tmp`` leftovers are ignored, and removed by the next save
into the same parent directory, which assumes one run writes there at a time). Resuming restores weights, optimizer, scheduler, counters and RNG states, so on CPU a run stopped
after step s and resumed equals the uninterrupted run bit for bit.

Safety: no file of a checkpoint can make a resume run code. ``*.pt`` files are read with
``torch.load(weights_only=True)`` (tensors and plain containers/numbers only; every state written here is
made of those: the RNG states are stored as tensors and numbers, not as pickled objects), and the pickled
``.metadata`` of ``sharded/`` is checked with an unpickler that only knows the classes
``torch.distributed.checkpoint`` writes there. A file asking for anything else (a crafted run directory)
is refused with :class:`UnsafeCheckpointError` before any of its code could run.

Damage: :func:`load_checkpoint` reads and checks every file before it changes the engine, and raises
:class:`DamagedCheckpointError` naming the unreadable file (truncated ``optimizer.pt``, corrupt
safetensors, bad ``trainer_state.json``); :func:`resume_latest` then falls back to the previous checkpoint
with a warning.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import random
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mstar_fast.train import distributed as D

if TYPE_CHECKING:
    from mstar_fast.train.engine import SFTEngine

FORMAT_VERSION = 2  # 2: RNG states as tensors (1: pickled numpy/python objects; still read, see _read_rng)
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
    """This process's RNG states as tensors and plain numbers (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_key, np_state, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),  # 624 uint32 words + the position
        "python_gauss": py_gauss,  # None or float
        "numpy_key": str(np_key),
        "numpy_state": torch.from_numpy(np.asarray(np_state, dtype=np.int64)),  # uint32 words, widened
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


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


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; ``path`` is the offending file (or directory)."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.path = Path(path)


class DamagedCheckpointError(CheckpointError):
    """A file of the checkpoint is missing, truncated, corrupt or malformed (:func:`resume_latest` falls
    back to the previous checkpoint)."""


class UnsafeCheckpointError(CheckpointError):
    """A file asks the unpickler for code (a class or function beyond tensors and plain data): refused
    unread. mstar_fast never writes such a file; a crafted or foreign run directory does. Not a reason to
    fall back silently: the run directory has been tampered with."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older one."""


_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _unsafe(path: Path, root: Path, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"load_checkpoint: refusing {path}: it {what}, which no checkpoint written by mstar_fast does (a crafted or "
        f"foreign file); nothing in it was run. Remove {root} (or restore it from a trusted copy) to resume from an "
        "earlier checkpoint", path)


def _damaged(path: Path, why: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(f"load_checkpoint: {path} is damaged ({why})", path)


def _is_whole_pickle(path: Path) -> bool:
    """Whether ``path`` (a torch zip archive's ``data.pkl``, or the file itself) is one complete,
    well-formed pickle stream: what a deliberately written file is, and damaged bytes almost never are
    (``zipfile`` checks the archive's CRC-32, which torch does not: a bit flip is damage). Only parses the
    opcodes (``pickletools``); nothing is unpickled."""
    try:
        data = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
                data = z.read(names[0]) if names else b""
        for _ in pickletools.genops(data):
            pass
        return bool(data)
    except Exception:  # not parseable: damage
        return False


def _torch_load(path: Path, root: Path, map_location: Any = None, allow: tuple[Any, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` (with ``allow`` added to the allowed globals): never
    unpickles anything but tensors and plain containers/numbers; errors as checkpoint errors."""
    if not path.is_file():
        raise _damaged(path, "missing")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # the weights-only unpickler met something it does not allow
        if not _is_whole_pickle(path):  # random bytes can look like a refused pickle too: that is damage
            raise _damaged(path, _first_line(exc)) from None
        m = _UNSAFE_GLOBAL.search(str(exc))
        what = (f"asks the unpickler for {m.group(1)}" if m
                else "holds pickle instructions beyond tensors and plain data")
        raise _unsafe(path, root, what) from None
    except Exception as exc:  # truncated / not a zip / garbage: torch raises a variety of types
        raise _damaged(path, _first_line(exc)) from exc


# What torch.distributed.checkpoint pickles into a sharded checkpoint's .metadata (dataclasses, enums, torch
# dtypes and sizes, paths): checked with an unpickler that knows only these before dcp.load reads the file.
_DCP_METADATA = "torch.distributed.checkpoint.metadata"  # dataclasses and enums only
_DCP_NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("torch", "device"),
              ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
              ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
              ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice")}


class _DcpMetadataUnpickler(pickle.Unpickler):
    """Knows only the classes above: any other global (a function to call, a class with side effects)
    is an ``UnpicklingError`` before it is even looked up."""

    def find_class(self, module: str, name: str) -> Any:
        import importlib

        if module == _DCP_METADATA:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and obj.__module__ == module:  # defined there: no imported names
                return obj
        elif (module, name) in _DCP_NAMES:
            return super().find_class(module, name)
        elif module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")


def _check_dcp(directory: Path, root: Path) -> None:
    """Refuse a sharded (torch.distributed.checkpoint) directory whose pickled ``.metadata`` asks for more
    than dcp's own metadata classes (dcp.load itself unpickles it without restriction)."""
    meta = directory / ".metadata"
    if not meta.is_file():
        raise _damaged(meta, "missing")
    try:
        _DcpMetadataUnpickler(io.BytesIO(meta.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise _unsafe(meta, root, f"asks the unpickler for {str(exc).split()[1]}") from None
        raise _damaged(meta, _first_line(exc)) from exc
    except Exception as exc:
        raise _damaged(meta, _first_line(exc)) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise _damaged(path, "missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError (bad header, truncated data), OSError
        raise _damaged(path, _first_line(exc)) from exc


def _read_model_dir(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``save_pretrained`` safetensors files in ``model_dir`` (all read and checked)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise _damaged(model_dir, "no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(_read_safetensors(f))
    return sd


def _apply_model_dir(model: torch.nn.Module, model_dir: Path, sd: dict[str, torch.Tensor]) -> None:
    """Load the ``save_pretrained`` weights ``sd`` read from ``model_dir`` into ``model`` in place.

    transformers 5 saves some models (LLaVA, Qwen2-VL, ...) under their original checkpoint key names,
    which differ from the module names; when the keys do not match, the weights go through the model
    class's own ``from_pretrained`` (which knows the renaming) and are then copied over."""
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


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_state(root: Path) -> dict[str, Any]:
    """``trainer_state.json``, checked field by field (a bad file is damage, not a crash later)."""
    f = root / STATE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"load_checkpoint: {root} is not a checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _damaged(f, _first_line(exc)) from exc
    if not isinstance(state, dict):
        raise _damaged(f, f"expected a JSON object, got {type(state).__name__}")
    version = state.get("format_version")
    if _is_count(version) and version > FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: {root} was written by a newer mstar_fast (format {version}; this one "
                         f"reads formats 1 to {FORMAT_VERSION})")
    if version not in (1, FORMAT_VERSION):
        raise _damaged(f, f"format_version {version!r} is not a known checkpoint format")
    for key in ("global_step", "calls"):
        if not _is_count(state.get(key)):
            raise _damaged(f, f"{key} must be an integer >= 0, got {state.get(key)!r}")
    if not isinstance(state.get("mode"), str):
        raise _damaged(f, f"mode must be a string, got {state.get('mode')!r}")
    open_call = state.get("open_call")
    if not isinstance(open_call, (dict, type(None))):
        raise _damaged(f, f"open_call must be an object or null, got {open_call!r}")
    if open_call is not None:  # what SFTEngine.train_on continues an interrupted call from
        missing = [k for k in ("call", "fingerprint", "steps_arg", "epochs", "done") if k not in open_call]
        if missing or not (_is_count(open_call["call"]) and _is_count(open_call["done"])):
            raise _damaged(f, f"open_call lacks {missing} or has a bad call / done count: {open_call!r}")
    if not isinstance(state.get("extra"), (dict, type(None))):
        raise _damaged(f, f"extra must be an object or null, got {state.get('extra')!r}")
    return state


def _numpy_rng_globals() -> tuple[Any, ...]:
    """What a format-1 RNG file pickled numpy's state with (an array of uint32): numpy's array
    reconstruction only, no code."""
    arr = np.zeros(1, dtype=np.uint32)
    return (arr.__reduce__()[0], np.ndarray, np.dtype, type(arr.dtype))


def _read_rng(path: Path, root: Path, version: int) -> dict[str, Any]:
    """This rank's RNG states, decoded and checked on scratch generators (the global ones are untouched)."""
    raw = _torch_load(path, root, allow=_numpy_rng_globals() if version == 1 else ())
    try:
        if version == 1:
            out = {"python": raw["python"], "numpy": raw["numpy"], "torch": raw["torch"]}
        else:
            out = {"python": (raw["python_version"], tuple(int(x) for x in raw["python_state"].tolist()),
                              raw["python_gauss"]),
                   "numpy": (raw["numpy_key"], raw["numpy_state"].numpy().astype(np.uint32), raw["numpy_pos"],
                             raw["numpy_has_gauss"], raw["numpy_gauss"]),
                   "torch": raw["torch"]}
        random.Random().setstate(out["python"])
        np.random.RandomState().set_state(out["numpy"])
        torch.Generator().set_state(out["torch"])
        if "cuda" in raw:
            out["cuda"] = list(raw["cuda"])
            if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in out["cuda"]):
                raise TypeError("cuda states must be uint8 tensors")
    except Exception as exc:  # KeyError, TypeError, ValueError of a malformed state
        raise _damaged(path, f"not an RNG state: {_first_line(exc)}") from exc
    return out


def _set_rng_state(state: dict[str, Any]) -> None:
    """Install the states :func:`_read_rng` decoded into this process's global generators."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class _Read:
    """Everything a checkpoint holds for this rank, read and checked before the engine is touched."""

    state: dict[str, Any]
    model: dict[str, torch.Tensor] | None  # None under FSDP (sharded/ is loaded collectively)
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any]
    initial: dict[str, torch.Tensor] | None
    rng: dict[str, Any] | None


def _read(engine: SFTEngine, root: Path) -> _Read:
    state = _read_state(root)
    fsdp = D.is_fsdp(engine.wrapped)
    model = optimizer = initial = None
    if fsdp:
        if not (root / "sharded").is_dir():
            raise ValueError(f"load_checkpoint: {root} has no sharded/ state, but this engine runs FSDP")
        _check_dcp(root / "sharded", root)
    else:
        if not (root / "optimizer.pt").is_file() and (root / "sharded").is_dir():
            raise ValueError(f"load_checkpoint: {root} holds sharded (FSDP) state; load it with parallel='fsdp'")
        model = _read_model_dir(root / "model")
        optimizer = _torch_load(root / "optimizer.pt", root, map_location=engine.device)
        if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
                and isinstance(optimizer.get("param_groups"), list)):
            raise _damaged(root / "optimizer.pt", "not an optimizer state (no state / param_groups)")
    if engine._initial_state is not None:
        if fsdp:
            _check_dcp(root / "initial_sharded", root)
        else:
            initial = _read_safetensors(root / "initial.safetensors")
            missing = [k for k in engine._initial_state if k not in initial]
            if missing:
                raise _damaged(root / "initial.safetensors", f"lacks {missing[:3]}")
    scheduler = _torch_load(root / "scheduler.pt", root)
    if not (isinstance(scheduler, dict) and "last_epoch" in scheduler):
        raise _damaged(root / "scheduler.pt", "not an LR scheduler state (no last_epoch)")
    rng_file = root / "rng" / f"rank-{D.get_rank():05d}.pt"
    rng = _read_rng(rng_file, root, state["format_version"]) if rng_file.is_file() else None
    return _Read(state, model, optimizer, scheduler, initial, rng)


def load_checkpoint(engine: SFTEngine, path: str | os.PathLike) -> dict[str, Any]:
    """Restore ``engine`` from a :func:`save_checkpoint` directory; collective under torchrun.

    Restores weights, optimizer, scheduler, global step and call counters (a checkpoint written from
    ``on_step`` mid-call makes the next ``train_on`` with the same data continue that call), and this
    rank's RNG states. Every file is read and checked before the engine changes, so a damaged checkpoint
    leaves the engine as it was (FSDP's sharded state excepted: it loads collectively, in place).

    Returns:
        The caller's ``extra`` state saved with the checkpoint.

    Raises:
        FileNotFoundError: ``path`` is not a checkpoint (no ``trainer_state.json``).
        DamagedCheckpointError: a file is missing, truncated, corrupt or malformed (named in ``.path``).
        UnsafeCheckpointError: a file asks the unpickler for code; nothing of it ran.
        ValueError: the checkpoint belongs to another mode or layout (e.g. sharded vs not), or to a newer
            format.
    """
    root = Path(path)
    read: _Read | None = None
    failure: tuple[str, str, str] | None = None
    try:
        read = _read(engine, root)
    except CheckpointError as exc:
        failure = (type(exc).__name__, str(exc), str(exc.path))
    # Every rank must take the same branch (a damaged file of one rank fails all of them alike).
    failures = [f for f in D.all_gather_list([failure]) if f is not None]
    if failures:
        kinds = {"UnsafeCheckpointError": UnsafeCheckpointError, "DamagedCheckpointError": DamagedCheckpointError}
        name, message, where = min(failures, key=lambda f: f[0] != "UnsafeCheckpointError")
        raise kinds[name](message, where)
    assert read is not None
    engine.load_trainer_state(read.state)  # checks the mode first, before anything changes
    if read.model is None:
        D.load_sharded(root / "sharded", engine.loss_module, engine.optimizer)
    else:
        _apply_model_dir(engine.model, root / "model", read.model)
        engine.optimizer.load_state_dict(read.optimizer)
    if engine._initial_state is not None:
        if read.initial is None:
            import torch.distributed.checkpoint as dcp

            box = {"initial": engine._initial_state}
            dcp.load(box, checkpoint_id=str(root / "initial_sharded"))  # in place, into the same DTensors
        else:
            for k, v in engine._initial_state.items():
                v.copy_(read.initial[k])
    engine.scheduler.load_state_dict(read.scheduler)
    if read.rng is not None:
        _set_rng_state(read.rng)
    D.barrier()
    return dict(read.state.get("extra") or {})


_STEP_RE = re.compile(r"(\d+)$")


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The complete checkpoints under ``directory``, newest first: ordered by the number their name ends
    with (e.g. ``step-000120``), ignoring temporary (dot-prefixed) leftovers, except a ``.X.old`` whose
    ``X`` is missing (the previous checkpoint, when a save crashed between its two renames)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found: list[tuple[int, str, Path]] = []
    for p in d.iterdir():
        if not (p / STATE_FILE).is_file():
            continue
        name = p.name
        if name.startswith("."):
            # Only a ".X.old" whose X is missing counts (a crash between the two renames of a save).
            if not (name.endswith(".old") and not (d / name[1:-4]).exists()):
                continue
            name = name[1:-4]
        m = _STEP_RE.search(name)
        found.append((int(m.group(1)) if m else -1, name, p))
    return [p for _, _, p in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest of :func:`list_checkpoints` (None when there is none)."""
    found = list_checkpoints(directory)
    return found[0] if found else None


def resume_latest(engine: SFTEngine, directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest usable checkpoint under ``directory`` into ``engine``; collective under torchrun.

    A damaged checkpoint (a truncated ``optimizer.pt``, corrupt weights, a bad or missing
    ``trainer_state.json``, ...) is skipped with a :class:`CheckpointWarning` naming the damaged file, and
    the previous one is tried.

    Returns:
        ``(checkpoint path, the caller's extra state)``, or None when ``directory`` holds no checkpoint
        (neither a complete nor a damaged one: a run that never reached one).

    Raises:
        DamagedCheckpointError: every checkpoint under ``directory`` is damaged (all named in the message).
        UnsafeCheckpointError: a checkpoint holds a file asking the unpickler for code: refused, no fallback
            (the run directory was tampered with; the user decides).
        ValueError: a checkpoint of another mode / layout / a newer format (no fallback: not damage).
    """
    damaged: list[DamagedCheckpointError] = []
    d = Path(directory)
    # A numbered directory without trainer_state.json is no checkpoint (saves are atomic): a damaged one.
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        if p.is_dir() and not p.name.startswith(".") and _STEP_RE.search(p.name) and not (p / STATE_FILE).is_file():
            damaged.append(_damaged(p / STATE_FILE, "missing"))
            warnings.warn(f"{damaged[-1]}; skipped", CheckpointWarning, stacklevel=2)
    for ckpt in list_checkpoints(directory):
        try:
            extra = load_checkpoint(engine, ckpt)
        except DamagedCheckpointError as exc:
            damaged.append(exc)
            warnings.warn(f"{exc}; trying the previous checkpoint", CheckpointWarning, stacklevel=2)
            continue
        if damaged:
            warnings.warn(f"resumed from {ckpt}, skipping {len(damaged)} damaged checkpoint(s): "
                          + ", ".join(str(e.path) for e in damaged), CheckpointWarning, stacklevel=2)
        return ckpt, extra
    if damaged:
        raise DamagedCheckpointError(f"resume: no usable checkpoint under {directory}; "
                                     + "; ".join(str(e) for e in damaged), damaged[0].path)
    return None
