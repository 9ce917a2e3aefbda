"""Loader tests on small fixture files: every accepted layout and format, one bad row of each kind."""

import io
import json
import logging

import pytest
from PIL import Image

from mstar_fast.data import Prompt, load_prompts, parse_choices_from_question
from mstar_fast.rewards import check_answer


def _png(color=(200, 30, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png())
    (tmp_path / "images" / "b.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "outside.png").write_bytes(_png())
    return tmp_path


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


def test_flat_jsonl_one_bad_row_of_each_kind(root, caplog):
    data = root / "data"
    data.mkdir()
    rows = [
        {"id": "ok1", "image": "images/a.png", "question": "How many?", "answer": 3, "category": "FQA"},
        {"id": "ok2", "images": ["images/a.png", "images/b.png"], "question": "Which?", "answer": "B",
         "choices": ["red", "blue"], "meta": {"source": "x"}},
        {"id": "noq", "image": "images/a.png", "answer": "1"},                        # line 3
        {"id": "esc", "image": "../../outside.png", "question": "q", "answer": "1"},  # line 4
        {"id": "miss", "image": "images/nope.png", "question": "q", "answer": "1"},   # line 5
        {"id": "bad", "image": "images/corrupt.png", "question": "q", "answer": "1"}, # line 6
        '{"id": "torn", "image": ',                                                   # line 7
        "[1, 2, 3]",                                                                  # line 8
        {"id": "ch", "image": "images/a.png", "question": "q", "choices": "red or blue"},  # line 9
        {"id": "letter", "image": "images/a.png", "question": "q", "answer": "E", "choices": ["1", "2"]},
        {"id": "ok1", "image": "images/a.png", "question": "again", "answer": "1"},   # line 11
        {"id": "noimg", "question": "q", "answer": "1"},                              # line 12
        {"id": "abs", "image": str(root.parent / "elsewhere.png"), "question": "q"},  # line 13
    ]
    f = root / "data" / "flat.jsonl"
    _write_jsonl(f, rows)
    with caplog.at_level(logging.WARNING):
        prompts, rep = load_prompts(f, root=root / "data" / "..")
    assert [p.id for p in prompts] == ["ok1", "ok2"]
    p1, p2 = prompts
    assert p1.answer == "3" and p1.meta["category"] == "FQA" and p1.images == [str(root / "images" / "a.png")]
    assert p2.choices == ["red", "blue"] and p2.meta["source"] == "x" and len(p2.images) == 2
    # one bad row of each kind; two escapes: "../" and an absolute path outside the root
    assert [(b.line, b.kind) for b in rep.bad] == [
        (3, "no_question"), (4, "image_escapes_root"), (5, "missing_image"), (6, "corrupt_image"),
        (7, "json"), (8, "not_object"), (9, "bad_choices"), (10, "answer_not_in_choices"),
        (11, "duplicate_id"), (12, "no_image"), (13, "image_escapes_root")]
    assert all(b.file == str(f) for b in rep.bad)
    assert rep.n_rows == 13 and rep.n_loaded == 2 and rep.n_skipped == 11
    s = rep.summary()
    assert "loaded 2 of 13 rows" in s and "11 skipped" in s and "missing_image=1" in s
    assert "flat.jsonl:5: image file not found" in caplog.text


def test_default_root_is_the_file_directory(root):
    _write_jsonl(root / "d.jsonl", [{"id": "1", "image": "images/a.png", "question": "q"},
                                    {"id": "2", "image": "../outside.png", "question": "q"}])
    prompts, rep = load_prompts(root / "d.jsonl")
    assert [p.id for p in prompts] == ["1"] and rep.bad[0].kind == "image_escapes_root"


def test_strict_raises_with_file_and_line(root):
    _write_jsonl(root / "d.jsonl", [{"id": "1", "image": "images/a.png"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:1: row has no question"):
        load_prompts(root / "d.jsonl", strict=True)


def test_check_images_modes_and_require_answer(root):
    _write_jsonl(root / "d.jsonl", [{"id": "1", "image": "images/corrupt.png", "question": "q"},
                                    {"id": "2", "image": "images/a.png", "question": "q"}])
    prompts, _ = load_prompts(root / "d.jsonl", check_images="exists")
    assert len(prompts) == 2  # only existence checked
    prompts, rep = load_prompts(root / "d.jsonl", require_answer=True)
    assert prompts == [] and {b.kind for b in rep.bad} == {"corrupt_image", "no_answer"}
    prompts, _ = load_prompts(root / "d.jsonl", limit=1, check_images=False)
    assert len(prompts) == 1


def test_mathv360k_json(root):
    rows = [
        {"id": "m1", "image": "images/a.png", "conversations": [
            {"from": "human", "value": "<image>\nHint: answer with the option letter.\nQuestion: Which is red?\n"
                                       "Choices:\n(A) the circle\n(B) the square"},
            {"from": "gpt", "value": "The answer is B"}]},
        {"id": "m2", "image": "images/b.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the sum?"}, {"from": "gpt", "value": "12"}]},
        {"id": "m3", "image": "images/a.png", "conversations": "not a list"},
        {"id": "m4", "image": "images/a.png", "conversations": [{"from": "gpt", "value": "12"}]},
    ]
    (root / "mv.json").write_text(json.dumps(rows))
    prompts, rep = load_prompts(root / "mv.json")
    assert [p.id for p in prompts] == ["m1", "m2"]
    m1, m2 = prompts
    assert m1.answer == "B" and m1.choices == ["the circle", "the square"]
    assert "<image>" not in m1.question and m1.meta["choices_in_question"]
    assert m1.question_with_choices() == m1.question  # options are already written in it
    assert check_answer("the square", m1)
    assert m2.answer == "12" and m2.choices is None and m2.meta["layout"] == "mathv360k"
    assert [(b.line, b.kind) for b in rep.bad] == [(3, "bad_conversations"), (4, "no_question")]
    assert rep.layouts["mathv360k"] == 2


def test_mathvista_testmini_json(root):
    base = {"unit": None, "query": "Hint: ...", "metadata": {
        "category": "math-targeted-vqa", "task": "figure question answering", "skills": ["statistical reasoning"],
        "source": "ChartQA", "context": "bar chart", "grade": "daily life"}}
    data = {
        "1": dict(base, question="What is the value?", image="images/a.png", choices=None, precision=1.0,
                  answer="1.5", question_type="free_form", answer_type="float"),
        "2": dict(base, question="Which is bigger?", image="images/b.png", choices=["4", "5"], precision=None,
                  answer="5", question_type="multi_choice", answer_type="text",
                  metadata=dict(base["metadata"], task="geometry problem solving")),
        "3": dict(base, question="", image="images/a.png", choices=None, precision=None, answer="1",
                  question_type="free_form", answer_type="integer"),
        "4": dict(base, question="q", image="images/a.png", choices=None, precision=None, answer="1",
                  question_type="free_form", answer_type="integer", metadata=5),
        "5": dict(base, question="q", image="images/a.png", choices=7, precision=None, answer="1",
                  question_type="multi_choice", answer_type="text"),
    }
    (root / "testmini.json").write_text(json.dumps(data))
    prompts, rep = load_prompts(root / "testmini.json")
    assert [p.id for p in prompts] == ["1", "2"]
    p1, p2 = prompts
    assert p1.meta["precision"] == 1 and p1.meta["category"] == "FQA" and p1.meta["answer_type"] == "float"
    assert check_answer("1.53", p1) and not check_answer("1.56", p1)
    assert p2.meta["category"] == "GPS" and p2.choices == ["4", "5"] and check_answer("B", p2)
    assert "Choices:\n(A) 4\n(B) 5" in p2.question_with_choices()
    assert [(b.line, b.kind) for b in rep.bad] == [(3, "no_question"), (4, "invalid_row"), (5, "bad_choices")]


def test_parquet_with_embedded_images(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": ["p1", "p2", "p3", "p4"],
        "question": ["q1", "q2", "q3", None],
        "answer": ["1", "2", "3", "4"],
        "image": [{"bytes": _png(), "path": None}, {"bytes": b"garbage", "path": None},
                  {"bytes": None, "path": "images/b.png"}, {"bytes": _png(), "path": None}],
    })
    pq.write_table(table, root / "d.parquet")
    prompts, rep = load_prompts(root / "d.parquet")
    assert [p.id for p in prompts] == ["p1", "p3"]
    assert prompts[0].images[0].size == (8, 8)  # an in-memory PIL image
    assert prompts[1].images == [str(root / "images" / "b.png")]
    assert [(b.line, b.kind) for b in rep.bad] == [(2, "corrupt_image"), (4, "no_question")]
    assert rep.format == "parquet"
    # a directory of Parquet shards, filtered by split
    (root / "shards").mkdir()
    pq.write_table(table.slice(0, 1), root / "shards" / "test-00000.parquet")
    pq.write_table(table.slice(2, 1), root / "shards" / "train-00000.parquet")
    prompts, _ = load_prompts(root / "shards", root=root, split="train")
    assert [p.id for p in prompts] == ["p3"]


def test_datasets_saved_and_in_memory(root):
    import datasets

    feats = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                               "answer": datasets.Value("string"), "image": datasets.Image()})
    ds = datasets.Dataset.from_dict({
        "id": ["d1", "d2"], "question": ["How many?", "Broken?"], "answer": ["2", "0"],
        "image": [{"bytes": _png(), "path": None}, {"bytes": b"not an image", "path": None}],
    }, features=feats)
    ds.save_to_disk(str(root / "saved"))
    for src in (root / "saved", ds):
        prompts, rep = load_prompts(src)
        assert [p.id for p in prompts] == ["d1"] and rep.bad[0].kind == "corrupt_image" and rep.bad[0].line == 2
        assert rep.format == "datasets"
    dd = datasets.DatasetDict({"train": ds, "test": ds})
    dd.save_to_disk(str(root / "dd"))
    with pytest.raises(ValueError, match="pass split="):
        load_prompts(root / "dd")
    prompts, _ = load_prompts(root / "dd", split="test")
    assert [p.id for p in prompts] == ["d1"]


def test_in_memory_rows_and_errors(root):
    prompts, rep = load_prompts([{"id": "r", "image": "images/a.png", "question": "q"}], root=root)
    assert prompts[0].id == "r" and rep.format == "rows"
    with pytest.raises(FileNotFoundError):
        load_prompts(root / "nope.jsonl")
    (root / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_prompts(root / "x.csv")
    (root / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_prompts(root / "broken.json")
    with pytest.raises(ValueError, match="unknown layout"):
        load_prompts(root / "x.csv", layout="csv")  # type: ignore[arg-type]


def test_parse_choices_from_question():
    assert parse_choices_from_question("Q?\nChoices:\n(A) 3\n(B) 4\n(C) 5") == ["3", "4", "5"]
    assert parse_choices_from_question("Q? Choices: (A) red (B) blue") == ["red", "blue"]
    assert parse_choices_from_question("Q?\nOptions:\nA. yes\nB. no") == ["yes", "no"]
    assert parse_choices_from_question("How many choices: 3?") is None
    assert parse_choices_from_question("Q?\nChoices:\n(A) 3\n(C) 5") is None  # letters must not skip


def test_prompt_roundtrip_keeps_pil_out_of_json(root):
    im = Image.open(io.BytesIO(_png()))
    d = Prompt(id="1", question="q", images=[im, "a.png"]).to_dict()
    assert d["images"] == ["<PngImageFile>", "a.png"]
    json.dumps(d)
