"""Append-only JSONL: flushed lines, a torn last line after kill -9 is ignored and repaired."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mstar_fast.data import JsonlWriter, Sample, done_keys, read_jsonl, read_records, repair_jsonl


def test_write_flushes_each_line(tmp_path):
    path = tmp_path / "sub" / "s.jsonl"
    w = JsonlWriter(path)
    w.write({"prompt_id": "p0", "index": 0, "text": "a"})
    assert read_jsonl(path) == [{"prompt_id": "p0", "index": 0, "text": "a"}]  # visible before close
    w.write(Sample(prompt_id="p0", index=1, text="x\n\n# Answer\n\n1"))
    w.close()
    samples = read_records(path, Sample)
    assert samples[1].text.endswith("1") and samples[1].index == 1
    with pytest.raises(ValueError, match="write after close"):
        w.write({})


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "s.jsonl"
    with JsonlWriter(path) as w:
        w.write_many({"prompt_id": f"p{i}", "index": 0} for i in range(3))
    with open(path, "ab") as f:
        f.write(b'{"prompt_id": "p3", "ind')  # killed in the middle of a write
    assert [d["prompt_id"] for d in read_jsonl(path)] == ["p0", "p1", "p2"]
    assert done_keys(path) == {("p0", 0), ("p1", 0), ("p2", 0)}
    assert done_keys(path, "prompt_id") == {"p0", "p1", "p2"}
    with JsonlWriter(path) as w:  # reopening truncates the torn tail before appending
        w.write({"prompt_id": "p3", "index": 0})
    assert [json.loads(x)["prompt_id"] for x in path.read_text().splitlines()] == ["p0", "p1", "p2", "p3"]
    assert repair_jsonl(path) == 0 and repair_jsonl(tmp_path / "absent.jsonl") == 0


def test_a_complete_record_without_newline_counts_as_torn(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}]
    assert repair_jsonl(path) == len('{"a": 2}')
    assert path.read_text() == '{"a": 1}\n'


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2: not a JSON line"):
        read_jsonl(path)
    assert read_jsonl(path, errors="skip") == [{"a": 1}, {"a": 3}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_unserialisable_record(tmp_path):
    with JsonlWriter(tmp_path / "s.jsonl") as w, pytest.raises(ValueError, match="not JSON-serialisable"):
        w.write({"x": object()})


def test_kill_dash_nine_leaves_only_whole_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    code = (
        "import sys\n"
        "from mstar_fast.data.jsonl import JsonlWriter\n"
        "w = JsonlWriter(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    w.write({'prompt_id': f'p{i}', 'index': 0, 'text': 'x' * 5000})\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.time() + 10
    while (not path.exists() or path.stat().st_size < 200_000) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    records = read_jsonl(path)
    assert len(records) > 10
    assert [r["prompt_id"] for r in records] == [f"p{i}" for i in range(len(records))]
    # A restarted stage continues after what is already written.
    done = done_keys(path)
    with JsonlWriter(path) as w:
        for i in range(len(records) + 5):
            if (f"p{i}", 0) not in done:
                w.write({"prompt_id": f"p{i}", "index": 0})
    assert [r["prompt_id"] for r in read_jsonl(path)] == [f"p{i}" for i in range(len(records) + 5)]
