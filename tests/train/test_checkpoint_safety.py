"""Checkpoints never unpickle (a crafted run directory is refused before its code can run), and a damaged
newest checkpoint makes resume fall back to the previous one with a warning naming the damaged file."""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mstar_fast
from mstar_fast.train.checkpoint import (
    CheckpointWarning,
    DamagedCheckpointError,
    UnsafeCheckpointError,
    _check_dcp,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resume_latest,
    save_checkpoint,
)
from tests.train.test_checkpoint import build_run

PACKAGE = Path(mstar_fast.__file__).resolve().parent


class _Payload:
    """Unpickling this creates ``marker`` (what a crafted file would do with anything worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


@pytest.fixture
def two_checkpoints(tiny_dirs, tmp_path):
    """(engine, root) with root/step-1 (extra v=1) and root/step-2 (extra v=2), then one more step."""
    engine, data_a, _ = build_run(tiny_dirs("llama"))
    root = tmp_path / "ckpts"
    engine.train_on(data_a, steps=1)
    save_checkpoint(engine, root / "step-1", extra={"v": 1})
    engine.train_on(data_a, steps=1)
    save_checkpoint(engine, root / "step-2", extra={"v": 2})
    engine.train_on(data_a, steps=1)
    return engine, root


# ----------------------------------------------------------------------------------------- never unpickle

def test_no_unrestricted_unpickling_in_the_package():
    """Every torch.load in mstar_fast passes weights_only=True; no pickle.load / pickle.loads anywhere."""
    offenders = []
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner == "torch" and node.func.attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{f}:{node.lineno}: torch.load without weights_only=True")
            if owner == "pickle" and node.func.attr in ("load", "loads"):
                offenders.append(f"{f}:{node.lineno}: pickle.{node.func.attr}")
    assert not offenders, offenders


@pytest.mark.parametrize("victim", ["optimizer.pt", "scheduler.pt", "rng/rank-00000.pt"])
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_crafted_pickle_is_refused_and_never_runs(two_checkpoints, tmp_path, victim, how):
    engine, root = two_checkpoints
    marker = tmp_path / "pwned"
    target = root / "step-2" / victim
    if how == "torch.save":
        torch.save({"state": {}, "param_groups": [], "x": _Payload(marker)}, target)
    else:  # a plain pickle (protocol 5, STACK_GLOBAL), not even a torch zip archive
        target.write_bytes(pickle.dumps(_Payload(marker), protocol=5))
    before, step = _weights(engine), engine.global_step

    with pytest.raises(UnsafeCheckpointError, match="refusing .*nothing in it was run") as err:
        load_checkpoint(engine, root / "step-2")
    assert err.value.path == target
    assert not marker.exists()
    # Tampering is not damage: resume refuses too instead of silently taking step-1.
    with pytest.raises(UnsafeCheckpointError):
        resume_latest(engine, root)
    assert not marker.exists()
    assert engine.global_step == step and all(torch.equal(v, before[k]) for k, v in _weights(engine).items())

    # The payload is real: an unrestricted load runs it (what resume did before).
    if how == "torch.save":
        torch.load(target, weights_only=False)
    else:
        pickle.loads(target.read_bytes())
    assert marker.exists()


def test_crafted_sharded_metadata_is_refused(tmp_path):
    """FSDP checkpoints: dcp.load unpickles sharded/.metadata itself, so it is checked first."""
    import torch.distributed.checkpoint as dcp

    good = tmp_path / "good" / "sharded"
    dcp.save({"model": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)},
              "optim": {"state": {"w": {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]}},
             checkpoint_id=str(good))
    _check_dcp(good, good.parent)  # what dcp writes passes

    bad = tmp_path / "bad" / "sharded"
    bad.mkdir(parents=True)
    marker = tmp_path / "pwned"
    (bad / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        _check_dcp(bad, bad.parent)
    assert not marker.exists()
    # Only dcp's metadata classes: not another class of its modules, not a name a module imported.
    for module, name in (("torch.distributed.checkpoint.filesystem", "FileSystemWriter"),
                         ("torch.distributed.checkpoint.metadata", "Enum"), ("torch", "load")):
        (bad / ".metadata").write_bytes(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
        with pytest.raises(UnsafeCheckpointError, match=re.escape(f"{module}.{name}")):
            _check_dcp(bad, bad.parent)
    (bad / ".metadata").write_bytes((good / ".metadata").read_bytes()[:40])
    with pytest.raises(DamagedCheckpointError, match="metadata"):
        _check_dcp(bad, bad.parent)


# ----------------------------------------------------------------------------------------- RNG states

def test_rng_states_round_trip_as_tensors(two_checkpoints, tmp_path):
    engine, _ = two_checkpoints
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # cached gaussians are part of the state
    path = save_checkpoint(engine, tmp_path / "c")
    expect = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    random.seed(30), np.random.seed(40), torch.manual_seed(50)
    load_checkpoint(engine, path)
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    assert got == expect
    raw = torch.load(path / "rng" / "rank-00000.pt", weights_only=True)
    assert all(isinstance(v, (torch.Tensor, int, float, str, type(None), list)) for v in raw.values())


def test_format_1_checkpoints_still_load(two_checkpoints, tmp_path):
    """Format 1 pickled the python / numpy RNG states (tuples, a numpy array): still read, weights-only."""
    engine, root = two_checkpoints
    path = root / "step-2"
    random.seed(7), np.random.seed(8), torch.manual_seed(9)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
               path / "rng" / "rank-00000.pt")
    expect = (random.random(), float(np.random.random()), torch.rand(2).tolist())
    state = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**state, "format_version": 1}))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert load_checkpoint(engine, path) == {"v": 2}
    assert (random.random(), float(np.random.random()), torch.rand(2).tolist()) == expect


# ----------------------------------------------------------------------------------------- damage

def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _state_field(value):
    def damage(f: Path) -> None:
        state = json.loads(f.read_text())
        state["global_step"] = value
        f.write_text(json.dumps(state))
    return damage


def _flip_pickle_byte(f: Path) -> None:
    """A bit flip inside data.pkl (a GLOBAL's name): torch reads it as a refused global; the zip CRC says damage."""
    data = bytearray(f.read_bytes())
    i = data.find(b"_rebuild_tensor_v2")
    assert i > 0
    data[i + 3] ^= 0x20
    f.write_bytes(bytes(data))


DAMAGE = {
    "truncated optimizer": ("optimizer.pt", _truncate),
    "empty optimizer": ("optimizer.pt", lambda f: f.write_bytes(b"")),
    "garbage optimizer": ("optimizer.pt", lambda f: f.write_bytes(os.urandom(4096))),
    "optimizer holds no optimizer": ("optimizer.pt", lambda f: torch.save([1, 2, 3], f)),
    "bit flip in optimizer": ("optimizer.pt", _flip_pickle_byte),
    "missing optimizer": ("optimizer.pt", lambda f: f.unlink()),
    "truncated weights": ("model/model.safetensors", _truncate),
    "corrupt weights header": ("model/model.safetensors",
                               lambda f: f.write_bytes(b"\xff" * 16 + f.read_bytes()[16:])),
    "missing weights": ("model/model.safetensors", lambda f: f.unlink()),
    "truncated scheduler": ("scheduler.pt", _truncate),
    "truncated rng": ("rng/rank-00000.pt", _truncate),
    "rng holds no rng": ("rng/rank-00000.pt", lambda f: torch.save({"python_version": 3}, f)),
    "trainer state not json": ("trainer_state.json", lambda f: f.write_text('{"global_step": 2, "calls')),
    "trainer state not utf-8": ("trainer_state.json", lambda f: f.write_bytes(b"\xff\xfe{}")),
    "trainer state a list": ("trainer_state.json", lambda f: f.write_text("[]")),
    "trainer state bad step": ("trainer_state.json", _state_field("two")),
    "trainer state negative step": ("trainer_state.json", _state_field(-1)),
    "trainer state bad open call": ("trainer_state.json", lambda f: f.write_text(json.dumps(
        {**json.loads(f.read_text()), "open_call": {"call": 2, "done": "x"}}))),
    "trainer state no version": ("trainer_state.json", lambda f: f.write_text('{"global_step": 2}')),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back(two_checkpoints, tiny_dirs, kind):
    engine, root = two_checkpoints
    rel, damage = DAMAGE[kind]
    damaged = root / "step-2" / rel
    damage(damaged)
    before, step = _weights(engine), engine.global_step

    with pytest.raises(DamagedCheckpointError) as err:
        load_checkpoint(engine, root / "step-2")
    named = err.value.path  # the damaged file (the model/ folder when its weights are gone)
    assert named == (damaged.parent if kind == "missing weights" else damaged) and str(named) in str(err.value)
    # Nothing changed: every file is read and checked before the engine is touched.
    assert engine.global_step == step and all(torch.equal(v, before[k]) for k, v in _weights(engine).items())

    with pytest.warns(CheckpointWarning, match=re.escape(str(named))):
        ckpt, extra = resume_latest(engine, root)
    assert ckpt == root / "step-1" and extra == {"v": 1} and engine.global_step == 1

    # Equal to a fresh engine resumed from step-1 directly.
    fresh, _, _ = build_run(tiny_dirs("llama"), perturb=True)
    load_checkpoint(fresh, root / "step-1")
    assert all(torch.equal(v, _weights(engine)[k]) for k, v in _weights(fresh).items())


def test_every_checkpoint_damaged_is_one_clear_error(two_checkpoints):
    engine, root = two_checkpoints
    _truncate(root / "step-2" / "optimizer.pt")
    (root / "step-1" / "trainer_state.json").write_text("{")
    with pytest.warns(CheckpointWarning), pytest.raises(DamagedCheckpointError, match="no usable checkpoint") as err:
        resume_latest(engine, root)
    assert str(root / "step-2" / "optimizer.pt") in str(err.value)
    assert str(root / "step-1" / "trainer_state.json") in str(err.value)


def test_resume_latest_without_checkpoints_and_ordering(two_checkpoints, tmp_path):
    engine, root = two_checkpoints
    assert resume_latest(engine, tmp_path / "none") is None
    assert list_checkpoints(root) == [root / "step-2", root / "step-1"]
    assert latest_checkpoint(root) == root / "step-2"
    ckpt, extra = resume_latest(engine, root)
    assert ckpt == root / "step-2" and extra == {"v": 2} and engine.global_step == 2


def test_newer_format_and_other_mode_are_not_damage(two_checkpoints):
    """Not damage, so no silent fallback: a checkpoint of a newer format / another mode is an error."""
    engine, root = two_checkpoints
    f = root / "step-2" / "trainer_state.json"
    state = json.loads(f.read_text())
    f.write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(ValueError, match="newer mstar_fast") as err:
        resume_latest(engine, root)
    assert not isinstance(err.value, DamagedCheckpointError)
    f.write_text(json.dumps({**state, "mode": "rest_em"}))
    with pytest.raises(ValueError, match="mode 'rest_em'"):
        resume_latest(engine, root)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_states_round_trip(two_checkpoints, tmp_path):
    engine, _ = two_checkpoints
    torch.cuda.manual_seed_all(11)
    path = save_checkpoint(engine, tmp_path / "c")
    expect = torch.rand(4, device="cuda").tolist()
    torch.cuda.manual_seed_all(12)
    load_checkpoint(engine, path)
    assert torch.rand(4, device="cuda").tolist() == expect
    raw = torch.load(path / "rng" / "rank-00000.pt", weights_only=True)
    assert len(raw["cuda"]) == torch.cuda.device_count() and raw["cuda"][0].dtype == torch.uint8


def test_checkpoint_without_trainer_state_is_damage_not_absence(two_checkpoints):
    """A numbered checkpoint directory without trainer_state.json is skipped with a warning; when it is the
    only one, resume fails instead of silently starting the run over."""
    engine, root = two_checkpoints
    (root / "step-2" / "trainer_state.json").unlink()
    with pytest.warns(CheckpointWarning, match=re.escape(str(root / "step-2" / "trainer_state.json"))):
        ckpt, extra = resume_latest(engine, root)
    assert ckpt == root / "step-1" and extra == {"v": 1}
    (root / "step-1" / "trainer_state.json").unlink()
    with pytest.warns(CheckpointWarning), pytest.raises(DamagedCheckpointError, match="no usable checkpoint"):
        resume_latest(engine, root)
