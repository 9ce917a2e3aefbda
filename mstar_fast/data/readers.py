"""Dataset readers: files on disk -> ``list[Prompt]`` plus a :class:`LoadReport`.

File formats (``format=``): ``jsonl``, ``json`` (a list of rows, ``{"data": [...]}``, or MathVista's
``{pid: row}`` dict), ``parquet`` (one file, or a directory of them), ``datasets`` (a directory written
by ``Dataset.save_to_disk``, or a ``datasets.Dataset`` object passed in), and ``auto`` (by extension /
directory content). Row layouts (``layout=``), detected per row with ``auto``:

* ``mathv360k``: ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": "The answer is B"}]}``; the gold answer is extracted from the gpt turn and
  options written in the question (``Choices: (A) ... (B) ...``) become ``Prompt.choices``.
* ``flat``: ``{"id", "image" | "images", "question", "answer", "choices"}``; other keys go to ``meta``.
* ``mathvista``: testmini fields ``pid, question, image, decoded_image, choices, unit, precision, answer,
  question_type, answer_type, query, metadata``; ``meta["category"]`` is the task abbreviation
  (FQA, GPS, MWP, TQA, VQA), ``meta["precision"]`` feeds :func:`mstar_fast.rewards.check_answer`.

Images are paths relative to ``root`` (default: the data file's directory; absolute paths must also lie
under it) or embedded bytes (Parquet / ``datasets`` ``Image`` columns: kept in memory as lazily decoded
PIL images). Path-based prompts hold absolute path strings. An image must lie under the root both as
written (no ``..`` escape) and once resolved: a symlink inside the root pointing outside it is refused.
The one widening: under a Hugging Face cache snapshot (``<repo>/snapshots/<rev>``) resolved paths may lie
anywhere in ``<repo>`` (the snapshot's files are symlinks into ``<repo>/blobs``). With ``check_images``
every image is fully decoded (:func:`mstar_fast.data.check_image`), so a truncated file or a
decompression bomb is a bad row at load time.

Text: files are read as strict UTF-8 (a byte-order mark before the first row is dropped, in ``.jsonl``
and ``.json`` alike). A JSONL line holding other bytes, a line too deeply nested or holding an integer
longer than Python reads (4300 digits), a ``.json`` row whose strings hold bytes that are not UTF-8, and a
row whose strings hold a lone surrogate (``"\\ud800"``, which would break every later UTF-8 writer) are
bad rows; the rest of the file loads. A ``.json`` file that cannot be parsed at all (one document) is
one ``ValueError`` naming the file.

Bad rows never crash a load: each is recorded as ``BadRow(file, line, kind, reason)`` and skipped
(``strict=True`` raises instead). ``line`` is the 1-based line of a JSONL file and the 1-based row / item
number otherwise. Kinds: ``json`` (unparseable line), ``encoding`` (not UTF-8, lone surrogate),
``not_object``, ``no_question``, ``no_image``, ``bad_image_field``, ``image_escapes_root``,
``missing_image``, ``corrupt_image`` (unreadable, truncated, decompression bomb), ``bad_choices``,
``answer_not_in_choices``, ``no_answer`` (with ``require_answer``), ``bad_conversations``,
``duplicate_id``, ``invalid_row`` (a field of an unexpected type).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from collections.abc import Iterable, Iterator

from mstar_fast.data.images import ImageError, check_image
from mstar_fast.data.records import Prompt
from mstar_fast.rewards.extract import extract_answer

__all__ = ["BadRow", "LoadReport", "load_prompts", "MATHVISTA_TASKS", "parse_choices_from_question"]

log = logging.getLogger(__name__)

Format = Literal["auto", "jsonl", "json", "parquet", "datasets"]
Layout = Literal["auto", "mathv360k", "flat", "mathvista"]

#: MathVista ``metadata.task`` -> the sub-task abbreviation used in papers and per-category tables.
MATHVISTA_TASKS = {
    "figure question answering": "FQA",
    "geometry problem solving": "GPS",
    "math word problem": "MWP",
    "textbook question answering": "TQA",
    "visual question answering": "VQA",
}

_ID_KEYS = ("id", "pid", "question_id", "qid", "uid", "sample_id")
_QUESTION_KEYS = ("question", "problem", "query", "prompt")
_ANSWER_KEYS = ("answer", "gt_answer", "gold", "label")
_CHOICE_KEYS = ("choices", "options")
_IMAGE_KEYS = ("images", "image", "image_path", "img", "decoded_image")
_IMAGE_TOKEN = re.compile(r"<image>\s*|<img>\s*")


@dataclass
class BadRow:
    """A skipped row: where it is and why."""

    file: str
    line: int
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class LoadReport:
    """What a load did: rows seen, loaded, and the bad rows skipped (with file, line, reason)."""

    source: str
    format: str = ""
    n_rows: int = 0
    n_loaded: int = 0
    bad: list[BadRow] = field(default_factory=list)
    layouts: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        return len(self.bad)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(Counter(b.kind for b in self.bad))

    def summary(self) -> str:
        """One line: ``loaded 98 of 100 rows from X (jsonl; 2 skipped: missing_image=1, no_question=1)``."""
        s = f"loaded {self.n_loaded} of {self.n_rows} rows from {self.source} ({self.format}"
        if self.bad:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_by_kind().items()))
            s += f"; {self.n_skipped} skipped: {kinds}"
        return s + ")"

    def __str__(self) -> str:
        return self.summary()


class _Bad(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# ------------------------------------------------------------------------------------------- helpers
def parse_choices_from_question(question: str) -> list[str] | None:
    """Options written inside a question (MathV360K / MathVista ``query`` style), or None.

    Recognises a ``Choices:`` / ``Options:`` block with one ``(A) text`` / ``A. text`` / ``A: text`` per
    line, or inline ``(A) 3 (B) 4``. Letters must run A, B, C, ... without gaps.
    """
    m = (re.search(r"(?:^|\n)\s*(?:choices|options)\s*:?\s*(.*)$", question, flags=re.I | re.S)
         or re.search(r"\b(?:choices|options)\s*:\s*(.*)$", question, flags=re.I | re.S))
    if not m:
        return None
    block = m.group(1).strip()
    opts: list[tuple[str, str]] = []
    for line in block.split("\n"):
        lm = re.match(r"^\s*\(?([A-Z])[\).:]\s*(.+?)\s*$", line)
        if lm:
            opts.append((lm.group(1), lm.group(2)))
        elif opts and line.strip():
            break
    if len(opts) < 2:
        parts = re.split(r"\(([A-Z])\)", block)
        opts = [(parts[i], parts[i + 1].strip().rstrip(",;").strip()) for i in range(1, len(parts) - 1, 2)]
    if len(opts) < 2 or [o[0] for o in opts] != [chr(ord("A") + i) for i in range(len(opts))]:
        return None
    return [o[1] for o in opts]


def _first(row: dict[str, Any], keys: Iterable[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in row and row[k] is not None and not (isinstance(row[k], (str, list)) and len(row[k]) == 0):
            return k, row[k]
    return None, None


def _as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    return s or None


def _check_choices(v: Any) -> list[str] | None:
    if v is None:
        return None
    if isinstance(v, dict):  # {"A": "...", "B": "..."}
        v = [v[k] for k in sorted(v)]
    if hasattr(v, "tolist"):  # numpy array from Parquet
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in v):
        raise _Bad("bad_choices", f"choices must be a list of option texts, got {type(v).__name__}")
    out = [_as_str(c) or "" for c in v]
    return out or None


class _Images:
    """Resolve, check and materialise image fields against a root."""

    def __init__(self, root: Path, check: bool | str) -> None:
        self.root = Path(os.path.normpath(os.path.abspath(root)))
        self.real_root = _trusted_real_root(self.root)
        self.check = check

    def resolve(self, value: Any) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            out: list[Any] = []
            for v in value:
                out.extend(self.resolve(v))
            return out
        if isinstance(value, str):
            return [self._path(value)]
        if isinstance(value, (bytes, bytearray)):
            return [self._bytes(bytes(value))]
        if isinstance(value, dict):  # datasets Image(decode=False) / Parquet struct
            if value.get("bytes"):
                return [self._bytes(value["bytes"])]
            if value.get("path"):
                return [self._path(value["path"])]
            raise _Bad("bad_image_field", "image field is a dict without 'bytes' or 'path'")
        if _is_pil(value):
            if self.check and self.check != "exists":
                try:
                    check_image(value)
                except ImageError as exc:
                    raise _Bad("corrupt_image", f"in-memory image: {exc}") from None
            return [value]
        raise _Bad("bad_image_field", f"image field has unsupported type {type(value).__name__}")

    def _path(self, rel: str) -> str:
        rel = rel.strip()
        if not rel:
            raise _Bad("bad_image_field", "image path is empty")
        if "\x00" in rel:
            raise _Bad("bad_image_field", f"image path {rel!r} contains a NUL byte")
        full = os.path.normpath(os.path.join(self.root, rel))
        if os.path.commonpath([full, str(self.root)]) != str(self.root):
            raise _Bad("image_escapes_root", f"image path {rel!r} escapes the data root {self.root}")
        # A symlink inside the root may point anywhere: compare the resolved path as well.
        real = os.path.realpath(full)
        if os.path.commonpath([real, self.real_root]) != self.real_root:
            raise _Bad("image_escapes_root", f"image path {rel!r} resolves to {real}, outside the data root "
                                             f"{self.real_root} (a symlink pointing out of it)")
        if not os.path.isfile(full):
            raise _Bad("missing_image", f"image file not found: {full}")
        if self.check and self.check != "exists":
            try:
                check_image(full)  # full decode: a truncated file is a bad row now, not at step 900
            except ImageError as exc:
                raise _Bad("corrupt_image", str(exc)) from None
        return full

    def _bytes(self, data: bytes) -> Any:
        from PIL import Image

        try:
            if self.check and self.check != "exists":
                check_image(data)
            return Image.open(io.BytesIO(data))  # lazy: pixels decode on first use (load_image)
        except ImageError as exc:
            raise _Bad("corrupt_image", f"embedded image: {exc}") from None
        except Exception as exc:
            raise _Bad("corrupt_image",
                       f"embedded image is not a readable image ({type(exc).__name__}: {exc})") from None


def _trusted_real_root(root: Path) -> str:
    """The resolved directory that resolved image paths must lie under: the resolved root, widened to
    the repository directory of a Hugging Face cache snapshot (``<repo>/snapshots/<rev>``), whose files
    are symlinks into ``<repo>/blobs``."""
    real = Path(os.path.realpath(root))
    for p in (real, *real.parents):
        if p.parent.name == "snapshots" and p.parent.parent.name.startswith(("datasets--", "models--")):
            return str(p.parent.parent)
    return str(real)


def _check_text(row: dict[str, Any]) -> None:
    """Every string in ``row`` must be encodable as UTF-8: a lone surrogate (``"\\ud800"`` in JSON) loads
    fine but makes every later UTF-8 writer (samples, predictions) fail."""
    stack: list[Any] = [row]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                cp = ord(v[exc.start])
                what = f"U+{cp:04X}: a lone surrogate"
                if 0xDC80 <= cp <= 0xDCFF:  # how surrogateescape carries a byte that is not UTF-8
                    what += f", or the byte 0x{cp - 0xDC00:02x} that is not UTF-8"
                raise _Bad("encoding", f"text {v[:40]!r} is not valid Unicode ({what})") from None
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def _is_pil(v: Any) -> bool:
    mod = type(v).__module__
    return mod.startswith("PIL.") and hasattr(v, "size") and hasattr(v, "mode")


def _detect_layout(row: dict[str, Any]) -> str:
    if "conversations" in row:
        return "mathv360k"
    if "decoded_image" in row or ("pid" in row and ("question_type" in row or "metadata" in row)):
        return "mathvista"
    return "flat"


# ------------------------------------------------------------------------------------------- layouts
def _row_mathv360k(row: dict[str, Any]) -> dict[str, Any]:
    conv = row.get("conversations")
    if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
        raise _Bad("bad_conversations", "'conversations' must be a list of {from, value} turns")
    q = a = None
    for t in conv:
        who = str(t.get("from", t.get("role", ""))).lower()
        val = t.get("value", t.get("content"))
        if q is None and who in ("human", "user"):
            q = val
        elif q is not None and who in ("gpt", "assistant", "model"):
            a = val
            break
    if not isinstance(q, str) or not _IMAGE_TOKEN.sub("", q).strip():
        raise _Bad("no_question", "row has no question (no human turn with text in 'conversations')")
    question = _IMAGE_TOKEN.sub("", q).strip()
    answer = None
    if isinstance(a, str) and a.strip():
        answer = extract_answer(a) or a.strip()
    choices = parse_choices_from_question(question)
    meta = {k: v for k, v in row.items() if k not in ("id", "image", "images", "conversations")}
    meta.update({"raw_answer": a, "choices_in_question": choices is not None})
    _, img = _first(row, ("image", "images"))
    return {"id": row.get("id"), "question": question, "answer": answer, "choices": choices,
            "image": img, "meta": meta}


def _row_flat(row: dict[str, Any]) -> dict[str, Any]:
    qk, q = _first(row, _QUESTION_KEYS)
    if not isinstance(q, str) or not _IMAGE_TOKEN.sub("", q).strip():
        raise _Bad("no_question", "row has no question (none of 'question', 'problem', 'query', 'prompt')")
    _, ans = _first(row, _ANSWER_KEYS)
    _, ch = _first(row, _CHOICE_KEYS)
    ik, img = _first(row, _IMAGE_KEYS)
    idk, rid = _first(row, _ID_KEYS)
    used = {qk, ik, idk, "answer", "gt_answer", "gold", "label", "choices", "options", "meta"}
    meta = dict(row["meta"]) if isinstance(row.get("meta"), dict) else {}
    meta.update({k: v for k, v in row.items() if k not in used})
    return {"id": rid, "question": _IMAGE_TOKEN.sub("", q).strip(), "answer": ans,
            "choices": _check_choices(ch), "image": img, "meta": meta}


def _row_mathvista(row: dict[str, Any]) -> dict[str, Any]:
    q = row.get("question")
    if not isinstance(q, str) or not q.strip():
        raise _Bad("no_question", "row has no question ('question' missing or empty)")
    img = row.get("decoded_image")
    if img is None or (isinstance(img, dict) and not img.get("bytes") and not img.get("path")):
        img = row.get("image")
    md = row.get("metadata") or {}
    if isinstance(md, str):
        try:
            md = json.loads(md)
        except json.JSONDecodeError:
            md = {}
    prec = row.get("precision")
    try:
        prec = None if prec is None or prec != prec else int(float(prec))
    except (TypeError, ValueError):
        prec = None
    task = str(md.get("task", "")).lower()
    meta = {
        "layout": "mathvista",
        "query": row.get("query"),
        "unit": row.get("unit"),
        "precision": prec,
        "answer_type": row.get("answer_type"),
        "question_type": row.get("question_type"),
        "task": md.get("task"),
        "category": MATHVISTA_TASKS.get(task, md.get("task") or md.get("category")),
        "mathvista_category": md.get("category"),
        "skills": list(md.get("skills") or []),
        "source": md.get("source"),
        "context": md.get("context"),
        "grade": md.get("grade"),
    }
    return {"id": row.get("pid", row.get("id")), "question": q.strip(), "answer": row.get("answer"),
            "choices": _check_choices(row.get("choices")), "image": img, "meta": meta}


_LAYOUTS = {"mathv360k": _row_mathv360k, "flat": _row_flat, "mathvista": _row_mathvista}


# ------------------------------------------------------------------------------------------- sources
def _parse_json_line(raw: bytes, lineno: int) -> Any:
    """One JSONL line -> a value, or a ``_Bad`` for this line only."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors): not part of the first row
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Bad("encoding", f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                                "(re-encode the file as UTF-8)")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return _Bad("json", f"invalid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return _Bad("json", "JSON nested too deeply to read")
    except ValueError as exc:  # e.g. an integer longer than Python's int-string limit (4300 digits)
        return _Bad("json", f"JSON value cannot be read ({exc})")


def _rows_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            row = _parse_json_line(raw, lineno)
            if row is not None:
                yield lineno, row


def _rows_json(path: Path) -> Iterator[tuple[int, Any]]:
    # A leading byte-order mark is allowed. Bytes that are not UTF-8 become lone surrogates
    # (surrogateescape), so the row holding them is reported as a bad row by the text check.
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not a JSON file ({exc.msg}); for one row per line use .jsonl") from exc
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read; for one row per line use .jsonl") from None
    except ValueError as exc:  # an integer past Python's int-string limit
        raise ValueError(f"{path}: JSON value cannot be read ({exc}); for one row per line use .jsonl") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if isinstance(data, dict):  # MathVista testmini.json: {pid: row}
        items = []
        for k, v in data.items():
            if isinstance(v, dict) and "pid" not in v and "id" not in v:
                v = {"pid": k, **v}
            items.append(v)
        data = items
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, {{'data': [...]}} or {{id: row}}, "
                         f"got {type(data).__name__}")
    yield from enumerate(data, start=1)


def _rows_parquet(files: list[Path]) -> Iterator[tuple[str, int, Any]]:
    import pyarrow.parquet as pq

    for path in files:
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                n += 1
                yield str(path), n, row


def _rows_datasets(ds: Any) -> Iterator[tuple[int, Any]]:
    from datasets import Image as HFImage

    for name, feat in list(ds.features.items()):
        if isinstance(feat, HFImage) and feat.decode:
            ds = ds.cast_column(name, HFImage(decode=False))  # decode ourselves: a bad image is a bad row
    yield from enumerate(ds, start=1)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if any((path / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        if any(path.rglob("*.parquet")):
            return "parquet"
        raise ValueError(f"{path}: directory holds neither a saved `datasets` dataset nor .parquet files")
    suf = path.suffix.lower()
    if suf in (".jsonl", ".ndjson"):
        return "jsonl"
    if suf == ".json":
        return "json"
    if suf in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: cannot tell the format from the extension {suf!r}; pass format= "
                     "('jsonl', 'json', 'parquet' or 'datasets')")


def _load_hf_dir(path: Path, split: str | None) -> Any:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        if split is None:
            if len(names) != 1:
                raise ValueError(f"{path}: a DatasetDict with splits {names}; pass split=")
            split = names[0]
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r}; splits are {names}")
        ds = ds[split]
    return ds


# ------------------------------------------------------------------------------------------- entry point
def load_prompts(
    source: str | os.PathLike | Any,
    root: str | os.PathLike | None = None,
    format: Format = "auto",
    layout: Layout = "auto",
    *,
    split: str | None = None,
    check_images: bool | Literal["exists"] = True,
    require_image: bool = True,
    require_answer: bool = False,
    limit: int | None = None,
    strict: bool = False,
    max_logged: int = 20,
) -> tuple[list[Prompt], LoadReport]:
    """Read a dataset into prompts, skipping (and reporting) bad rows.

    Args:
        source: a file, a directory (saved ``datasets`` dataset or Parquet files), a ``datasets.Dataset``,
            or a list of row dicts.
        root: directory that relative image paths are resolved against; default: the file's directory
            (the directory itself for a directory source, the current directory for in-memory rows).
        format: ``auto``, ``jsonl``, ``json``, ``parquet`` or ``datasets``.
        layout: ``auto`` (per row), ``mathv360k``, ``flat`` or ``mathvista``.
        split: the split of a saved ``DatasetDict``, or a substring that Parquet file names must contain.
        check_images: True decodes every image fully (catches corrupt and truncated files and
            decompression bombs; JPEGs decode at 1/8 scale);
            ``"exists"`` only checks that image files exist; False trusts the paths.
        require_image: skip rows without any image (``no_image``).
        require_answer: skip rows without a gold answer (``no_answer``).
        limit: stop after this many loaded prompts.
        strict: raise ``ValueError`` on the first bad row instead of skipping it.
        max_logged: bad rows logged one by one before only the summary is logged.

    Returns:
        ``(prompts, report)``; ``report.summary()`` says how many rows were loaded and skipped, and
        ``report.bad`` lists each skipped row as (file, line, kind, reason).

    Raises:
        ValueError: unknown format/layout, unreadable file as a whole, or (``strict``) a bad row.
        FileNotFoundError: ``source`` does not exist.
    """
    if layout not in ("auto", *_LAYOUTS):
        raise ValueError(f"load_prompts: unknown layout {layout!r}; use auto, mathv360k, flat or mathvista")
    if format not in ("auto", "jsonl", "json", "parquet", "datasets"):
        raise ValueError(f"load_prompts: unknown format {format!r}; use auto, jsonl, json, parquet or datasets")

    rows: Iterator[tuple[str, int, Any]]
    if isinstance(source, (list, tuple)):
        name, fmt = "<rows>", "rows"
        rows = (("<rows>", i, r) for i, r in enumerate(source, start=1))
        base = Path(root) if root is not None else Path.cwd()
    elif not isinstance(source, (str, os.PathLike)) and hasattr(source, "features"):
        name, fmt = f"<{type(source).__name__}>", "datasets"
        rows = ((name, i, r) for i, r in _rows_datasets(source))
        base = Path(root) if root is not None else Path.cwd()
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"load_prompts: {path} does not exist")
        fmt = _detect_format(path) if format == "auto" else format
        name = str(path)
        base = Path(root) if root is not None else (path if path.is_dir() else path.parent)
        if fmt == "jsonl":
            rows = ((name, i, r) for i, r in _rows_jsonl(path))
        elif fmt == "json":
            rows = ((name, i, r) for i, r in _rows_json(path))
        elif fmt == "parquet":
            files = sorted(p for p in path.rglob("*.parquet")) if path.is_dir() else [path]
            if split is not None and path.is_dir():
                files = [p for p in files if split in p.name]
            if not files:
                where = f" for split {split!r}" if split else ""
                raise ValueError(f"load_prompts: no .parquet files under {path}{where}")
            rows = _rows_parquet(files)
        else:
            ds = _load_hf_dir(path, split)
            rows = ((name, i, r) for i, r in _rows_datasets(ds))

    report = LoadReport(source=name, format=fmt)
    images = _Images(base, check_images)
    prompts: list[Prompt] = []
    seen: dict[str, tuple[str, int]] = {}

    def bad(file: str, line: int, kind: str, reason: str) -> None:
        b = BadRow(file, line, kind, reason)
        if strict:
            raise ValueError(f"load_prompts: {b}")
        report.bad.append(b)
        if len(report.bad) <= max_logged:
            log.warning("skipping %s", b)
        elif len(report.bad) == max_logged + 1:
            log.warning("more bad rows skipped; see the load summary")

    for file, line, row in rows:
        if limit is not None and len(prompts) >= limit:
            break
        report.n_rows += 1
        try:
            if isinstance(row, _Bad):
                raise row
            if not isinstance(row, dict):
                raise _Bad("not_object", f"row is not a JSON object (got {type(row).__name__})")
            _check_text(row)
            lay = _detect_layout(row) if layout == "auto" else layout
            fields = _LAYOUTS[lay](row)
            imgs = images.resolve(fields["image"])
            if require_image and not imgs:
                raise _Bad("no_image", "row has no image")
            answer = _as_str(fields["answer"])
            choices = fields["choices"]
            if choices and answer and re.fullmatch(r"[A-Z]", answer) and ord(answer) - 65 >= len(choices) \
                    and answer not in choices:
                raise _Bad("answer_not_in_choices", f"answer {answer!r} is not one of the {len(choices)} choices")
            if require_answer and answer is None:
                raise _Bad("no_answer", "row has no answer (require_answer=True)")
            pid = _as_str(fields["id"]) or f"{Path(file).stem}-{line}"
            if pid in seen:
                f0, l0 = seen[pid]
                raise _Bad("duplicate_id", f"duplicate id {pid!r} (first at {f0}:{l0})")
            seen[pid] = (file, line)
            meta = fields["meta"]
            meta.setdefault("layout", lay)
            meta["source_file"], meta["source_line"] = file, line
            report.layouts[lay] += 1
            prompts.append(Prompt(id=pid, question=fields["question"], images=imgs, answer=answer,
                                  choices=choices, meta=meta))
        except _Bad as b:
            bad(file, line, b.kind, b.reason)
        except Exception as exc:  # a malformed field of a type no rule expected: still only this row
            bad(file, line, "invalid_row", f"row could not be read ({type(exc).__name__}: {exc})")
    report.n_loaded = len(prompts)
    (log.warning if report.bad else log.info)("%s", report.summary())
    return prompts, report
