"""Benchmark of the main job: run `tsallis-rl train` (the CPU cold-start default) and check its targets.

Targets (issue 4): GRPO never leaves 0 while GARL at q = 0.75 and q = 1 reach at least 50% validation
p@1, and the whole default run takes <= 10 minutes on the 2-core machine. Prints the per-method
table, each target as measured / threshold, and the base-model build time when it was not cached.

    python bench/default_run.py --out runs/bench-default [--fresh-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/bench-default")
    ap.add_argument(
        "--fresh-cache",
        action="store_true",
        help="build the base model from scratch (timed separately)",
    )
    ap.add_argument("extra", nargs="*", help="extra flags for tsallis-rl train")
    args = ap.parse_args()
    env = dict(os.environ)
    build_s = None
    if args.fresh_cache:
        env["TSALLIS_RL_CACHE"] = tempfile.mkdtemp(prefix="tsallis-cache-")
        t0 = time.time()
        code = "from tsallis_rl.models.basemodel import ensure_base_model; ensure_base_model(progress=False)"
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        build_s = time.time() - t0
    t0 = time.time()
    cmd = [
        sys.executable,
        "-m",
        "tsallis_rl.cli",
        "train",
        "--out",
        args.out,
        "--overwrite",
        "--progress",
        "false",
        *args.extra,
    ]
    if not Path(args.out).exists():
        cmd.remove("--overwrite")
    subprocess.run(cmd, env=env, check=True)
    wall = time.time() - t0
    out = Path(args.out)
    summary = json.loads((out / "summary.json").read_text())
    evals: dict[str, list[dict]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "eval":
            evals.setdefault(rec["method"], []).append(rec)
    print(
        f"\n{'method':>12} {'test p@1':>9} {'p@16':>6} {'m@16':>6} {'best':>5} {'max val p@1':>12} {'init logP':>10} {'wall s':>7}"
    )
    for row in summary:
        best_val = max(r["p@1"] for r in evals[row["method"]])
        print(
            f"{row['method']:>12} {row['test_p@1']:>9.3f} {row['test_p@16']:>6.3f} {row['test_m@16']:>6.3f} {row['best_step']:>5} {best_val:>12.3f} {row['initial_log_p']:>10.1f} {row['wall_seconds']:>7.0f}"
        )
    grpo_max = max((r["p@1"] for r in evals.get("grpo", [])), default=float("nan"))
    print("\ntargets (measured vs threshold):")
    print(
        f"  GRPO max validation p@1      {grpo_max:.3f}  (must be 0)  {'OK' if grpo_max == 0 else 'MISSED'}"
    )
    for tag in ("garl_q0.75", "garl_q1"):
        v = max((r["p@1"] for r in evals.get(tag, [])), default=float("nan"))
        print(
            f"  {tag:<12} max val p@1     {v:.3f}  / 0.50 = {v / 0.5:.2f}x  {'OK' if v >= 0.5 else 'MISSED'}"
        )
    print(
        f"  default run wall time         {wall:.0f} s / 600 s = {wall / 600:.2f}x  {'OK' if wall <= 600 else 'MISSED'}"
    )
    if build_s is not None:
        print(
            f"  base model build (first run)  {build_s:.0f} s / 180 s = {build_s / 180:.2f}x  {'OK' if build_s <= 180 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
