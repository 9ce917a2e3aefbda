"""An exclusive lock on a run directory, so that two commands never write the same run at once.

Two ``mstar run --resume DIR`` at the same time would otherwise both finish, with every sample and
metrics row written twice. Every command that writes a run directory holds :func:`lock_run_dir` while it
runs; a second one fails at once with :class:`RunDirLockedError` naming the holder's pid.

The lock is ``fcntl.flock`` on ``RUN_DIR/.lock``: the kernel drops it when the holder's file is closed,
including when the process dies (``kill -9``, OOM killer, power loss of a local disk), so a crashed run
never leaves a stale lock behind. The file itself stays; its content (the holder's pid, host, command and
start time, JSON) is only informative and never decides anything.

Under ``torchrun`` all ranks belong to one run: take the lock on the main process only (every process of
the machine would otherwise contend with its own siblings). Child processes started by ``fork`` inherit
the lock (they may still write), and a process that already holds a directory's lock may take it again
(nested ``with``): it is released when the outermost block exits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"

# Locks this process holds: resolved run dir -> [fd, depth] (nested acquisitions only count up).
_held: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


class RunDirLockedError(RuntimeError):
    """Another process holds the run directory's lock.

    Attributes:
        run_dir: the run directory.
        holder: what the holder wrote into the lock file (``pid``, ``host``, ``command``, ``since``);
            empty when it could not be read.
    """

    def __init__(self, run_dir: Path, holder: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.holder = holder
        pid = holder.get("pid", "unknown")
        where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
        what = f" ({holder['command']})" if holder.get("command") else ""
        since = ""
        if isinstance(holder.get("since"), (int, float)):
            since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['since']))}"
        super().__init__(
            f"{run_dir} is in use by another mstar process: pid {pid}{where}{what}{since}. Wait for it to end or "
            "stop it; two commands writing one run directory would duplicate its samples and metrics")


def read_holder(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What the current (or last) holder of ``run_dir``'s lock wrote into the lock file; {} when none."""
    try:
        data = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def lock_run_dir(run_dir: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) for the ``with`` block.

    Args:
        run_dir: the run directory.
        command: what holds it (e.g. ``"mstar run --resume"``), shown to a second writer; defaults to
            this process's command line.

    Yields:
        The lock file's path.

    Raises:
        RunDirLockedError: another process holds the lock (the message names its pid); does not wait.
        PermissionError / OSError: the run directory or its lock file cannot be created or opened (a
            read-only directory, a full disk), with the path in the message.
    """
    root = Path(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create the run directory {root}: {exc.strerror}") from exc
    key = root.resolve()
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:  # this process holds it already: nest
            entry[1] += 1
            fd = None
        else:
            fd = _acquire(root, command)
            _held[key] = [fd, 1]
    try:
        yield root / LOCK_FILE
    finally:
        with _held_guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                _release(entry[0])


def _acquire(root: Path, command: str | None) -> int:
    path = root / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot open the lock file of {root} ({path}): {exc.strerror}; is the run "
                                   "directory writable?") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = read_holder(root)
            for _ in range(20):  # the holder writes its details just after locking: give it a moment
                if holder:
                    break
                time.sleep(0.01)
                holder = read_holder(root)
            raise RunDirLockedError(root, holder) from None
        raise type(exc)(exc.errno, f"cannot lock {path}: {exc.strerror} (a filesystem without flock support?)") from exc
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command if command is not None else " ".join(sys.argv), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:  # informative only (a full disk): the lock itself is held
        pass
    return fd


def _release(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # no stale holder info for the next reader
    except OSError:
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
