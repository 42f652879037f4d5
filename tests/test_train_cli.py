"""`tsallis-rl train` end to end: bad configs fail early, the suite writes its outputs, resume is exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tsallis_rl.cli import main
from tsallis_rl.config import TrainConfig

SMALL = [
    "--val-size",
    "3",
    "--test-size",
    "3",
    "--eval-k",
    "2",
    "--batch-size",
    "2",
    "--num-rollouts",
    "3",
    "--thinking-budget",
    "8",
    "--answer-budget",
    "3",
    "--threads",
    "1",
    "--progress",
    "false",
]


def _fail_if_model_loaded(monkeypatch):
    import tsallis_rl.suite as exp

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(exp, "load_model", boom)
    monkeypatch.setattr("tsallis_rl.models.basemodel.ensure_base_model", boom)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--q", "1.5"], "q = 1.5"),
        (["--num-rollouts", "1", "--estimators", "garl:0.5"], "num_rollouts"),
        (["--thinking-budget", "0"], "thinking_budget"),
        (["--estimators", "garl:2"], "q = 2.0"),
        (["--estimators", "nope"], "unknown"),
        (["--task", "finqa"], "needs --data"),
        (["--task", "jsonl", "--data", "/nonexistent/file.jsonl"], "does not exist"),
        (["--q-schedule", "step"], "q_end"),
    ],
)
def test_bad_config_fails_before_any_model_is_loaded(tmp_path, monkeypatch, capsys, flags, needle):
    _fail_if_model_loaded(monkeypatch)
    rc = main(["train", "--out", str(tmp_path / "run"), *flags])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_yaml_config_unknown_key_and_bad_type_name_the_file_and_key(tmp_path, monkeypatch, capsys):
    _fail_if_model_loaded(monkeypatch)
    bad = tmp_path / "c.yaml"
    bad.write_text("q: 0.5\nlearning_rate: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "learning_rate" in err
    bad.write_text("steps: many\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "steps" in capsys.readouterr().err


def test_existing_run_directory_is_never_overwritten_without_asking(tmp_path, monkeypatch, capsys):
    _fail_if_model_loaded(monkeypatch)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["train", "--out", str(out)]) == 2
    assert "not a tsallis-rl run directory" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--overwrite"]) == 2  # not a run dir: refuse to delete
    assert (out / "notes.txt").read_text() == "precious"


def test_suite_writes_report_summary_plots_and_loadable_best_models(tmp_path, tiny_model_dir):
    out = tmp_path / "suite"
    rc = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--estimators",
            "grpo,garl:0.75,paft:1",
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary] == ["grpo", "garl_q0.75", "paft_q1"]
    assert [r["q"] for r in summary] == [None, 0.75, 1.0]  # GRPO has no commitment
    for row in summary:
        assert set(row) == {
            "method",
            "q",
            "test_p@1",
            "test_p@2",
            "test_m@2",
            "best_step",
            "wall_seconds",
            "initial_log_p",
        }
        assert 0.0 <= row["test_p@1"] <= 1.0 and row["initial_log_p"] < 0
    for name in (
        "report.md",
        "metrics.jsonl",
        "config.yaml",
        "val_m_at_k.png",
        "val_log_p.png",
        "max_advantage.png",
    ):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "| garl_q0.75 | 0.75 |" in report and "What each method did" in report
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "garl_q0.75" / "best")


def _run(out: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "tsallis_rl.cli",
        "train",
        "--model",
        str(model_dir),
        "--estimators",
        "garl:0.75",
        "--steps",
        "6",
        "--save-every",
        "2",
        "--eval-every",
        "3",
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_metrics_as_an_uninterrupted_run(
    tmp_path, tiny_model_dir
):
    ref = _run(tmp_path / "ref", tiny_model_dir)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    killed_dir = tmp_path / "killed"
    proc = _run(killed_dir, tiny_model_dir)
    latest = killed_dir / "garl_q0.75" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "garl_q0.75" / "final.json").exists(), (
        "the run finished before it could be killed"
    )
    resumed = _run(killed_dir, tiny_model_dir, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    def metrics(root):
        recs = [
            json.loads(x) for x in (root / "garl_q0.75" / "metrics.jsonl").read_text().splitlines()
        ]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]

    assert metrics(killed_dir) == metrics(tmp_path / "ref")
    final = {
        k: v
        for k, v in json.loads((killed_dir / "garl_q0.75" / "final.json").read_text()).items()
        if k != "wall_seconds"
    }
    want = {
        k: v
        for k, v in json.loads((tmp_path / "ref" / "garl_q0.75" / "final.json").read_text()).items()
        if k != "wall_seconds"
    }
    assert final == want


def test_base_model_is_built_once_and_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsallis_rl.models.basemodel import BaseModelConfig, ensure_base_model

    cfg = BaseModelConfig(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        steps=3,
        batch_size=4,
        threads=1,
    )
    path = ensure_base_model(cfg, tmp_path, progress=False)
    stamp = (path / "base_model.json").stat().st_mtime_ns
    assert ensure_base_model(cfg, tmp_path, progress=False) == path
    assert (path / "base_model.json").stat().st_mtime_ns == stamp  # cached, not rebuilt
    AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.decode(tok("1 2<think>3</think>")["input_ids"]) == "1 2<think>3</think>"


def test_lora_run_trains_adapters_resumes_and_saves_a_merged_loadable_model(
    tmp_path, tiny_model_dir
):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    flags = [
        "train",
        "--model",
        str(tiny_model_dir),
        "--estimators",
        "garl:1",
        "--lora",
        "--lora-r",
        "4",
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--save-every",
        "1",
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(flags) == 0
    ckpt = out / "garl_q1" / "checkpoints"
    assert (ckpt / (ckpt / "latest").read_text().strip() / "adapter_model.safetensors").exists()
    best = AutoModelForCausalLM.from_pretrained(out / "garl_q1" / "best")  # merged: a plain model
    assert not hasattr(best, "peft_config")
    assert (
        main(
            [
                *flags[: flags.index("--steps") + 1],
                "3",
                *flags[flags.index("--steps") + 2 :],
                "--resume",
            ]
        )
        == 0
    )
    steps = [
        json.loads(x)["step"]
        for x in (out / "garl_q1" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in x
    ]
    assert steps == [1, 2, 3]


def test_eval_command_reports_pass_and_majority_metrics(tmp_path, tiny_model_dir, capsys):
    rc = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--task",
            "chainsum",
            "--k",
            "3",
            "--limit",
            "4",
            "--thinking-budget",
            "6",
            "--answer-budget",
            "3",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {"p@1", "p@3", "m@3", "log_p_hat"} <= set(summary) and summary["n"] == 4
    records = (tmp_path / "ev" / "records.jsonl").read_text().splitlines()
    assert len(records) == 4 and len(json.loads(records[0])["answers"]) == 3


def test_trainer_runs_on_a_real_task_format_with_official_metrics(tmp_path):
    """A text task (HotpotQA layout, hand-written fixture) end to end: prompts with context, gold
    answers teacher-forced, substring evaluation plus the task's official EM/F1 on majority answers."""
    import string

    from tsallis_rl.models.tiny import save_tiny_model

    model_dir = save_tiny_model(
        tmp_path / "ascii_model",
        string.printable,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        max_positions=4096,
    )
    row = json.loads(
        (Path(__file__).parent / "fixtures" / "tasks" / "hotpotqa_hf.jsonl").read_text()
    )
    data = tmp_path / "hotpot.jsonl"
    data.write_text("".join(json.dumps({**row, "id": f"{row['id']}-{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "hotpot"
    rc = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--task",
            "hotpotqa",
            "--data",
            str(data),
            "--regime",
            "warm",
            "--estimators",
            "garl:0.75",
            "--steps",
            "1",
            "--eval-every",
            "1",
            "--val-size",
            "1",
            "--test-size",
            "1",
            "--eval-k",
            "2",
            "--batch-size",
            "1",
            "--num-rollouts",
            "2",
            "--thinking-budget",
            "4",
            "--answer-budget",
            "4",
            "--threads",
            "1",
            "--progress",
            "false",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    final = json.loads((out / "garl_q0.75" / "final.json").read_text())
    assert {"p@1", "p@2", "m@2", "maj_em", "maj_f1"} <= set(final["test"])


@pytest.mark.slow
def test_two_process_launch_trains_one_run_with_one_log(tmp_path, tiny_model_dir):
    """torchrun with 2 CPU processes (what `accelerate launch` sets up): DDP over gloo, each rank its
    own prompts, one metrics log and one report written by the main process."""
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tsallis_rl.cli",
        "train",
        "--model",
        str(tiny_model_dir),
        "--estimators",
        "garl:0.75",
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--out",
        str(out),
        *SMALL,
    ]
    proc = subprocess.run(
        args,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "garl_q0.75" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2]
    assert json.loads((out / "summary.json").read_text())[0]["method"] == "garl_q0.75"


@pytest.mark.slow
def test_every_rank_leaves_the_process_group_when_the_suite_ends(tmp_path, tiny_model_dir):
    """Under torchrun, run_suite returns on each rank only after all ranks finished (a barrier) and
    with the gloo group destroyed, so no rank exits while another still saves."""
    script = tmp_path / "suite_then_check.py"
    script.write_text(
        "import argparse, sys\n"
        "import torch.distributed as dist\n"
        "from tsallis_rl.config import add_arguments, from_args\n"
        "from tsallis_rl.suite import run_suite\n"
        "p = argparse.ArgumentParser(); add_arguments(p)\n"
        "run_suite(from_args(p.parse_args(sys.argv[1:])))\n"
        "print('initialized after the suite:', dist.is_initialized())\n"
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
        "--model", str(tiny_model_dir), "--estimators", "garl:0.75", "--steps", "1",
        "--out", str(tmp_path / "run"), *SMALL,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("initialized after the suite: False") == 2, proc.stdout


def test_tensorboard_logging_writes_train_and_eval_scalars(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    rc = main(
        [
            "train",
            "--model",
            str(tiny_model_dir),
            "--estimators",
            "garl:0.75",
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--tensorboard",
            "--out",
            str(out),
            *SMALL,
        ]
    )
    assert rc == 0
    acc = EventAccumulator(str(out / "garl_q0.75" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/mean_log_w_bar", "eval/log_p_hat", "eval/p@1"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_file_tasks_train_on_every_example_unless_capped(tmp_path):
    from tsallis_rl.suite import make_splits
    from tsallis_rl.tasks import get_task

    data = tmp_path / "qa.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"q{i}?", "answer": str(i)}) + "\n" for i in range(30))
    )
    task = get_task("jsonl")
    full = make_splits(
        task, TrainConfig(model="x", task="jsonl", data=str(data), val_size=5, test_size=5)
    )
    assert len(full["train"]) == 20
    capped = make_splits(
        task,
        TrainConfig(model="x", task="jsonl", data=str(data), val_size=5, test_size=5, train_size=7),
    )
    assert len(capped["train"]) == 7
    assert (
        len(make_splits(get_task("chainsum"), TrainConfig())["train"]) == 2000
    )  # the task's default


def test_estimator_and_q_train_exactly_that_run_named_by_its_schedule_and_quietly(
    tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "one"
    flags = ["train", "--model", str(tiny_model_dir), "--estimator", "paft", "--q", "0.5"]
    flags += ["--q-schedule", "linear", "--q-end", "0", "--steps", "1", "--out", str(out)]
    assert main([*flags, *SMALL]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary] == ["paft_q0.5to0-linear"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["paft_q0.5to0-linear"]
    assert "paft_q0.5to0-linear" in (out / "report.md").read_text()
    err = capsys.readouterr().err  # --progress false: no bars, transformers' included
    assert "Loading weights" not in err and "Writing model shards" not in err and "it/s" not in err


def test_help_shows_defaults_once_and_speaks_of_m_at_k(capsys):
    for argv in (["train", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None) (default:" not in text and "(default: all) (default" not in text
        assert "maj@" not in text
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # eval's flags are generated from TrainConfig's fields, like train's: one help text per option
    assert "--k K samples per example for p@k / m@k (default: 16, or the run's)" in text
    assert "cold (linearised, no format cue) (default: cold, or the run's)" in text
