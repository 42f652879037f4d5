"""FinQA: both schemas, the safe program interpreter (official semantics), prompts and matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsallis_rl.tasks import DataError, get_task
from tsallis_rl.tasks.finqa import (
    canonical_answer,
    execute_program,
    execution_match,
    tokenize_program,
)

FIX = Path(__file__).parent / "fixtures" / "tasks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "finqa"
FILES = {"dev_200.json": 200, "train_100.json": 100, "test_500_simplified.json": 500}

TABLE = [
    ["", "2020", "2019"],
    ["revenue", "$ 1,200", "$ 1,000"],
    ["costs", "300 ( 2 )", "250"],
    ["notes", "n/a", "5"],
]


@pytest.mark.parametrize("name, count", sorted(FILES.items()))
def test_shared_finqa_files_load_completely_and_gold_programs_reproduce_exe_ans(name, count):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    task = get_task("finqa")
    exs = task.load(path)
    assert len(exs) == count and task.last_skipped == 0
    reproduced = 0
    for ex in exs:
        result = execute_program(ex.meta["program"], ex.meta["table"])
        reproduced += execution_match(result, ex.meta["exe_ans"])
        # the target round-trips: it is exact, substring and numerically right
        y = task.target(ex)
        assert task.exact_match(y, ex) and task.substring_match(f"so {y}.", ex)
        assert task.official_metrics(y, ex) == {"exe_acc": 1.0, "num_match": 1.0}
        assert task.official_metrics(ex.meta["program"], ex)["exe_acc"] == 1.0
    assert reproduced == count  # measured: 200/200, 100/100, 500/500


def test_both_schemas_load_from_fixtures():
    task = get_task("finqa")
    off = task.load(FIX / "finqa_official.json")
    simp = task.load(FIX / "finqa_simplified.json")
    assert [e.id for e in off] == ["ACME/2020/page_1.pdf-1", "ACME/2020/page_1.pdf-2"]
    assert [e.answer for e in off] == ["0.2", "yes"]
    assert off[0].meta["human_answer"] == "20%"
    assert [e.answer for e in simp] == ["275", "1024"]
    assert "revenue | $ 1,200 | $ 1,000" in off[0].context
    assert off[0].context.startswith("acme had a good year .")
    assert off[0].context.endswith("amounts in millions .")
    for ex in off + simp:
        assert execution_match(
            execute_program(ex.meta["program"], ex.meta["table"]), ex.meta["exe_ans"]
        )


@pytest.mark.parametrize(
    "program, expected",
    [
        ("add(1, 2)", 3.0),
        ("subtract(1,200, 1000)", 200.0),  # commas inside a number are dropped
        ("divide(5%, const_100)", 0.0005),
        ("multiply(const_m1, 3)", -3.0),
        ("subtract(1200, 1000), divide(#0, 1000)", 0.2),
        ("exp(const_2, const_10)", 1024.0),
        ("divide(1, 3)", 0.33333),  # rounded to 5 decimals
        ("greater(300, 250)", "yes"),
        ("greater(#0, 250)", None),  # forward reference -> invalid
        ("table_max(revenue, none)", 1200.0),
        ("table_min(costs, none)", 250.0),  # "300 ( 2 )" is cut at "("
        ("table_sum(revenue, none), divide(#0, const_2)", 1100.0),
        ("table_average(costs, none)", 275.0),
    ],
)
def test_execute_program_official_semantics(program, expected):
    if expected is None:
        with pytest.raises(ValueError):
            execute_program(program, TABLE)
    else:
        assert execute_program(program, TABLE) == expected


@pytest.mark.parametrize(
    "program",
    [
        "",
        "   ",
        "add(1)",
        "add(1, 2, 3)",
        "add(1, 2",
        "print(1, 2)",
        "__import__('os').system('echo hi')",
        "add(__import__('os'), 1)",
        "eval(1, 2)",
        "add(1, 2); subtract(3, 4)",
        "add(x, 2)",
        "add(#5, 1)",
        "add(#-1, 1)",
        "divide(1, 0)",
        "exp(10, 400)",  # overflow
        "exp(const_m1, 0.5)",  # complex
        "multiply(1e308, 10)",  # inf
        "add(nan, 1)",
        "greater(1, 2), add(#0, 1)",  # arithmetic on yes/no
        "table_max(nonexistent, none)",
        "table_max(notes, none)",  # a non-numeric cell
        "table_max(#0, none)",
        "add(1, 2), " * 101 + "add(1, 2)",  # too many steps
        "add(" + "1" * 20000 + ", 2)",  # too long
    ],
)
def test_execute_program_rejects_malformed_and_hostile_programs(program):
    with pytest.raises(ValueError):
        execute_program(program, TABLE)


def test_execute_program_rejects_non_strings():
    with pytest.raises(ValueError):
        execute_program(["add(1, 2)"], TABLE)  # type: ignore[arg-type]


def test_tokenize_program_matches_the_official_tokenizer():
    assert tokenize_program("subtract(5829, 5735), divide(#0, 5735)") == [
        "subtract(", "5829", "5735", ")", "divide(", "#0", "5735", ")",
    ]  # fmt: skip


def test_canonical_answer_rounding():
    assert canonical_answer(94.0) == "94"
    assert canonical_answer(0.561971) == "0.56197"
    assert canonical_answer(-0.0000001) == "0"
    assert canonical_answer(1e-05) == "0.00001"
    assert canonical_answer(12345678.0) == "12345678"
    assert canonical_answer("Yes") == "yes"
    assert canonical_answer(0.561971, 2) == "0.56"


def test_matching_and_decimals_option():
    task = get_task("finqa")
    ex = task.load(FIX / "finqa_official.json")[0]
    assert task.exact_match("0.20", ex) and task.exact_match(" 0.2 ", ex)
    assert not task.exact_match("20%", ex)
    assert task.official_metrics("20%", ex) == {"exe_acc": 0.0, "num_match": 1.0}
    assert task.official_metrics("subtract(1200, 1000), divide(#0, 1000)", ex)["exe_acc"] == 1.0
    assert task.official_metrics("divide(1, 0)", ex)["exe_acc"] == 0.0
    assert task.substring_match("the change is 0.2 overall", ex)
    assert not task.substring_match("0.25", ex)
    two = get_task("finqa", decimals=2)
    assert two.load(FIX / "finqa_simplified.json")[0].answer == "275"
    with pytest.raises(ValueError):
        get_task("finqa", decimals=-1)


def test_cold_prompt_has_no_instruction_text_and_warm_has():
    task = get_task("finqa")
    for ex in task.load(FIX / "finqa_official.json"):
        cold, warm = task.build_prompt(ex, "cold"), task.build_prompt(ex, "warm")
        assert cold == f"{ex.context}\n{ex.question}"
        for text in task.instruction_texts():
            assert text not in cold and text in warm
        assert "answer" not in cold.lower().replace(ex.question.lower(), "")
        assert ex.context in warm and ex.question in warm
    with pytest.raises(ValueError):
        task.build_prompt(ex, "lukewarm")


def _write(tmp_path, text, name="bad.json"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_malformed_rows_name_file_line_and_field(tmp_path):
    task = get_task("finqa")
    rows = (
        '[\n{"id": "a", "question": "q", "answer": 1.0, "pre_text": ["x"]},\n'
        '{"id": "b", "question": "q", "answer": "maybe", "pre_text": ["x"]},\n'
        '{"id": "c", "question": "q", "answer": 2.0, "pre_text": [], "table": []},\n'
        '{"id": "d", "qa": {"question": "q"}, "pre_text": ["x"]},\n'
        '{"id": "e", "question": "q", "answer": 3.0, "pre_text": ["x"], "table": [[1, 2]]}\n]'
    )
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        task.load(path)
    assert err.value.line == 3 and err.value.field == "answer" and str(path) in str(err.value)
    exs = task.load(path, skip_invalid=True)
    assert [e.id for e in exs] == ["a"] and task.last_skipped == 4
    with pytest.raises(DataError) as err:
        task.load(
            _write(
                tmp_path,
                '[{"id": "a", "question": "q", "answer": 1.0, "pre_text": ["x"]}\n, {oops}]',
            )
        )
    assert err.value.line == 2 and "bad JSON" in str(err.value)
    dup = rows.replace('"id": "b"', '"id": "a"').replace('"answer": "maybe"', '"answer": "no"')
    with pytest.raises(DataError) as err:
        task.load(_write(tmp_path, dup, "dup.json"))
    assert err.value.line == 3 and err.value.field == "id" and "duplicate" in str(err.value)


# --------------------------------------------------------------------------------------------
# finqa?context=gold: only the gold facts (qa.gold_inds)


@pytest.mark.parametrize("name", ["dev_200.json", "train_100.json"])
def test_finqa_gold_context_is_exactly_the_gold_facts_in_filing_order(name):
    import json

    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    rows = {r["id"]: r for r in json.loads(path.read_text())}
    task = get_task("finqa?context=gold")
    full = {e.id: e for e in get_task("finqa").load(path)}
    exs = task.load(path)
    assert len(exs) == FILES[name] and "rest of the filing" in task.context_note
    for ex in exs:
        inds = rows[ex.id]["qa"]["gold_inds"]
        lines = ex.context.split("\n")
        assert sorted(lines) == sorted(" ".join(v.split()) for v in inds.values())
        n_pre = len(rows[ex.id]["pre_text"])
        rank = {" ".join(v.split()): k for k, v in inds.items()}
        order = [rank[line] for line in lines]
        parts = [
            0 if k.startswith("text") and int(k[5:]) < n_pre else 1 if "table" in k else 2
            for k in order
        ]
        assert parts == sorted(parts)  # pre_text facts, then table rows, then post_text facts
        # the table stays for execution accuracy: the gold program still scores
        assert task.official_metrics(ex.meta["program"], ex)["exe_acc"] == 1.0
        assert ex.answer == full[ex.id].answer
    # (a linearised table row can be longer than the row itself, but the file shrinks a lot)
    assert sum(len(e.context) for e in exs) < 0.4 * sum(len(e.context) for e in full.values())


def test_finqa_gold_needs_gold_inds_and_names_the_field():
    simplified = SHARED / "test_500_simplified.json"
    if simplified.exists():  # the simplified layout has no gold facts
        with pytest.raises(DataError, match="line 2, field 'qa.gold_inds': missing"):
            get_task("finqa?context=gold").load(simplified)
    with pytest.raises(DataError, match="field 'qa.gold_inds': missing"):
        get_task("finqa?context=gold").load(FIX / "finqa_official.json")


@pytest.mark.parametrize(
    "gold_inds, why",
    [
        ({}, "empty"),
        ({"row_1": "x"}, "expected text_<i> / table_<i>"),
        ({"text_0": 3}, "expected text_<i> / table_<i>"),
        ({"text_0": "  "}, "no non-empty gold fact"),
        (["text_0"], "expected object"),
    ],
)
def test_a_malformed_gold_inds_is_a_data_error(tmp_path, gold_inds, why):
    import json

    row = json.loads((FIX / "finqa_official.json").read_text())[0]
    row["qa"]["gold_inds"] = gold_inds
    path = tmp_path / "f.json"
    path.write_text(json.dumps([row]))
    assert len(get_task("finqa").load(path)) == 1
    with pytest.raises(DataError, match=f"field 'qa.gold_inds': {why}"):
        get_task("finqa?context=gold").load(path)


def test_finqa_gold_orders_pre_text_then_table_then_post_text(tmp_path):
    import json

    row = json.loads((FIX / "finqa_official.json").read_text())[0]
    n_pre = len(row["pre_text"])
    row["qa"]["gold_inds"] = {
        f"text_{n_pre}": "post fact",
        "table_1": "the table fact",
        "text_0": "pre  fact",
    }
    path = tmp_path / "f.json"
    path.write_text(json.dumps([row]))
    (ex,) = get_task("finqa?context=gold&decimals=2").load(path)
    assert ex.context == "pre fact\nthe table fact\npost fact"
