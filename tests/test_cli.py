"""``mstar``: a problem the user can fix ends with one line on stderr and exit status 2, not a traceback
(a CUDA device on a machine without one, a missing model path, a run directory that cannot be written, a
full disk, a stage command on a directory holding a different run)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mstar_fast import cli
from mstar_fast.config import load_config, save_config
from mstar_fast.recipe import run_dir as run_dir_module

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
SMALL = ["data.n_train=8", "data.n_val=4", "data.n_test=4", "log.progress=false", "log.tensorboard=false"]


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(tmp_path, capsys):
    rc = cli.main(["warmup", CONFIG, f"run_dir={tmp_path / 'r'}", "model.device=cuda", *SMALL])
    assert "model.device='cuda'" in one_line_error(capsys, rc)
    rc = cli.main(["eval", str(tmp_path), "synthetic:test:1", "--device", "cuda", "--no-progress"])
    assert "--device='cuda'" in one_line_error(capsys, rc)


def test_missing_model_path(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    rc = cli.main(["warmup", CONFIG, f"run_dir={tmp_path / 'r'}", f"model.policy={missing}", *SMALL])
    assert f"model path {missing} does not exist" in one_line_error(capsys, rc)


def test_run_dir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = cli.main(["warmup", CONFIG, f"run_dir={blocker / 'run'}", *SMALL])
    assert str(blocker) in one_line_error(capsys, rc)


def test_read_only_run_dir_and_full_disk(tmp_path, capsys, monkeypatch):
    def refuse(code: int, text: str):
        def save(cfg, path):
            raise OSError(code, text, str(path))
        return save

    monkeypatch.setattr(run_dir_module, "save_config", refuse(errno.EACCES, "Permission denied"))
    rc = cli.main(["warmup", CONFIG, f"run_dir={tmp_path / 'r'}", *SMALL])
    assert "Permission denied" in one_line_error(capsys, rc)
    monkeypatch.setattr(run_dir_module, "save_config", refuse(errno.ENOSPC, "No space left on device"))
    rc = cli.main(["warmup", CONFIG, f"run_dir={tmp_path / 'r'}", *SMALL])
    err = one_line_error(capsys, rc)
    assert "No space left on device" in err and "config.yaml" in err


@pytest.mark.parametrize("command", ["warmup", "prm-data", "prm-train"])
def test_stage_command_refuses_a_different_run(tmp_path, capsys, command):
    d = tmp_path / "r"
    save_config(load_config(CONFIG, [f"run_dir={d}", "seed=1", *SMALL]), d / "config.yaml")
    (d / "stages.json").write_text("{}")  # the other run got somewhere (a directory with only a config is free)
    before = (d / "config.yaml").read_text()
    rc = cli.main([command, CONFIG, f"run_dir={d}", *SMALL])
    assert "holds a different run" in one_line_error(capsys, rc)
    assert (d / "config.yaml").read_text() == before  # not overwritten


def test_a_second_writer_of_a_run_dir_is_refused_with_the_holders_pid(tmp_path, capsys):
    """``mstar run`` and the stage commands hold the run directory's lock: while another process holds it,
    a command on the same directory fails at once, names that pid, and writes nothing there."""
    run = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mstar_fast.run_lock import lock_run_dir\n"
         f"with lock_run_dir({str(run)!r}, command='test holder'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli.main(["warmup", CONFIG, f"run_dir={run}", *SMALL])
        err = one_line_error(capsys, rc)
        assert f"pid {holder.pid}" in err, err
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_command_that_failed_before_writing_leaves_the_run_dir_reusable(tmp_path, capsys):
    """A config / data error after the directory was claimed leaves only config.yaml there: the corrected
    command takes the directory over instead of calling it a different run."""
    run = tmp_path / "r"
    rc = cli.main(["warmup", CONFIG, f"run_dir={run}", "data.train=/nonexistent/train.jsonl", *SMALL])
    one_line_error(capsys, rc)
    assert {p.name for p in run.iterdir()} <= {".lock", "config.yaml"}
    rc = cli.main(["warmup", CONFIG, f"run_dir={run}", "model.policy=/nonexistent/model", *SMALL])
    assert "model path /nonexistent/model does not exist" in one_line_error(capsys, rc)


def test_a_missing_model_directory_is_named(tmp_path, capsys):
    missing = tmp_path / "nomodel"
    rc = cli.main(["eval", str(missing), "synthetic:test:1", "--no-progress"])
    assert f"model path {missing} does not exist" in one_line_error(capsys, rc)


def test_a_message_that_names_its_command_is_not_prefixed_twice(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc = cli.main(["eval", str(tmp_path), str(empty), "--no-progress"])
    err = capsys.readouterr().err  # the loader's report line, then the error line
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mstar eval: error: no usable prompts") and last.count("mstar eval") == 1, err
