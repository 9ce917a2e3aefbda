"""Checkpoints: kill-and-resume equals the uninterrupted run bit for bit (losses and weights, with dropout
on so the RNG states matter), in every training mode; atomic writes; plain-transformers loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mstar_fast.train import SFTCollator, SFTConfig, SFTEngine, latest_checkpoint, load_checkpoint, save_checkpoint
from tests.train.conftest import load, qa_pairs

REPO = Path(__file__).resolve().parents[2]


def build_run(model_dir, mode: str = "continuous", perturb: bool = False):
    """(engine, data of call 1, data of call 2): a tiny Llama with attention dropout (so training draws
    from the torch RNG), AdamW with warm-up, micro-batching; the global RNG is seeded here."""
    model, proc = load(model_dir, dropout=0.1)
    if perturb:  # a resumed run must not depend on the weights it started from
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
    col = SFTCollator(proc)
    data_a = [col.encode(*pair) for pair in qa_pairs(6, seed=1)]
    data_b = [col.encode(*pair) for pair in qa_pairs(7, seed=2)]
    cfg = SFTConfig(mode=mode, lr=2e-3, warmup_steps=2, global_batch_size=4, micro_batch_size=2,
                    max_grad_norm=0.5, weight_decay=0.01)
    torch.manual_seed(1234)
    return SFTEngine(model, cfg), data_a, data_b


def _weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def test_kill_and_resume_is_bit_exact(tiny_dirs, tmp_path):
    model_dir = tiny_dirs("llama")
    engine, data_a, data_b = build_run(model_dir)
    r1 = engine.train_on(data_a, steps=3)
    r2 = engine.train_on(data_b, steps=4)
    full_losses, full_weights = r2.losses, _weights(engine)
    assert r1.steps == 3 and r2.steps == 4

    ckpt = tmp_path / "ckpt" / "step-000005"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "tests.train._resume_worker", str(model_dir), str(ckpt), "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL, right after the checkpoint
    assert latest_checkpoint(tmp_path / "ckpt") == ckpt

    resumed, _, data_b2 = build_run(model_dir, perturb=True)
    torch.manual_seed(999)  # the checkpoint's RNG states must win over whatever the process has
    extra = load_checkpoint(resumed, ckpt)
    assert extra == {"cursor": 5, "temperature": 0.7}
    assert resumed.global_step == 5
    r = resumed.train_on(data_b2, steps=4)
    assert r.losses == full_losses[2:]  # exact float equality
    assert resumed.global_step == 7
    for k, v in _weights(resumed).items():
        assert torch.equal(v, full_weights[k]), k


@pytest.mark.parametrize("mode", ["iterative_rft", "rest_em"])
def test_resume_mid_call_and_at_call_boundary(tiny_dirs, tmp_path, mode):
    model_dir = tiny_dirs("llama")
    engine, data_a, data_b = build_run(model_dir, mode)
    full = engine.train_on(data_a, steps=3).losses + engine.train_on(data_b, steps=4).losses
    full_weights = _weights(engine)

    # Stop (in-process) after step 1 of call 2, checkpointing there; also checkpoint the call boundary.
    engine, data_a, data_b = build_run(model_dir, mode)
    engine.train_on(data_a, steps=3, on_step=lambda e, i: save_checkpoint(e, tmp_path / f"s{i.global_step}") and None)
    stop = engine.train_on(data_b, steps=4, on_step=lambda e, i: bool(save_checkpoint(e, tmp_path / "mid")))
    assert stop.stopped and stop.steps == 1

    for ckpt, first in ((tmp_path / "mid", 4), (tmp_path / "s3", 3)):
        resumed, data_a2, data_b2 = build_run(model_dir, mode, perturb=True)
        load_checkpoint(resumed, ckpt)
        r = resumed.train_on(data_b2, steps=4)
        assert r.losses == full[first:], ckpt.name
        assert all(torch.equal(v, full_weights[k]) for k, v in _weights(resumed).items())


def test_open_call_rejects_other_data(tiny_dirs, tmp_path):
    engine, data_a, data_b = build_run(tiny_dirs("llama"))
    engine.train_on(data_a, steps=3, on_step=lambda e, i: i.call_step == 1)
    with pytest.raises(ValueError, match="interrupted call"):
        engine.train_on(data_b, steps=2)
    engine.close_call()
    assert engine.train_on(data_b, steps=2).steps == 2


def test_checkpoint_loads_in_plain_transformers(tiny_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    engine, data_a, _ = build_run(tiny_dirs("llama"))
    engine.train_on(data_a, steps=2)
    path = save_checkpoint(engine, tmp_path / "c", processor=None)
    loaded = AutoModelForCausalLM.from_pretrained(path / "model")
    ours = engine.model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ours[k]), k
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["mode"] == "continuous"
    assert sorted(p.name for p in path.iterdir()) == ["model", "optimizer.pt", "rng", "scheduler.pt",
                                                       "trainer_state.json"]


def test_vlm_checkpoint_round_trip(tiny_dirs, tmp_path):
    """LLaVA is saved under its original key names (transformers 5); resume still restores every weight."""
    from transformers import AutoModelForImageTextToText

    model, proc = load(tiny_dirs("llava"))
    engine = SFTEngine(model, SFTConfig(lr=1e-3, freeze_vision=True))
    path = save_checkpoint(engine, tmp_path / "c", processor=proc)
    other, _ = load(tiny_dirs("llava"))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_checkpoint(SFTEngine(other, SFTConfig(lr=1e-3, freeze_vision=True)), path)
    plain = AutoModelForImageTextToText.from_pretrained(path / "model")
    for k, v in model.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
        assert torch.equal(plain.state_dict()[k], v), k
    assert (path / "model" / "preprocessor_config.json").is_file() or (path / "model" / "processor_config.json").is_file()


def test_atomic_write_leaves_no_half_checkpoint(tiny_dirs, tmp_path, monkeypatch):
    engine, data_a, _ = build_run(tiny_dirs("llama"))
    engine.train_on(data_a, steps=1)
    root = tmp_path / "ckpts"
    good = save_checkpoint(engine, root / "step-1", extra={"v": 1})
    engine.train_on(data_a, steps=1)

    real_save = torch.save

    def crash_on_scheduler(obj, f, *a, **k):
        if str(f).endswith("scheduler.pt"):
            raise OSError("disk full (simulated)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crash_on_scheduler)
    for target in (root / "step-2", good):  # a new checkpoint, and overwriting an existing one
        with pytest.raises(OSError, match="simulated"):
            save_checkpoint(engine, target, extra={"v": 2})
    monkeypatch.setattr(torch, "save", real_save)

    assert not (root / "step-2").exists()
    assert latest_checkpoint(root) == good  # the leftover .step-2.tmp is not a checkpoint
    assert any(p.name.startswith(".") for p in root.iterdir())
    assert load_checkpoint(engine, good) == {"v": 1}  # the old one is intact
    assert engine.global_step == 1

    save_checkpoint(engine, root / "step-2", extra={"v": 2})
    assert sorted(p.name for p in root.iterdir()) == ["step-1", "step-2"]  # leftovers cleaned up
    assert latest_checkpoint(root) == root / "step-2"

    # A crash between the two renames of an overwrite: the old checkpoint waits as .step-2.old.
    import mstar_fast.train.checkpoint as C

    real_rename = os.rename

    def crash_on_tmp(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError("power cut (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(C.os, "rename", crash_on_tmp)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(engine, root / "step-2", extra={"v": 3})
    monkeypatch.setattr(C.os, "rename", real_rename)
    assert not (root / "step-2").exists()
    assert latest_checkpoint(root) == root / ".step-2.old"
    assert load_checkpoint(engine, latest_checkpoint(root)) == {"v": 2}
    save_checkpoint(engine, root / "step-3")  # recovers .step-2.old as step-2, drops the .tmp
    assert sorted(p.name for p in root.iterdir()) == ["step-1", "step-2", "step-3"]
    assert json.loads((root / "step-2" / "trainer_state.json").read_text())["extra"] == {"v": 2}


def test_extra_must_be_json(tiny_dirs, tmp_path):
    engine, _, _ = build_run(tiny_dirs("llama"))
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(engine, tmp_path / "c", extra={"t": torch.zeros(1)})
    assert not (tmp_path / "c").exists()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(engine, tmp_path / "nothing")
