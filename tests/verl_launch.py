"""Run examples/verl/run_garl_qwen3_0.6b.sh with `python3` replaced by a recorder (shared by the
verl test modules): what the script would launch, without launching it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "verl" / "run_garl_qwen3_0.6b.sh"
FIXTURE = ROOT / "tests" / "fixtures" / "verl" / "qa.jsonl"


def recorded_launch(tmp_path: Path, **env_over: str) -> list[str]:
    """Every argument the example passes to python3 (`-m <module>` first, then the overrides);
    the script's data export runs for real into tmp_path/data. env_over sets its variables."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$RECORD"\n')
    (fake / "python3").chmod(0o755)
    record = tmp_path / "args.txt"
    env = {
        **os.environ,
        "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "RECORD": str(record),
        "TASK": "jsonl",
        "DATA": str(FIXTURE),
        "OUT": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
        **env_over,
    }
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return record.read_text().splitlines()
