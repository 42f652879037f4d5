"""examples/verl/run_garl_qwen3_0.6b.sh: refuses a cold start with reward weights before any work."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "verl" / "run_garl_qwen3_0.6b.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_cold_start_with_reward_weights_is_refused_before_export(tmp_path):
    env = {**os.environ, "REGIME": "cold", "OUT": str(tmp_path / "out")}
    env.pop("ALLOW_COLD_REWARD", None)
    res = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 2
    assert "REFUSING" in res.stderr and "answer_likelihood" in res.stderr
    assert not (tmp_path / "out").exists()


def test_header_states_the_training_steps_of_the_default_data():
    header = SCRIPT.read_text().split("set -euo pipefail")[0]
    assert "ONE training step" in header and "floor(train rows / PROMPTS_PER_STEP)" in header
    assert "REGIME=${REGIME:-warm}" in SCRIPT.read_text()
