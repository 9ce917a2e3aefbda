"""Run-directory lock: a second writer (another process) fails at once naming the holder's pid; the lock
goes with its holder, on a normal exit, an exception and a kill -9 alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mstar_fast.run_lock import LOCK_FILE, RunDirLockedError, lock_run_dir, read_holder

REPO = Path(__file__).resolve().parents[1]

# Takes the lock, says so on stdout, then holds it until killed (or for `hold` seconds).
HOLDER = textwrap.dedent("""
    import sys, time
    from mstar_fast.run_lock import lock_run_dir
    with lock_run_dir(sys.argv[1], command="holder-test"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    print("released", flush=True)
""")

# Tries the lock once: exit 0 when it got it, 3 (and the error on stderr) when it is held elsewhere.
CONTENDER = textwrap.dedent("""
    import sys
    from mstar_fast.run_lock import RunDirLockedError, lock_run_dir
    try:
        with lock_run_dir(sys.argv[1]):
            print("got it", flush=True)
    except RunDirLockedError as exc:
        print(exc, file=sys.stderr)
        sys.exit(3)
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _start_holder(run_dir: Path, hold: float = 120.0) -> subprocess.Popen:
    proc = _python(HOLDER, str(run_dir), str(hold))
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def _contend(run_dir: Path) -> subprocess.CompletedProcess:
    proc = _python(CONTENDER, str(run_dir))
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_two_processes_contend_and_kill_9_releases(tmp_path):
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir)
    try:
        second = _contend(run_dir)
        assert second.returncode == 3, second.stderr
        assert f"pid {holder.pid}" in second.stderr and "holder-test" in second.stderr
        assert "in use by another mstar process" in second.stderr
        # This process contends too (the same error object, with the holder's details).
        with pytest.raises(RunDirLockedError, match=f"pid {holder.pid}") as err:
            with lock_run_dir(run_dir):
                pass
        assert err.value.holder["pid"] == holder.pid and err.value.run_dir == run_dir
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup of any kind runs in the holder
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    # The kernel dropped the lock with the process; the stale holder info does not matter.
    assert read_holder(run_dir)["pid"] == holder.pid
    third = _contend(run_dir)
    assert third.returncode == 0 and third.stdout.strip() == "got it", third.stderr
    with lock_run_dir(run_dir, command="me"):
        assert read_holder(run_dir)["pid"] == os.getpid() and read_holder(run_dir)["command"] == "me"


def test_released_on_normal_exit_and_on_exception(tmp_path):
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir, hold=0.5)
    assert holder.stdout.readline().strip() == "released"
    holder.wait(timeout=30)
    with lock_run_dir(run_dir) as lock:
        assert lock == run_dir / LOCK_FILE and lock.is_file()
        assert _contend(run_dir).returncode == 3
    assert read_holder(run_dir) == {}  # cleared on release
    assert _contend(run_dir).returncode == 0

    with pytest.raises(KeyError):
        with lock_run_dir(run_dir):
            raise KeyError("boom")
    assert _contend(run_dir).returncode == 0


def test_nested_in_one_process_and_independent_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with lock_run_dir(a):
        with lock_run_dir(a):  # the same process again (e.g. a command wrapping the recipe loop)
            assert _contend(a).returncode == 3
        assert _contend(a).returncode == 3  # still held by the outer block
        with lock_run_dir(b):
            assert _contend(b).returncode == 3
        assert _contend(b).returncode == 0
    assert _contend(a).returncode == 0


def test_holder_info_is_json(tmp_path):
    with lock_run_dir(tmp_path / "run", command="mstar run --resume x"):
        info = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "mstar run --resume x"
        assert abs(info["since"] - time.time()) < 60 and info["host"]


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError, match=f"cannot create the run directory {blocker / 'run'}"):
        with lock_run_dir(blocker / "run"):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_run_dir_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="is the run directory writable"):
            with lock_run_dir(ro):
                pass
    finally:
        ro.chmod(0o700)


def test_filesystem_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    import mstar_fast.run_lock as L

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(L.fcntl, "flock", no_locks)
    with pytest.raises(OSError, match="cannot lock .*flock support"):
        with lock_run_dir(tmp_path / "run"):
            pass
    monkeypatch.undo()
    with lock_run_dir(tmp_path / "run"):  # the failed attempt left nothing held
        assert _contend(tmp_path / "run").returncode == 3
