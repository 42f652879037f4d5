"""reasoning-gym tasks: spec parsing, seeded disjoint splits, success = score >= 1, raising scorers."""

from __future__ import annotations

import pytest

from tsallis_rl.tasks import get_task
from tsallis_rl.tasks.gym import GymTask, parse_spec

pytest.importorskip("reasoning_gym")

SPEC = "rg:chain_sum?min_terms=3&max_digits=4"


def test_parse_spec_reads_yaml_scalars():
    assert parse_spec("chain_sum?min_terms=3&max_digits=4") == (
        "chain_sum",
        {"min_terms": 3, "max_digits": 4},
    )
    assert parse_spec("x?a=0.5&b=true&c=[1, 2]&d=text") == (
        "x",
        {"a": 0.5, "b": True, "c": [1, 2], "d": "text"},
    )
    for bad in ("", "?a=1", "x?a", "x?seed=3", "x?size=3"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_unknown_dataset_or_config_fails_early():
    with pytest.raises(ValueError):
        get_task("rg:no_such_dataset")
    with pytest.raises(ValueError):
        get_task("rg:chain_sum?bogus=1")


def test_splits_are_seeded_disjoint_and_test_is_stable():
    task = get_task(SPEC, train_size=40, val_size=8, test_size=8)
    assert isinstance(task, GymTask) and not task.needs_path
    a = task.splits()
    assert {k: len(v) for k, v in a.items()} == {"train": 40, "val": 8, "test": 8}
    qs = {k: [e.question for e in v] for k, v in a.items()}
    assert not set(qs["train"]) & set(qs["val"])
    assert not set(qs["train"]) & set(qs["test"])
    assert not set(qs["val"]) & set(qs["test"])
    assert len(set(qs["train"])) == 40
    again = get_task(SPEC, train_size=40, val_size=8, test_size=8).splits()
    assert {k: [e.question for e in v] for k, v in again.items()} == qs
    bigger = get_task(SPEC, train_size=60, val_size=8, test_size=8).splits()
    assert [e.question for e in bigger["test"]] == qs["test"]  # train size never moves test
    other = get_task(SPEC, train_size=40, val_size=8, test_size=8, seed=1).splits()
    assert [e.question for e in other["test"]] != qs["test"]
    assert [e.question for e in task.load(split="test")] == qs["test"]
    assert len(task.load(split="val", n=3)) == 3
    frac = task.splits(val_size=0.25, test_size=4)
    assert (len(frac["val"]), len(frac["test"])) == (10, 4)
    with pytest.raises(ValueError):
        task.load("some/path.jsonl")
    with pytest.raises(ValueError):
        task.load(split="holdout")


def test_success_is_score_at_least_one_and_prompts_follow_the_regimes():
    task = get_task(SPEC, train_size=5, val_size=0, test_size=0)
    ex = task.load(split="train")[0]
    y = task.target(ex)
    assert task.exact_match(y, ex) and task.official_metrics(y, ex) == {"score": 1.0}
    assert not task.exact_match(y + "0", ex)
    assert task.substring_match(f"so it is {y}.", ex)
    assert not task.substring_match(f"{y}7", ex)
    cold, warm = task.build_prompt(ex, "cold"), task.build_prompt(ex, "warm")
    assert cold == ex.question
    assert all(t not in cold and t in warm for t in task.instruction_texts())


def test_a_raising_scorer_scores_zero(monkeypatch):
    task = get_task(SPEC, train_size=3, val_size=0, test_size=0)
    ex = task.load(split="train")[0]

    def boom(answer, entry):
        raise RuntimeError("scorer bug")

    monkeypatch.setattr(task._scorer, "score_answer", boom)
    assert task.score(ex.answer, ex) == 0.0
    assert not task.exact_match(ex.answer, ex)
    assert task.official_metrics(ex.answer, ex) == {"score": 0.0}
    monkeypatch.setattr(task._scorer, "score_answer", lambda answer, entry: float("nan"))
    assert task.score(ex.answer, ex) == 0.0
