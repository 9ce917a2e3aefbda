"""Append-only JSON-lines files that survive ``kill -9``.

Every stage writes one line per record (docs/recipe.md, "What is ours beyond the paper") and a restarted stage skips what
is already written. The rule that makes this safe: **only newline-terminated lines exist**.

* :class:`JsonlWriter` writes each record as one ``write`` of ``json + "\\n"`` and flushes it (``fsync``
  optional). On open it truncates a torn tail (bytes after the last newline, left by a kill in the middle
  of a write), so the next record never glues onto half a line.
* :func:`read_jsonl` ignores a last line without its newline (the torn tail) and raises ``ValueError``
  naming file and line for a corrupt line anywhere else (``errors="skip"`` logs and skips instead): not
  JSON, not UTF-8, nested too deeply, or an integer longer than Python reads. A UTF-8 byte-order mark
  before the first line is accepted.
* A record holding a lone surrogate (no UTF-8 form) is written with ASCII escapes, so it round-trips.
* :func:`done_keys` gives the keys already written, for the skip-on-restart check.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal, TypeVar
from collections.abc import Callable, Iterable, Iterator

__all__ = ["JsonlWriter", "read_jsonl", "iter_jsonl", "done_keys", "read_records", "repair_jsonl"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


def repair_jsonl(path: str | os.PathLike) -> int:
    """Truncate ``path`` after its last newline; returns the number of bytes removed (0 when the file
    is whole or absent)."""
    p = Path(path)
    if not p.exists():
        return 0
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb+") as f:
        # Scan backwards in blocks for the last b"\n".
        pos, block = size, 1 << 16
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        if keep == size:
            return 0
        f.truncate(keep)
    log.warning("%s: removed a torn last line (%d bytes) left by an interrupted write", p, size - keep)
    return size - keep


class JsonlWriter:
    """Append records to a JSONL file, one flushed line each.

    Args:
        path: the file; parent directories are created.
        fsync: also ``os.fsync`` after every line (survives a power cut, not only a killed process).

    Records are dicts or objects with ``to_dict()`` (``Prompt``, ``Sample``). Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._fsync = fsync
        self._f = open(self.path, "a", encoding="utf-8")
        self.n_written = 0

    def write(self, record: Any) -> None:
        """Append one record as one line and flush it."""
        if self._f.closed:
            raise ValueError(f"JsonlWriter({self.path}): write after close")
        obj = _to_jsonable(record)
        try:
            line = json.dumps(obj, ensure_ascii=False, allow_nan=True)
            data = line + "\n"
            try:
                data.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (from a "\ud800" escape somewhere upstream) has no UTF-8 form; the
                # ASCII-escaped line keeps it exactly and reads back to the same string.
                data = json.dumps(obj, ensure_ascii=True, allow_nan=True) + "\n"
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(
                f"JsonlWriter({self.path}): record {self.n_written} is not JSON-serialisable: {exc}") from exc
        self._f.write(data)
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())
        self.n_written += 1

    def write_many(self, records: Iterable[Any]) -> int:
        """Append several records (each flushed); returns how many."""
        n = 0
        for r in records:
            self.write(r)
            n += 1
        return n

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_jsonl(path: str | os.PathLike, errors: Literal["raise", "skip"] = "raise") -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file written by :class:`JsonlWriter` (or any JSONL file).

    A last line without a trailing newline is a torn write and is ignored. Blank lines are ignored.
    A line that is not valid JSON elsewhere raises ``ValueError("<file>:<line>: ...")``, or is logged and
    skipped with ``errors="skip"``. A missing file yields nothing.
    """
    p = Path(path)
    if not p.exists():
        return
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: ignoring a torn last line (no newline; interrupted write)", p, lineno)
                return
            if not raw.strip():
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                record = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
                # RecursionError: nesting too deep; ValueError: an integer past the 4300-digit limit
                msg = f"{p}:{lineno}: not a JSON line ({type(exc).__name__}: {exc})"
                if errors == "raise":
                    raise ValueError(msg) from exc
                log.warning("%s; skipped", msg)
                continue
            yield record


def read_jsonl(path: str | os.PathLike, errors: Literal["raise", "skip"] = "raise") -> list[dict[str, Any]]:
    """All records of a JSONL file as a list (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, errors=errors))


def read_records(path: str | os.PathLike, cls: type[T] | Callable[[dict[str, Any]], T],
                 errors: Literal["raise", "skip"] = "raise") -> list[T]:
    """Records of a JSONL file converted with ``cls.from_dict`` (e.g. ``Sample``) or a callable."""
    conv = getattr(cls, "from_dict", cls)
    return [conv(d) for d in iter_jsonl(path, errors=errors)]


def done_keys(path: str | os.PathLike, key: str | tuple[str, ...] = ("prompt_id", "index")) -> set[Any]:
    """Keys of the records already in ``path`` (torn tail excluded): a field name gives values, a
    tuple of names gives tuples. A restarted stage skips work whose key is in this set."""
    out: set[Any] = set()
    for d in iter_jsonl(path, errors="skip"):
        if isinstance(key, str):
            if key in d:
                out.add(d[key])
        elif all(k in d for k in key):
            out.add(tuple(d[k] for k in key))
    return out
