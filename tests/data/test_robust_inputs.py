"""Data files as found in the wild: byte-order marks, pathological lines, lone surrogates, other
encodings, images that are symlinks out of the data root, truncated images. Every bad row is skipped
and reported as ``file:line: reason``; every other row still loads."""

import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from mstar_fast.data import JsonlWriter, load_image, load_prompts, read_jsonl


def _png(color=(200, 30, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _row(i, **kw):
    return json.dumps({"id": f"r{i}", "image": "a.png", "question": f"q{i}", "answer": str(i), **kw})


@pytest.fixture
def root(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    return tmp_path


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_jsonl_bom_keeps_first_row(root):
    f = root / "bom.jsonl"
    _write(f, [b"\xef\xbb\xbf" + _row(1).encode(), _row(2).encode()])
    prompts, rep = load_prompts(f)
    assert [p.id for p in prompts] == ["r1", "r2"] and rep.bad == []


def test_json_bom_accepted(root):
    f = root / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps([json.loads(_row(1)), json.loads(_row(2))]).encode())
    prompts, rep = load_prompts(f)
    assert [p.id for p in prompts] == ["r1", "r2"] and rep.bad == []


def test_pathological_lines_skip_only_that_row(root, caplog):
    f = root / "bad.jsonl"
    deep = b'{"id": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    big_int = b'{"id": "big", "image": "a.png", "question": "q", "answer": ' + b"9" * 5000 + b"}"
    _write(f, [_row(1).encode(), deep, _row(3).encode(), big_int, _row(5).encode()])
    with caplog.at_level(logging.WARNING):
        prompts, rep = load_prompts(f)
    assert [p.id for p in prompts] == ["r1", "r3", "r5"]
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "json"), (4, "json")]
    assert "nested too deeply" in rep.bad[0].reason and "digits" in rep.bad[1].reason
    assert str(rep.bad[0]).startswith(f"{f}:2: ") and f"{f}:4: " in caplog.text


def test_lone_surrogate_is_a_bad_row_and_writers_survive(root, caplog):
    f = root / "sur.jsonl"
    _write(f, [_row(1).encode(), b'{"id": "bad\\ud800", "image": "a.png", "question": "q"}',
               b'{"id": "r3", "image": "a.png", "question": "q \\udc80 x"}', _row(4).encode()])
    with caplog.at_level(logging.WARNING):
        prompts, rep = load_prompts(f)
    assert [p.id for p in prompts] == ["r1", "r4"]
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "encoding"), (3, "encoding")]
    assert "lone surrogate" in rep.bad[0].reason and f"{f}:2: " in caplog.text
    # A writer given such a string anyway keeps working and round-trips it.
    with JsonlWriter(root / "out.jsonl") as w:
        w.write({"id": "x\ud800y"})
        w.write({"id": "ok"})
    assert read_jsonl(root / "out.jsonl") == [{"id": "x\ud800y"}, {"id": "ok"}]


def test_non_utf8_bytes_reported_not_replaced(root):
    f = root / "latin.jsonl"
    latin = '{"id": "caf\xe9", "image": "a.png", "question": "q"}'.encode("latin-1")
    _write(f, [_row(1).encode(), latin, _row(3).encode()])
    prompts, rep = load_prompts(f)
    assert [p.id for p in prompts] == ["r1", "r3"]
    assert not any("\ufffd" in p.id for p in prompts)
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "encoding")]
    assert "byte 0xe9" in rep.bad[0].reason
    # a .json file: the row holding the byte is the bad row (item 2), the others load
    j = root / "latin.json"
    j.write_bytes(b'[\n' + _row(1).encode() + b',\n' + latin + b',\n' + _row(3).encode() + b"]")
    prompts, rep = load_prompts(j)
    assert [p.id for p in prompts] == ["r1", "r3"]
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "encoding")] and "byte 0xe9" in rep.bad[0].reason


def test_pathological_json_file_is_one_clear_error(root):
    j = root / "deep.json"
    j.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json: JSON nested too deeply"):
        load_prompts(j)


def test_symlink_out_of_root_refused(tmp_path):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    (data / "img" / "in.png").write_bytes(_png())
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(_png())
    os.symlink(secret, data / "img" / "link_out.png")
    os.symlink(data / "img" / "in.png", data / "img" / "link_in.png")  # inside -> inside: fine
    os.symlink(tmp_path / "outside", data / "dir_out")                  # a directory link out
    rows = [{"id": "1", "image": "img/in.png", "question": "q"},
            {"id": "2", "image": "img/link_out.png", "question": "q"},
            {"id": "3", "image": "img/link_in.png", "question": "q"},
            {"id": "4", "image": "dir_out/secret.png", "question": "q"}]
    (data / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for check in (True, "exists", False):
        prompts, rep = load_prompts(data / "d.jsonl", check_images=check)
        assert [p.id for p in prompts] == ["1", "3"]
        assert [(b.line, b.kind) for b in rep.bad] == [(2, "image_escapes_root"), (4, "image_escapes_root")]
        assert "symlink" in rep.bad[0].reason and str(secret) in rep.bad[0].reason


def test_hf_cache_snapshot_symlinks_into_blobs_are_fine(tmp_path):
    repo = tmp_path / "hub" / "datasets--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(_png())
    snap = repo / "snapshots" / "0123abcd"
    (snap / "images").mkdir(parents=True)
    os.symlink(repo / "blobs" / "abc123", snap / "images" / "a.png")
    (snap / "d.jsonl").write_text(json.dumps({"id": "1", "image": "images/a.png", "question": "q"}) + "\n")
    prompts, rep = load_prompts(snap / "d.jsonl")
    assert [p.id for p in prompts] == ["1"] and rep.bad == []


def test_truncated_and_bomb_images_are_bad_rows_at_load(root):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for fmt, name in (("PNG", "cut.png"), ("JPEG", "cut.jpg")):
        buf = io.BytesIO()
        noisy.save(buf, format=fmt)
        (root / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG", optimize=True)
    (root / "bomb.png").write_bytes(buf.getvalue())
    rows = [{"id": "1", "image": "a.png", "question": "q"},
            {"id": "2", "image": "cut.png", "question": "q"},
            {"id": "3", "image": "cut.jpg", "question": "q"},
            {"id": "4", "image": "bomb.png", "question": "q"},
            {"id": "5", "image": "a.png", "question": "q"}]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts, rep = load_prompts(root / "d.jsonl")
    assert [p.id for p in prompts] == ["1", "5"]
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "corrupt_image"), (3, "corrupt_image"), (4, "corrupt_image")]
    assert "truncated" in rep.bad[0].reason and "truncated" in rep.bad[1].reason
    assert "decompression bomb" in rep.bad[2].reason
    assert load_image(prompts[0].images[0]).mode == "RGB"


def test_iter_jsonl_bom_and_pathological_lines(tmp_path):
    f = tmp_path / "r.jsonl"
    _write(f, [b'\xef\xbb\xbf{"a": 1}', b"[" * 100_000 + b"]" * 100_000, b'{"n": ' + b"1" * 5000 + b"}",
               b'{"s": "caf\xe9"}', b'{"a": 5}'])
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a JSON line \(RecursionError"):
        read_jsonl(f)
    assert read_jsonl(f, errors="skip") == [{"a": 1}, {"a": 5}]


def test_in_memory_truncated_pil_image_is_a_bad_row(root):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    cut = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # header fine, data cut
    whole = Image.open(io.BytesIO(buf.getvalue()))
    prompts, rep = load_prompts([{"id": "1", "image": cut, "question": "q"},
                                 {"id": "2", "image": whole, "question": "q"}], root=root)
    assert [p.id for p in prompts] == ["2"]
    assert [(b.line, b.kind) for b in rep.bad] == [(1, "corrupt_image")] and "truncated" in rep.bad[0].reason
