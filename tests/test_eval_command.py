"""`tsallis-rl eval`: --run evaluates a trained run as the run did; every number says what made it."""

from __future__ import annotations

import json

import pytest

from tsallis_rl.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    """A two-method suite on the tiny model with non-default budgets, sizes, k, seed and matching."""
    out = tmp_path_factory.mktemp("evalrun") / "run"
    argv = [
        "train", "--model", str(tiny_model_dir), "--estimators", "garl:0.75,grpo", "--steps", "2",
        "--eval-every", "1", "--val-size", "3", "--test-size", "5", "--eval-k", "3",
        "--num-rollouts", "2", "--batch-size", "2", "--thinking-budget", "9", "--answer-budget", "4",
        "--seed", "3", "--match", "paper", "--out", str(out), "--progress", "false",
        "--workers", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_eval_run_reproduces_each_methods_own_test_numbers_without_repeating_a_flag(
    trained_run, capsys
):
    assert main(["eval", "--run", str(trained_run), "--json", "--progress", "false"]) == 0
    rows = json.loads(capsys.readouterr().out)  # one JSON document: a list, one per method
    assert len(rows) == 2
    for row in rows:
        what = row.pop("evaluated")
        tag = "grpo" if "/grpo," in what["what"] else "garl_q0.75"
        final = json.loads((trained_run / tag / "final.json").read_text())
        assert row == final["test"]  # same samples (log P-hat to the last digit), same matching
        assert (what["split"], what["examples"], what["k"], what["match"]) == (
            "test",
            5,
            3,
            "paper",
        )
        assert what["thinking_budget"] == 9 and f"step {final['best_step']}" in what["what"]


def test_eval_run_flags_override_the_runs_values_and_records_show_what_was_counted(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "ev"
    argv = ["eval", "--run", str(trained_run), "--method", "grpo", "--split", "val", "--k", "2"]
    assert main([*argv, "--out", str(out), "--progress", "false"]) == 0
    text = capsys.readouterr().out
    assert "split val (3 examples)" in text and "matching paper" in text and "k 2" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"]["k"] == 2 and summary["match"] == "paper"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["answers"]) == 2 == len(r["correct"]) for r in records)


def test_the_trainer_writes_each_validation_evaluations_records(trained_run):
    files = sorted(p.name for p in (trained_run / "grpo" / "records").iterdir())
    assert files == ["val-step-000000.jsonl", "val-step-000001.jsonl", "val-step-000002.jsonl"]
    rec = json.loads((trained_run / "grpo" / "records" / files[0]).read_text().splitlines()[0])
    assert {"id", "gold", "answers", "correct", "majority"} <= set(rec) and len(rec["answers"]) == 3


@pytest.mark.parametrize(
    "argv, culprit",
    [
        (["--run", "{run}/nope"], "is not a directory"),
        (["--run", "{run}", "--method", "paft"], "there: garl_q0.75, grpo"),
        (["--run", "{run}", "--model", "x"], "drop --model or --run"),
        (["--method", "grpo"], "only with --run"),
        (["--run", "{run}", "--checkpoint", "step-9"], "not in"),
        (["--limit", "-1"], "limit"),
    ],
)
def test_eval_mistakes_exit_2_naming_the_culprit(trained_run, argv, culprit, capsys):
    argv = [a.replace("{run}", str(trained_run)) for a in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert culprit in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_grpo_reward_is_the_match_modes_training_reward(tmp_path, tiny_model_dir, monkeypatch):
    from tsallis_rl import metrics

    calls = []
    real = metrics.MatchMode.reward_correct

    def spy(self, task, pred, ex):
        calls.append(self.name)
        return real(self, task, pred, ex)

    monkeypatch.setattr(metrics.MatchMode, "reward_correct", spy)
    argv = [
        "train", "--model", str(tiny_model_dir), "--estimator", "grpo", "--steps", "1",
        "--eval-every", "0", "--val-size", "0", "--test-size", "0", "--num-rollouts", "2",
        "--batch-size", "2", "--match", "paper", "--out", str(tmp_path / "r"), "--progress", "false",
    ]  # fmt: skip
    assert main(argv) == 0
    assert calls and set(calls) == {"paper"}


# -- issue 25 --------------------------------------------------------------------------------------


def test_eval_never_writes_into_or_replaces_a_training_run_or_a_folder_it_did_not_make(
    trained_run, tmp_path, capsys
):
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    base = ["eval", "--run", str(trained_run), "--method", "grpo", "--limit", "1", "--k", "1"]
    for out, extra in (
        (trained_run, []), (trained_run, ["--overwrite"]), (trained_run / "grpo", ["--overwrite"]),
        (trained_run / "new", []),
    ):  # fmt: skip
        assert main([*base, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "choose another --out" in err and len(err.strip().splitlines()) == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("x")
    assert main([*base, "--out", str(mine), "--overwrite"]) == 2
    assert "not a tsallis-rl run directory" in capsys.readouterr().err
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before
    assert [p.name for p in mine.iterdir()] == ["notes.md"]


def test_eval_run_of_an_ordinary_folder_says_it_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("x")
    assert main(["eval", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory of `tsallis-rl train`" in err and "no trained method" not in err


@pytest.mark.parametrize(
    "bad, culprit", [(["--k", "0"], "eval_k"), (["--model", "./no/such/model"], "model")]
)
def test_eval_value_mistakes_are_reported_before_the_out_folder_check(
    tmp_path, bad, culprit, capsys
):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "x").write_text("someone's")
    assert main(["eval", *bad, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert culprit in err and "already exists" not in err and "not a tsallis-rl" not in err


def test_checkpoint_step_n_accepts_the_short_and_the_padded_spelling(trained_run):
    from tsallis_rl.commands.evaluate import _checkpoint

    run = trained_run / "grpo"
    (run / "checkpoints" / "step-000002").mkdir(parents=True, exist_ok=True)
    assert _checkpoint(run, "step-2") == (run / "checkpoints" / "step-000002", 2)
    assert _checkpoint(run, "step-000002") == (run / "checkpoints" / "step-000002", 2)


def test_eval_records_the_sampling_seed_it_used_and_prints_counts_as_integers(
    trained_run, tmp_path, capsys
):
    """A run's evaluation seeds from its best step: the summary says so (not just "seed")."""
    from tsallis_rl.evaluation import eval_seed

    out = tmp_path / "ev"
    argv = ["eval", "--run", str(trained_run), "--method", "grpo", "--limit", "2", "--k", "1"]
    assert main([*argv, "--out", str(out), "--progress", "false"]) == 0
    text = capsys.readouterr().out
    what = json.loads((out / "summary.json").read_text())["evaluated"]
    best = json.loads((trained_run / "grpo" / "final.json").read_text())["best_step"]
    assert what["step"] == best and what["sampling_seed"] == eval_seed(3, best, "test")
    assert f"sampling seed {what['sampling_seed']}" in text
    assert not [line for line in text.splitlines() if line.split()[:1] == ["n"] and "." in line]
