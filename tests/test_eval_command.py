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


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_eval_run_reproduces_each_methods_own_test_numbers_without_repeating_a_flag(
    trained_run, capsys
):
    assert main(["eval", "--run", str(trained_run), "--json", "--progress", "false"]) == 0
    rows = _json_lines(capsys.readouterr().out)
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
