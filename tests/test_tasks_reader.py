"""The one data reader (`tasks.base.iter_records`) behind every file task: line splitting, non-finite
numbers, BOM, encodings, and bad fields named by file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsallis_rl.tasks import DataError, get_task
from tsallis_rl.tasks.base import iter_records

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"]  # all split by str.splitlines


def finqa_row(i: int, question: str = "what is it?", answer: object = 1.5) -> dict:
    return {
        "id": f"F-{i}",
        "question": question,
        "pre_text": ["text ."],
        "post_text": [],
        "table": [],
        "answer": answer,
    }


def hotpot_row(i: int, question: str = "who?", answer: object = "Ann") -> dict:
    ctx = {"title": ["T"], "sentences": [["Ann is here."]]}
    return {"id": f"h{i}", "question": question, "answer": answer, "context": ctx}


def musique_row(i: int, question: str = "who?", answer: object = "Ann") -> dict:
    para = {"idx": 0, "title": "T", "paragraph_text": "Ann is here.", "is_supporting": True}
    return {"id": f"m{i}", "question": question, "answer": answer, "paragraphs": [para]}


def user_row(i: int, question: str = "who?", answer: object = "Ann") -> dict:
    return {"id": f"u{i}", "question": question, "answer": answer}


ROWS = {"finqa": finqa_row, "hotpotqa": hotpot_row, "musique": musique_row, "jsonl": user_row}


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join(lines) + newline, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("task_name", sorted(ROWS))
@pytest.mark.parametrize("layout", ["lines", "array"])
def test_line_separators_inside_json_strings_do_not_split_rows(tmp_path, task_name, layout):
    make = ROWS[task_name]
    rows = [make(i, question=f"who{sep}is it?") for i, sep in enumerate(SEPARATORS)]
    path = tmp_path / f"data.{'jsonl' if layout == 'lines' else 'json'}"
    if layout == "lines":
        write_lines(path, [json.dumps(r, ensure_ascii=False) for r in rows])
    else:
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    task = get_task(task_name)
    for skip_invalid in (False, True):
        exs = task.load(path, skip_invalid=skip_invalid)
        assert [e.question for e in exs] == [r["question"] for r in rows]
        assert task.last_skipped == 0


def test_crlf_line_ends_are_tolerated_and_lines_counted(tmp_path):
    rows = [json.dumps(user_row(i)) for i in range(3)]
    path = write_lines(tmp_path / "crlf.jsonl", [rows[0], "", rows[1], "{bad", rows[2]], "\r\n")
    with pytest.raises(DataError, match=r"crlf.jsonl, line 4: bad JSON"):
        get_task("jsonl").load(path)
    exs = get_task("jsonl").load(path, skip_invalid=True)
    assert [e.meta["line"] for e in exs] == [1, 3, 5]


@pytest.mark.parametrize("task_name", sorted(ROWS))
@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_answers_are_rejected_naming_file_and_line(tmp_path, task_name, constant):
    good = json.dumps(ROWS[task_name](0))
    bad = json.dumps(ROWS[task_name](1, answer=12345.0)).replace("12345.0", constant)
    path = write_lines(tmp_path / "nan.jsonl", [good, bad])
    task = get_task(task_name)
    with pytest.raises(DataError, match=r"nan.jsonl, line 2: bad JSON: .*(finite|infinity)"):
        task.load(path)
    assert len(task.load(path, skip_invalid=True)) == 1 and task.last_skipped == 1
    array = tmp_path / "nan.json"
    array.write_text(f"[\n{good},\n{bad}\n]")
    with pytest.raises(DataError, match=r"nan.json, line 3: bad JSON"):
        task.load(array)


@pytest.mark.parametrize("layout", ["lines", "array"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, layout):
    rows = [user_row(0), user_row(1)]
    text = "\n".join(map(json.dumps, rows)) if layout == "lines" else json.dumps(rows)
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert [e.id for e in get_task("jsonl").load(path)] == ["u0", "u1"]


def test_non_utf8_input_names_the_file_and_line(tmp_path):
    lines = [json.dumps(user_row(i)).encode() for i in range(3)]
    lines[2] = lines[2].replace(b"who?", b"wh\xe9?")  # Latin-1 e-acute
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    for task_name in ("jsonl", "finqa", "hotpotqa", "musique"):
        with pytest.raises(DataError, match=r"latin1.jsonl, line 3: not UTF-8 text") as err:
            get_task(task_name).load(path, skip_invalid=True)
        assert err.value.line == 3


@pytest.mark.parametrize(
    "task_name, change, field",
    [
        ("jsonl", {"answer": ["x"]}, "answer"),
        ("jsonl", {"answer": True}, "answer"),
        ("jsonl", {"question": "   "}, "question"),
        ("jsonl", {"question": 3}, "question"),
        ("finqa", {"answer": [1]}, "answer"),
        ("finqa", {"answer": "maybe"}, "answer"),
        ("finqa", {"question": ""}, "question"),
        ("hotpotqa", {"answer": 5}, "answer"),
        ("hotpotqa", {"answer": ""}, "answer"),
        ("musique", {"answer": {"a": 1}}, "answer"),
        ("musique", {"question": None}, "question"),
    ],
)
def test_bad_fields_are_named_by_file_line_and_field(tmp_path, task_name, change, field):
    rows = [ROWS[task_name](0), {**ROWS[task_name](1), **change}]
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError) as err:
        get_task(task_name).load(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 2, field)
    assert f"rows.jsonl, line 2, field '{field}'" in str(err.value)


def test_iter_records_yields_line_numbers_of_array_items(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n {"a": 1},\n\n {"a": "x\u2028y"}\n]\n', encoding="utf-8")
    assert list(iter_records(path)) == [(2, {"a": 1}), (4, {"a": "x\u2028y"})]
