"""examples/trl_garl.py: its --help shows the docstring as written and offers every usable estimator."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]


def test_help_keeps_the_docstrings_command_lines_and_lists_every_teacher_forced_estimator():
    from tsallis_rl.estimators import get_estimator_spec, list_estimators

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_garl.py"), "--help"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "--num-generations 8 \\\n        --max-completion-length 1024" in res.stdout
    assert 'pip install -e ".[trl]"' in res.stdout
    for name in list_estimators():
        assert (name in res.stdout.split("--estimator")[1].split("]")[0]) == get_estimator_spec(
            name
        ).sequence_only


def test_settings_come_from_the_device_present_not_from_the_model_kind():
    """A real model on a CPU-only machine must not get bf16 / gradient checkpointing (TRL refuses
    bf16 without a GPU); a GPU gets them, fp16 where it lacks bf16."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trl_garl", ROOT / "examples" / "trl_garl.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    name = example.checkpointing_name()
    cpu = example.device_settings(cuda=False, bf16_ok=False, checkpointing=name)
    assert cpu["use_cpu"] and not cpu["bf16"] and not cpu[name]
    assert cpu["model_init_kwargs"] == {"dtype": "float32"}
    gpu = example.device_settings(cuda=True, bf16_ok=True, checkpointing=name)
    assert gpu["bf16"] and gpu[name] and not gpu["use_cpu"]
    assert gpu[f"{name}_kwargs"] == {"use_reentrant": False}
    from transformers import TrainingArguments

    with warnings.catch_warnings():  # the option's current name: no FutureWarning about it
        warnings.simplefilter("error", FutureWarning)
        TrainingArguments(
            output_dir="unused", **{k: v for k, v in cpu.items() if k != "model_init_kwargs"}
        )
    old_gpu = example.device_settings(cuda=True, bf16_ok=False)
    assert old_gpu["fp16"] and not old_gpu["bf16"]
    assert "chosen from the device present" in example.__doc__


def test_the_tiny_example_runs_without_a_future_warning(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", str(ROOT / "examples" / "trl_garl.py"),
         "--steps", "1", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "FutureWarning" not in res.stderr and "steps 1:" in res.stdout
