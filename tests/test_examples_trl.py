"""examples/trl_garl.py: its --help shows the docstring as written and offers every usable estimator."""

from __future__ import annotations

import os
import subprocess
import sys
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
