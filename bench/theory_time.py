"""Time `tsallis-rl theory all` (full grid) and print the headline numbers it measured.

    .venv/bin/python bench/theory_time.py            # target: under 120 s on 2 cores
Runs the real command in a subprocess into a temporary folder, then reads results.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 120.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "theory"
        cmd = [
            sys.executable,
            "-m",
            "tsallis_rl.cli",
            "theory",
            "all",
            "--out",
            str(out),
            "--progress",
            "false",
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        data = json.loads((out / "results.json").read_text())
    print(f"{'section':<10} {'seconds':>8}")
    for k, v in data["timings_s"].items():
        print(f"{k:<10} {v:>8.2f}")
    print(
        f"{'total wall':<10} {wall:>8.2f}   target {TARGET_S:.0f} s   ratio {wall / TARGET_S:.2f}"
    )
    res = data["results"]
    print("\nsigmoid escape rate (ODE), p0 in [1e-7, 1e-3]")
    for r in res["escape"]["models"]["sigmoid"]:
        f = r["fit"]
        th = f["theory_slope"]
        diff = abs(f["slope"] - th) if isinstance(th, float) else float("nan")
        print(
            f"  q={r['q']:<5} slope={f['slope']:.4f} theory={th} |diff|={diff:.4f} R2={f['r2']:.9f}"
        )
    print("\nGARL plug-in bias slope (log ||bias|| vs log M)")
    for b in res["bias"]["blocks"]:
        if b["fits"]:
            g = b["fits"]["garl_plugin"]
            print(f"  P={b['P']:.2f} q={b['q']:<5} slope={g['slope']:.3f} +- {g['slope_se']:.3f}")
    return 0 if wall < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
