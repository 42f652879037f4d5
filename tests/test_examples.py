"""The README's own-loop example is the file in examples/, and it runs and escapes the cold start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_is_examples_own_loop_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert block == (ROOT / "examples" / "own_loop.py").read_text()


def test_own_loop_example_raises_log_p_from_cold_start():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_loop.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    log_p = [float(v) for v in re.findall(r"mean log P-hat\s+(-?[\d.]+)", out.stdout)]
    assert len(log_p) >= 4  # the start and a few steps, not only the end: the climb is visible
    assert log_p[0] < -10.0 and log_p[-1] > -1.0  # from the cold start (about -12) to ~0
    assert log_p == sorted(log_p)
