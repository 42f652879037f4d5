"""Suites of runs (tsallis_rl.suite): the checks before a run starts fail clearly and fast with
nothing on disk; parallel runs share one progress line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsallis_rl.cli import main
from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import ConfigError
from tsallis_rl.suite import check_lengths, run_tag
from tsallis_rl.tasks import get_task


def _short_model(tmp_path: Path) -> Path:
    from tsallis_rl.models.tiny import save_tiny_model
    from tsallis_rl.tasks.chainsum import ALPHABET

    return save_tiny_model(
        tmp_path / "short", ALPHABET, hidden_size=16, num_layers=1, num_heads=2, max_positions=40
    )


def test_prompts_that_cannot_fit_the_model_are_refused_with_the_numbers(tmp_path):
    model = _short_model(tmp_path)
    task = get_task("chainsum")
    splits = {"val": task.load(n=20)}
    check_lengths(TrainConfig(thinking_budget=8, answer_budget=2), task, splits, str(model))
    with pytest.raises(ConfigError) as err:
        check_lengths(TrainConfig(thinking_budget=30), task, splits, str(model))
    msg = str(err.value)
    assert "thinking_budget 30" in msg and "at most 40" in msg and "--thinking-budget" in msg


def test_train_refuses_a_model_too_short_for_its_prompts_before_the_run_dir(tmp_path, capsys):
    model = _short_model(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--model", str(model), "--estimator", "garl", "--thinking-budget", "64"]
    assert main([*argv, "--out", str(out), "--progress", "false"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert not out.exists()


def test_parallel_runs_show_one_combined_progress_line(tmp_path, capsys):
    import json
    from concurrent.futures import Future

    from tsallis_rl.suite import _combined_progress

    futures = {}
    for tag, done in (("garl_q0.75", 3), ("grpo", 1)):
        (tmp_path / tag).mkdir()
        rows = [{"kind": "train", "step": s} for s in range(1, done + 1)] + [{"kind": "eval"}]
        (tmp_path / tag / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        futures[tag] = Future()
        futures[tag].set_result({})
    runs = {tag: (tmp_path / tag, 5) for tag in ("garl_q0.75", "grpo")}
    _combined_progress(runs, futures, progress=True)
    err = capsys.readouterr().err
    assert "2 runs" in err and "4/10" in err and "garl_q0.75 3/5  grpo 1/5" in err
    _combined_progress(runs, futures, progress=False)
    assert capsys.readouterr().err == ""


def test_schedule_runs_are_named_by_what_they_ran():
    assert run_tag("garl", 1.0, True, "linear", 0.5) == "garl_q1to0.5-linear"
    assert run_tag("paft", 0.75, True, "step", 0.0) == "paft_q0.75to0-step"
    assert run_tag("garl", 0.75, True) == "garl_q0.75"
    assert run_tag("grpo", 0.75, False, "linear", 0.5) == "grpo"


def test_ablation_runs_are_named_by_what_they_ran():
    """`--pathwise false --baseline none` trains another method than plain GARL: its name says so
    (and GRPO, which takes neither option, keeps its name)."""
    from tsallis_rl.config import TrainConfig
    from tsallis_rl.suite import suite_jobs

    cfg = TrainConfig(estimators="garl:1,grpo", pathwise=False, baseline="none")
    assert [j.tag for j in suite_jobs(cfg)] == ["garl_q1_baseline-none_pathwise-false", "grpo"]
    assert [j.tag for j in suite_jobs(TrainConfig(estimators="garl:1"))] == ["garl_q1"]
