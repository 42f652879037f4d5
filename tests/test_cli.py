"""The command line as a whole: one vocabulary across subcommands, --debug everywhere."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from tsallis_rl.cli import build_parser
from tsallis_rl.config import default_of


def _leaf_parsers(parser: argparse.ArgumentParser, name: str = "tsallis-rl"):
    """(name, parser) of every subcommand that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for action in subs:
        for sub_name, sub in action.choices.items():
            yield from _leaf_parsers(sub, f"{name} {sub_name}")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_every_subcommand_speaks_one_vocabulary():
    leaves = dict(_leaf_parsers(build_parser()))
    assert {"tsallis-rl train", "tsallis-rl eval", "tsallis-rl data show"} <= set(leaves)
    for name, parser in leaves.items():
        opts = _options(parser)
        assert "--debug" in opts, f"{name} has no --debug"
        if "--regime" in opts:
            assert opts["--regime"].default in (None, default_of("regime")), name
        if "--path" in opts:
            assert "deprecated" in opts["--path"].help and "--data" in opts, name
        if "--task" in opts and not opts["--task"].required:
            assert opts["--task"].default in (None, default_of("task")), name
    for name in ("tsallis-rl train", "tsallis-rl eval", "tsallis-rl data show"):
        assert "--data" in _options(leaves[name]), name
    regimes = [n for n, p in leaves.items() if "--regime" in _options(p)]
    assert {"tsallis-rl export verl", "tsallis-rl data stats", "tsallis-rl eval"} <= set(regimes)


def test_user_errors_are_one_line_also_under_python_dash_m(tmp_path):
    """`python -m tsallis_rl.cli` runs cli.py as __main__: the commands' UserErrors still count."""
    import subprocess
    import sys

    argv = ["study", "escape", "--out", str(tmp_path / "x"), "--q", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "tsallis_rl.cli", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "q must lie in [0, 1]" in proc.stderr and not (tmp_path / "x").exists()


def test_a_bug_inside_the_core_keeps_its_traceback_and_is_not_a_user_error(tmp_path):
    """A ValueError raised inside the core (a shape bug, say) is not a user mistake: `tsallis-rl
    train` shows its traceback and exits with another status than 2 (the user-error status)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tsallis_rl.tasks.chainsum import ChainSumTask\n"
        "def broken(self, *a, **k):\n"
        "    raise ValueError('shape mismatch inside the core')\n"
        "ChainSumTask.splits = broken\n"
        "from tsallis_rl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["train", "--estimator", "garl", "--steps", "1", "--out", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert proc.returncode not in (0, 2), proc.stderr
    assert "Traceback" in proc.stderr and "shape mismatch inside the core" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_user_errors_are_one_family():
    """Every kind of user mistake is a UserError, which the CLI alone turns into status 2."""
    from tsallis_rl import errors

    kinds = [errors.ConfigError, errors.RecipeError, errors.DataError, errors.CheckpointError]
    for kind in [*kinds, errors.ModelError]:
        assert issubclass(kind, errors.UserError), kind


def test_on_off_flags_take_the_same_form_in_every_subcommand():
    """--resume, --overwrite and --progress: `--x` alone or `--x true|false`, everywhere (train's
    generated flags, eval, export, study, theory); theory's --no-progress is only a hidden alias."""
    from tsallis_rl.config import parse_bool

    leaves = dict(_leaf_parsers(build_parser()))
    seen = set()
    for name, parser in leaves.items():
        opts = _options(parser)
        for flag in ("--resume", "--overwrite", "--progress"):
            if flag in opts:
                seen.add((name, flag))
                action = opts[flag]
                assert action.type is parse_bool and action.nargs == "?" and action.const is True, (
                    name,
                    flag,
                )
        if "--no-progress" in opts:
            assert opts["--no-progress"].help == argparse.SUPPRESS, name
    for name in ("train", "study escape", "study noise", "theory", "eval", "export verl"):
        assert (f"tsallis-rl {name}", "--overwrite") in seen, name
    assert {("tsallis-rl study escape", "--resume"), ("tsallis-rl study noise", "--resume"),
            ("tsallis-rl theory", "--progress")} <= seen  # fmt: skip


def test_train_help_shows_its_examples_as_written():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--regime cold \\\n        --estimator garl" in text  # the line break is kept
    assert "make resume" in text


def test_the_readme_says_where_the_command_is_and_make_can_resume():
    """After `make install` / `make run` the command is in .venv/bin, not on PATH; an interrupted
    `make run` continues with `make resume` (make cannot pass --resume)."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert ".venv/bin/tsallis-rl" in readme and "source .venv/bin/activate" in readme
    assert "make resume" in readme
    makefile = (root / "Makefile").read_text()
    assert "\nresume: install\n\t$(VENV)/bin/tsallis-rl train --resume\n" in makefile


def _tsallis_rl(*argv: str, **kw):
    """`tsallis-rl ARGV` as a real process (signals and pipes behave as in a shell). Ctrl-C is
    handled as from a terminal even when the tests run as a background job (`make test &`),
    whose processes start with SIGINT ignored, which Python then keeps ignoring."""
    import subprocess
    import sys

    script = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from tsallis_rl.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *argv], env=env, **kw)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_during_train_exits_130_in_one_line_and_the_run_resumes(
    tmp_path, tiny_model_dir, workers
):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while a suite trains: status
    130, one line saying what was kept and how to continue, no traceback (also from the worker
    processes); then --resume finishes every run."""
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    argv = [
        "train", "--model", str(tiny_model_dir), "--estimators", "garl:0.75,grpo",
        "--steps", "40", "--save-every", "1", "--eval-every", "20", "--val-size", "2",
        "--test-size", "2", "--eval-k", "2", "--num-rollouts", "2", "--batch-size", "2",
        "--thinking-budget", "6", "--answer-budget", "3", "--out", str(out),
        "--progress", "false", "--workers", workers, "--threads", workers,
    ]  # fmt: skip
    proc = _tsallis_rl(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 300
    while not list(out.glob("*/checkpoints/step-*")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert "interrupted" in lines[0] and "--resume" in lines[0] and str(out) in lines[0]
    done = _tsallis_rl(*argv, "--resume", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert done.wait(timeout=600) == 0, done.communicate()
    assert (out / "summary.json").exists() and (out / "report.md").exists()
    assert all(
        json.loads((out / t / "final.json").read_text())["steps"] == 40
        for t in ("garl_q0.75", "grpo")
    )


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`tsallis-rl recipes | head -1`: the closed pipe ends the command with no traceback."""
    import subprocess

    proc = _tsallis_rl("recipes", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 0


def test_the_readmes_smoke_commands_name_data_each_task_can_load():
    """`--recipe X-smoke --data ../shared/data/X` is the README's pattern; where a folder is
    ambiguous (MuSiQue: two validation files) the README names the file, and that command loads."""
    import re

    from tsallis_rl.config import TrainConfig, recipe_options
    from tsallis_rl.suite import make_splits
    from tsallis_rl.tasks import get_task

    root = Path(__file__).resolve().parents[1]
    if not (root.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not here")
    readme = (root / "README.md").read_text()
    shown = dict(re.findall(r"--recipe (\w+-smoke) --data (\.\./shared/data/[\w./-]+)", readme))
    for task in ("finqa", "hotpotqa", "musique"):
        name = f"{task}-smoke"
        assert name in readme
        data = shown.get(name, f"../shared/data/{task}")
        opts = {**recipe_options(name), "data": str(root / data)}
        cfg = TrainConfig(**{k: v for k, v in opts.items() if k != "recipe"})
        splits = make_splits(get_task(cfg.task), cfg)
        assert splits["train"] and splits["val"], name
