"""Matching and aggregation: official EM/F1 rules, FinQA numeric matching, p@k / m@k, records."""

from __future__ import annotations

import pytest

from tsallis_rl.io import read_jsonl, write_jsonl
from tsallis_rl.metrics import (
    contains_number,
    contains_words,
    finqa_numeric_match,
    hotpotqa_em_f1,
    majority_answer,
    musique_em_f1,
    normalize_answer,
    score_samples,
)
from tsallis_rl.tasks.base import Example
from tsallis_rl.tasks.hotpotqa import HotpotQATask


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Eiffel-Tower, (Paris)!  ") == "eiffeltower paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("") == ""


@pytest.mark.parametrize(
    "pred, gold, em, f1",
    [
        ("the Eiffel Tower", "Eiffel Tower", 1.0, 1.0),  # articles
        ("Eiffel Tower!", "eiffel tower", 1.0, 1.0),  # punctuation and case
        ("Eiffel", "Eiffel Tower", 0.0, 2 * 1.0 * 0.5 / 1.5),  # partial overlap
        ("yes", "no", 0.0, 0.0),
        ("yes", "yes indeed", 0.0, 0.0),  # yes/no rule: F1 0 although tokens overlap
        ("no answer", "noanswer", 0.0, 0.0),  # noanswer on the gold side
        ("Yes.", "yes", 1.0, 1.0),
        ("", "Paris", 0.0, 0.0),  # empty prediction
        ("", "", 1.0, 0.0),  # official quirk: EM 1, F1 0 for two empty strings
        ("the", "a", 1.0, 0.0),  # both normalise to nothing
        ("Paris Paris", "Paris", 0.0, 2 * 0.5 * 1.0 / 1.5),  # counts are clipped
    ],
)
def test_hotpotqa_em_f1_follows_the_official_rules(pred, gold, em, f1):
    got_em, got_f1 = hotpotqa_em_f1(pred, gold)
    assert got_em == em
    assert got_f1 == pytest.approx(f1)


@pytest.mark.parametrize(
    "pred, answers, em, f1",
    [
        ("Mu", ["Mu County", "Mu"], 1.0, 1.0),  # an alias matches exactly
        ("the Mu County", ["Mu County"], 1.0, 1.0),
        ("Mu County, USA", ["Mu County", "Mu"], 0.0, 0.8),  # max over golds: 2*(2/3*1)/(5/3)
        ("yes", ["yes indeed"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # no yes/no special case
        ("", ["Mu"], 0.0, 0.0),
        ("", [""], 1.0, 1.0),  # SQuAD rule: both empty -> F1 1
        ("a", ["the"], 1.0, 1.0),
        ("Xi", ["Omicron", "Pi"], 0.0, 0.0),
    ],
)
def test_musique_em_f1_is_the_max_over_answer_and_aliases(pred, answers, em, f1):
    got_em, got_f1 = musique_em_f1(pred, answers)
    assert got_em == em
    assert got_f1 == pytest.approx(f1)


def test_musique_em_f1_needs_a_gold():
    with pytest.raises(ValueError):
        musique_em_f1("x", [])


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("0.56197", 0.56197, True),
        ("0.562", 0.56197, True),  # rounded to the prediction's 3 decimals
        ("56.2%", 0.56197, True),  # written percent
        ("56.2", 0.56197, True),  # percent mismatch x100
        ("0.0562", 5.62, True),  # x100 percent mismatch the other way
        ("0.000562", 5.62, False),  # /10000 is not a percent mismatch
        ("0", 0.3, False),  # rounding may not erase the gold
        ("127", 127.4, True),  # smaller number of decimals
        ("$1,200", 1200.0, True),
        ("1200.9", 1200.0, True),  # within relative tolerance 1e-3
        ("1210", 1200.0, False),
        ("the answer is yes", "yes", False),
        ("Yes.", "yes", True),
        ("no number here", 3.0, False),
        ("-0.0325", -0.0325, True),
    ],
)
def test_finqa_numeric_match_rules(pred, gold, ok):
    assert finqa_numeric_match(pred, gold) is ok


def test_finqa_numeric_match_options_can_be_strict():
    assert not finqa_numeric_match("56.2", 0.56197, percent=False)
    assert not finqa_numeric_match("1200.9", 1200.0, rel_tol=0)


def test_contains_words_and_numbers_respect_boundaries():
    assert contains_words("No, it is not.", "no")
    assert not contains_words("nobody knows", "no")
    assert contains_words("It was the Eiffel Tower.", "Eiffel Tower")
    assert not contains_words("anything", "")
    assert contains_number("so the result = 94.", "94")
    assert not contains_number("1940", "94")
    assert not contains_number("94.5", "94")
    assert contains_number("total 1,200 units", "1200")
    assert contains_number("Yes, it did", "yes")


def test_majority_answer_breaks_ties_by_first_appearance():
    assert majority_answer(["b", "a", "a", "b"]) == "b"
    assert majority_answer(["", "", "x"]) == "x"  # empty answers do not win
    assert majority_answer([]) == ""
    assert majority_answer(["The Paris", "paris!", "Rome"], normalize_answer) == "The Paris"


def test_score_samples_gives_p1_pk_mk_and_official_metrics(tmp_path):
    task = HotpotQATask()
    exs = [
        Example(id="a", question="q", answer="Paris"),
        Example(id="b", question="q", answer="yes"),
    ]
    samples = [["Rome", "the city of Paris", "Rome", "Rome"], ["no", "no", "yes", "no"]]
    summary, records = score_samples(task, exs, samples)
    assert summary["p@1"] == pytest.approx((1 / 4 + 1 / 4) / 2)
    assert summary["p@4"] == 1.0
    assert summary["m@4"] == 0.0
    assert summary["maj_em"] == 0.0 and summary["maj_f1"] == 0.0
    assert summary["n"] == 2
    path = tmp_path / "sub" / "records.jsonl"
    write_jsonl(path, records)
    back = read_jsonl(path)
    assert [r["id"] for r in back] == ["a", "b"]
    assert back[0]["answers"] == samples[0]
    assert back[1]["majority"] == "no"


def test_score_samples_checks_lengths():
    with pytest.raises(ValueError):
        score_samples(HotpotQATask(), [Example("a", "q", "x")], [])
