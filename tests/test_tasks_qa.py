"""HotpotQA, MuSiQue and user JSONL tasks: loading (both layouts), prompts, matching, splits, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsallis_rl.tasks import DataError, Example, get_task, list_tasks
from tsallis_rl.tasks.base import find_split_files, iter_records, seeded_split

FIX = Path(__file__).parent / "fixtures" / "tasks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_FILES = [
    ("hotpotqa", "hotpotqa/train_300.jsonl", 300),
    ("hotpotqa", "hotpotqa/dev_300.jsonl", 300),
    ("hotpotqa", "hotpotqa/test_500.jsonl", 500),
    ("musique", "musique/dev_200_with_paragraphs.jsonl", 200),
    ("musique", "musique/dev_2417_labels_only.json", 2417),
]


def test_registry_knows_every_task():
    names = list_tasks()
    for name in ("finqa", "hotpotqa", "musique", "jsonl", "rg:"):
        assert name in names
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


@pytest.mark.parametrize("task_name, rel, count", SHARED_FILES)
def test_shared_files_load_completely_and_targets_round_trip(task_name, rel, count):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    task = get_task(task_name)
    exs = task.load(path)
    assert len(exs) == count and task.last_skipped == 0
    assert len({e.id for e in exs}) == count
    for ex in exs:
        y = task.target(ex)
        assert y and task.exact_match(y, ex) and task.substring_match(f"It is {y}.", ex)
        assert task.official_metrics(y, ex) == {"em": 1.0, "f1": 1.0}
    if task_name == "hotpotqa":
        # 10 paragraphs, except a few official rows that have fewer
        assert all(2 <= len(e.meta["titles"]) <= 10 for e in exs)
        assert sum(len(e.meta["titles"]) == 10 for e in exs) >= 0.98 * count
        assert all(e.context.count("\n") == len(e.meta["titles"]) - 1 for e in exs)
        assert all(e.meta["level"] == "hard" for e in exs)
    elif "paragraphs" in rel:
        assert all(e.context.count("\n") == 19 for e in exs)
        assert sum(e.meta["hops"] == 2 for e in exs) == 145  # SOURCES.md
    else:
        assert all(e.context == "" and not e.meta["has_paragraphs"] for e in exs)


def test_shared_hotpotqa_directory_gives_the_three_splits():
    if not (SHARED / "hotpotqa").exists():
        pytest.skip("no shared hotpotqa")
    splits = get_task("hotpotqa").splits(SHARED / "hotpotqa")
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 300, "test": 500}


def test_hotpotqa_both_layouts():
    task = get_task("hotpotqa")
    off = task.load(FIX / "hotpotqa_official.json")
    hf = task.load(FIX / "hotpotqa_hf.jsonl")
    assert [e.id for e in off] == ["h1", "h2"] and hf[0].id == "h3"
    assert off[0].context == (
        "Alpha River: The Alpha River flows through Gammaland. It is long.\n"
        "Gammaland: Gammaland is a country. Its capital is Betatown."
    )
    assert off[0].meta["supporting_facts"] == [("Alpha River", 0), ("Gammaland", 1)]
    assert hf[0].meta["supporting_facts"] == [("Zeta", 0)]
    assert hf[0].context == "Zeta: Zeta is a novel by Eta Theta.\nIota: Iota is a poem."


def test_hotpotqa_matching_uses_official_rules():
    task = get_task("hotpotqa")
    ex = Example(id="x", question="q", answer="The Beatles")
    assert task.exact_match("beatles!", ex)
    assert task.substring_match("I think it was the Beatles, yes.", ex)
    assert not task.substring_match("Beatlesque", ex)
    assert task.official_metrics("Beatles band", ex) == {"em": 0.0, "f1": pytest.approx(2 / 3)}
    yes = Example(id="y", question="q", answer="yes")
    assert task.official_metrics("yes it is", yes) == {"em": 0.0, "f1": 0.0}


def test_musique_aliases_and_unanswerable():
    task = get_task("musique")
    exs = task.load(FIX / "musique.jsonl")
    assert [e.id for e in exs] == ["2hop__1_2"] and task.last_unanswerable == 1
    ex = exs[0]
    assert ex.aliases == ["Mu"] and ex.meta["supporting_idx"] == [0, 1] and ex.meta["hops"] == 2
    assert task.exact_match("mu", ex) and task.substring_match("born in Mu.", ex)
    assert task.official_metrics("Mu County, USA", ex) == {"em": 0.0, "f1": pytest.approx(0.8)}
    full = get_task("musique", include_unanswerable=True)
    both = full.load(FIX / "musique.jsonl")
    assert len(both) == 2 and full.official_metrics("Xi", both[1]) == {}


def test_user_jsonl():
    task = get_task("jsonl")
    exs = task.load(FIX / "user.jsonl")
    assert [e.id for e in exs] == ["user-1", "q2", "user-4"]
    assert [e.answer for e in exs] == ["5", "Omicron", "8"]
    assert exs[1].context == "The hero of the story is Omicron." and exs[1].aliases == [
        "Omicron Pi"
    ]
    assert exs[2].meta == {"source": "hand-written", "line": 4}
    assert task.exact_match(" 5 ", exs[0]) and not task.exact_match("5.0", exs[0])
    assert task.substring_match("it is omicron pi", exs[1])
    assert task.official_metrics("Omicron Pi", exs[1]) == {"em": 1.0, "f1": 1.0}


ALL_FIXTURES = [
    ("finqa", "finqa_official.json"),
    ("finqa", "finqa_simplified.json"),
    ("hotpotqa", "hotpotqa_official.json"),
    ("hotpotqa", "hotpotqa_hf.jsonl"),
    ("musique", "musique.jsonl"),
    ("jsonl", "user.jsonl"),
]
FORMAT_CUES = ("answer format", "question:", "context:", "paragraphs:", "report:", "reply with")


@pytest.mark.parametrize("task_name, fixture", ALL_FIXTURES)
def test_cold_prompts_have_no_instructions_warm_do_and_targets_round_trip(task_name, fixture):
    task = get_task(task_name)
    for ex in task.load(FIX / fixture):
        cold, warm = task.build_prompt(ex, "cold"), task.build_prompt(ex, "warm")
        assert cold.endswith(ex.question) and (ex.context in cold)
        assert cold == (f"{ex.context}\n{ex.question}" if ex.context else ex.question)
        for text in task.instruction_texts():
            assert text not in cold
        assert not any(cue in cold.lower() for cue in FORMAT_CUES)
        assert any(text in warm for text in task.instruction_texts())
        assert "answer format" in warm.lower() and ex.question in warm and ex.context in warm
        y = task.target(ex)
        assert task.exact_match(y, ex) and task.substring_match(y, ex)
        assert task.normalize(task.normalize(y)) == task.normalize(y)


@pytest.mark.parametrize(
    "line, field",
    [
        ('{"question": "q"}', "answer"),
        ('{"question": "q", "answer": ["a"]}', "answer"),
        ('{"question": "q", "answer": true}', "answer"),
        ('{"question": "", "answer": "a"}', "question"),
        ('{"question": "q", "answer": "  "}', "answer"),
        ('{"question": "q", "answer": "a", "context": ""}', "context"),
        ('{"question": "q", "answer": "a", "aliases": [1]}', "aliases"),
        ('["not", "an", "object"]', None),
    ],
)
def test_jsonl_bad_rows_name_the_field(tmp_path, line, field):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "ok", "answer": "1"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        get_task("jsonl").load(path)
    assert err.value.line == 2 and err.value.field == field and str(path) in str(err.value)


def test_skip_invalid_skips_and_counts():
    task = get_task("jsonl")
    with pytest.raises(DataError) as err:
        task.load(FIX / "bad_rows.jsonl")
    assert (err.value.line, err.value.field) == (2, "answer")
    exs = task.load(FIX / "bad_rows.jsonl", skip_invalid=True)
    assert [e.answer for e in exs] == ["1", "4"] and task.last_skipped == 3
    with pytest.raises(DataError, match="bad JSON") as err:
        task.load(FIX / "bad_json.jsonl")
    assert err.value.line == 2
    assert len(task.load(FIX / "bad_json.jsonl", skip_invalid=True)) == 2
    assert task.last_skipped == 1


@pytest.mark.parametrize(
    "task_name, rec, field",
    [
        ("hotpotqa", {"id": "a", "question": "q", "answer": "x", "context": []}, "context"),
        ("hotpotqa", {"id": "a", "question": "q", "context": [["t", ["s"]]]}, "answer"),
        ("hotpotqa", {"question": "q", "answer": "x", "context": [["t", ["s"]]]}, "id"),
        (
            "hotpotqa",
            {"id": "a", "question": "q", "answer": "x", "context": [["t", "s"]]},
            "context",
        ),
        ("musique", {"id": "a", "question": "q", "answer": "x", "paragraphs": []}, "paragraphs"),
        ("musique", {"id": "a", "question": "q", "answer": 3}, "answer"),
        (
            "musique",
            {"id": "a", "question": "q", "answer": "x", "answer_aliases": "y"},
            "answer_aliases",
        ),
        ("finqa", {"id": "a", "question": "q", "answer": 1.0}, "pre_text/table/post_text"),
        ("finqa", {"id": "a", "qa": {"question": "q"}, "pre_text": ["x"]}, "qa.exe_ans"),
        ("finqa", {"id": "a", "question": "q", "answer": 1.0, "pre_text": "x"}, "pre_text"),
    ],
)
def test_benchmark_bad_rows_name_the_field(tmp_path, task_name, rec, field):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError) as err:
        get_task(task_name).load(path)
    assert err.value.line == 1 and err.value.field == field


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_task("jsonl").load(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        get_task("jsonl").load(empty)
    assert list(iter_records(_write(tmp_path, "[]"))) == []


def _write(tmp_path, text, name="x.json"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_json_array_items_report_their_starting_line(tmp_path):
    path = _write(tmp_path, '[\n  {"a": 1},\n\n  {"b": [\n 2]}\n]\n')
    assert list(iter_records(path)) == [(2, {"a": 1}), (4, {"b": [2]})]


def test_seeded_split_is_deterministic_disjoint_and_sized():
    exs = [Example(id=str(i), question="q", answer=str(i)) for i in range(100)]
    a = seeded_split(exs, 0.1, 20, seed=7)
    b = seeded_split(exs, 0.1, 20, seed=7)
    c = seeded_split(exs, 0.1, 20, seed=8)
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 10, "test": 20}
    assert a == b and a != c
    ids = [e.id for part in a.values() for e in part]
    assert sorted(ids, key=int) == [str(i) for i in range(100)]
    assert [e.id for e in a["train"]] == sorted((e.id for e in a["train"]), key=int)  # file order
    with pytest.raises(ValueError):
        seeded_split(exs, 50, 50, seed=0)
    with pytest.raises(ValueError):
        seeded_split(exs, -1, 5, seed=0)


def test_splits_from_one_file_and_from_a_directory(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(30)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:20]))
    (tmp_path / "test_final.jsonl").write_text("\n".join(json.dumps(r) for r in rows[20:]))
    (tmp_path / "notes.txt").write_text("ignored")
    task = get_task("jsonl")
    one = task.splits(tmp_path / "train.jsonl", val_size=0.25, test_size=5, seed=1)
    assert {k: len(v) for k, v in one.items()} == {"train": 10, "val": 5, "test": 5}
    assert sorted(find_split_files(tmp_path)) == ["test", "train"]
    both = task.splits(tmp_path, val_size=4, test_size=0.5, seed=1)
    # val carved from train; the own test file capped at half of it
    assert {k: len(v) for k, v in both.items()} == {"train": 16, "val": 4, "test": 5}
    (tmp_path / "dev.jsonl").write_text(json.dumps(rows[0]))
    three = task.splits(tmp_path, val_size=4, seed=1)
    assert {k: len(v) for k, v in three.items()} == {"train": 20, "val": 1, "test": 10}
    (tmp_path / "validation.json").write_text("[]")
    with pytest.raises(DataError, match="two val files: .*; name the file to use"):
        task.splits(tmp_path)
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    (only_test / "test.jsonl").write_text(json.dumps(rows[0]))
    with pytest.raises(DataError, match="no train file"):
        task.splits(only_test)


# --------------------------------------------------------------------------------------------
# Short-context variants: hotpotqa?context=gold|supporting, musique?context=supporting

HOTPOT_SHARED = [rel for name, rel, _ in SHARED_FILES if name == "hotpotqa"]


def _rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def _shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("rel", HOTPOT_SHARED)
def test_hotpotqa_gold_context_is_exactly_the_supporting_paragraphs(rel):
    path = _shared(rel)
    full = {e.id: e for e in get_task("hotpotqa").load(path)}
    task = get_task("hotpotqa?context=gold")
    exs = task.load(path)
    assert len(exs) == len(full)
    for ex in exs:
        titles = {title for title, _ in ex.meta["supporting_facts"]}
        lines = ex.context.split("\n")
        assert len(lines) == len(titles) == ex.meta["context_paragraphs"]
        whole = zip(full[ex.id].meta["titles"], full[ex.id].context.split("\n"))
        # the kept lines are the full context's lines of those titles, whole and in order
        assert lines == [line for title, line in whole if title in titles]
        assert (ex.question, ex.answer) == (full[ex.id].question, full[ex.id].answer)
    assert "distractor paragraphs are dropped" in task.context_note
    assert get_task("hotpotqa").context_note == ""


@pytest.mark.parametrize("rel", HOTPOT_SHARED)
def test_hotpotqa_supporting_context_is_exactly_the_supporting_sentences(rel):
    path = _shared(rel)
    rows = _rows(path)
    for ex in get_task("hotpotqa?context=supporting").load(path):
        row = rows[ex.id]
        sentences = dict(zip(row["context"]["title"], row["context"]["sentences"]))
        wanted: dict[str, set[int]] = {}
        for title, i in zip(row["supporting_facts"]["title"], row["supporting_facts"]["sent_id"]):
            wanted.setdefault(title, set()).add(i)
        expected = [
            f"{t}: " + " ".join(" ".join(sentences[t][i].split()) for i in sorted(wanted[t]))
            for t in row["context"]["title"]
            if t in wanted
        ]
        assert ex.context.split("\n") == expected


def _hotpot_row(**changes) -> dict:
    row = {
        "id": "r1",
        "question": "Who wrote Zeta?",
        "answer": "Eta Theta",
        "supporting_facts": [["Zeta", 0], ["Iota", 1]],
        "context": [["Zeta", ["Zeta is a novel by Eta Theta."]], ["Iota", ["Iota.", " A poem."]]],
    }
    return {**row, **changes}


@pytest.mark.parametrize(
    "variant, changes, why",
    [
        ("gold", {"supporting_facts": []}, "empty"),
        ("gold", {"supporting_facts": None}, "missing"),
        ("supporting", {"supporting_facts": [["Nope", 0]]}, "title 'Nope' is not a context"),
        ("supporting", {"supporting_facts": [["Iota", 2]]}, "sent_id 2 of 'Iota' is not one of"),
        ("gold", {"supporting_facts": [["Zeta", "0"]]}, "integer sent_id"),
    ],
)
def test_a_hotpotqa_row_a_variant_cannot_use_is_a_data_error_naming_the_field(
    tmp_path, variant, changes, why
):
    path = tmp_path / "rows.jsonl"
    good = json.dumps(_hotpot_row(id="r0"))
    path.write_text(good + "\n" + json.dumps(_hotpot_row(**changes)) + "\n")
    assert len(get_task("hotpotqa").load(path)) == 2  # the full context needs no supporting facts
    with pytest.raises(DataError, match=f"line 2, field 'supporting_facts': .*{why}"):
        get_task(f"hotpotqa?context={variant}").load(path)
    task = get_task(f"hotpotqa?context={variant}")
    assert [e.id for e in task.load(path, skip_invalid=True)] == ["r0"] and task.last_skipped == 1


def test_a_sentence_past_the_end_does_not_matter_to_the_gold_paragraphs(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_hotpot_row(supporting_facts=[["Iota", 5]])) + "\n")
    (ex,) = get_task("hotpotqa?context=gold").load(path)
    assert ex.context == "Iota: Iota. A poem."


def test_variant_prompts_drop_the_distractor_wording_and_cold_prompts_stay_bare(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_hotpot_row()) + "\n")
    for name in ("hotpotqa?context=gold", "hotpotqa?context=supporting"):
        task = get_task(name)
        (ex,) = task.load(path)
        warm, cold = task.build_prompt(ex, "warm"), task.build_prompt(ex, "cold")
        assert "irrelevant" not in warm and ex.context in warm
        assert cold == f"{ex.context}\n{ex.question}"
        assert not any(text in cold for text in task.instruction_texts())
    assert "irrelevant" in get_task("hotpotqa").build_prompt(ex, "warm")


def test_an_unknown_context_variant_is_refused():
    for name in ("hotpotqa?context=short", "musique?context=gold", "finqa?context=supporting"):
        with pytest.raises(ValueError, match="context must be one of"):
            get_task(name)


def test_musique_supporting_context_is_exactly_the_supporting_paragraphs():
    path = _shared("musique/dev_200_with_paragraphs.jsonl")
    rows = _rows(path)
    task = get_task("musique?context=supporting")
    exs = task.load(path)
    assert len(exs) == 200 and "other paragraphs are dropped" in task.context_note
    for ex in exs:
        kept = [p for p in rows[ex.id]["paragraphs"] if p["is_supporting"]]
        assert ex.context.split("\n") == [
            f"{p['title']}: {' '.join(p['paragraph_text'].split())}" for p in kept
        ]
        assert len(kept) == ex.meta["hops"]  # one supporting paragraph per hop in this file
        assert "irrelevant" not in task.build_prompt(ex, "warm")


def test_musique_supporting_needs_paragraphs_with_flags(tmp_path):
    labels_only = SHARED / "musique/dev_2417_labels_only.json"
    if labels_only.exists():
        with pytest.raises(DataError, match="line 2, field 'paragraphs': missing"):
            get_task("musique?context=supporting").load(labels_only)
    row = json.loads((FIX / "musique.jsonl").read_text().splitlines()[0])
    for p in row["paragraphs"]:
        p["is_supporting"] = False
    unflagged = json.loads(json.dumps(row))
    del unflagged["paragraphs"][1]["is_supporting"]
    for bad, why in (
        (row, "paragraphs': no paragraph has is_supporting"),
        (unflagged, r"paragraphs\[1\].is_supporting': missing"),
    ):
        path = tmp_path / "m.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        assert len(get_task("musique").load(path)) == 1
        with pytest.raises(DataError, match=f"line 1, field '{why}"):
            get_task("musique?context=supporting").load(path)


def test_data_show_renders_a_variant_and_refuses_a_file_it_cannot_use(capsys, tmp_path):
    from tsallis_rl.cli import main

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_hotpot_row()) + "\n")
    assert main(["data", "show", "--task", "hotpotqa?context=supporting", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Zeta: Zeta is a novel by Eta Theta.\nIota: A poem.\nWho wrote Zeta?" in out
    path.write_text(json.dumps(_hotpot_row(supporting_facts=[])) + "\n")
    assert main(["data", "show", "--task", "hotpotqa?context=gold", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 1, field 'supporting_facts'" in err and len(err.strip().splitlines()) == 1
