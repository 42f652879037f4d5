"""Benchmark study: the escape-time scaling of GARL in the trained chain-sum network (issue 14).

Runs `tsallis-rl study escape` at a size the 2-core machine finishes in about an hour (the `hour`
preset: q = 0.5, 0.75, 1 x 4 dial settings x SGD and Adam x seeds 0, 1, 2, 2 worker processes;
72 runs, ~13 min per seed on an idle 2-core machine), then
prints the measured tables: initial log P-hat per dial, the slope of log(escape step) against
log(1/p0) per (q, optimiser) with its bootstrap interval beside the theory's 1 - q, and every run.
`--preset small` is a minutes-long check that the pipeline works (2 q x 4 dials x SGD, 30 steps).
Finished runs are kept (--resume), so an interrupted study continues where it stopped.

    python bench/escape_study.py --out runs/escape-hour              # ~40 min on 2 idle cores
    python bench/escape_study.py --preset small --out /tmp/escape-small
    python bench/escape_study.py --out runs/x -- --lr sgd=0.05       # extra study flags after --
    python bench/escape_study.py --reanalyse --out bench/results/escape-hour   # no training

--reanalyse re-detects the escape steps and recomputes every fit and theory slope from OUT's
results.json (the stored probe curves of each run) with the preset's settings, and rewrites OUT's
report.md, results.json, config.yaml and plots; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRESETS = {
    "hour": [
        "--q", "0.5,0.75,1", "--dial", "1,2,3,4", "--optimizers", "sgd,adam", "--seeds", "0,1,2",
        "--steps", "200", "--eval-every", "5", "--probe-size", "16", "--eval-k", "4",
    ],
    "small": [
        "--q", "0.75,1", "--dial", "1,2,3,4", "--optimizers", "sgd",
        "--steps", "30", "--eval-every", "2", "--probe-size", "8", "--eval-k", "4",
        "--bootstrap", "200",
    ],
}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="hour")
    ap.add_argument(
        "--reanalyse", action="store_true", help="recompute OUT's analysis from its results.json"
    )
    ap.add_argument("extra", nargs="*", help="extra `tsallis-rl study escape` flags (after --)")
    args = ap.parse_args()
    if args.reanalyse:
        return reanalyse(args.out, [*PRESETS[args.preset], *args.extra])
    from tsallis_rl.cli import main as cli

    argv = ["study", "escape", "--out", str(args.out), *PRESETS[args.preset], *args.extra]
    if args.out.exists() and any(args.out.iterdir()):
        argv.append("--resume")
    code = cli(argv)
    if code:
        return code
    results = json.loads((args.out / "results.json").read_text())
    from tsallis_rl.escape_study import run_table

    print("\ninitial probe log P-hat per dial setting (measured at step 0):")
    for dial, v in results["dials"].items():
        print(f"  dial {dial}: {v['mean_initial_log_p']:8.2f}")
    print("\nruns:")
    print(run_table(results["runs"]))
    print(f"\nwall time: {results['wall_seconds']} s; report: {args.out / 'report.md'}")
    return 0


def reanalyse(out: Path, flags: list[str]) -> int:
    """Rewrite OUT's outputs from its results.json with the study settings `flags` (no training)."""
    from tsallis_rl.commands.study import build_config, register
    from tsallis_rl.escape_study import fit_table, write_outputs
    from tsallis_rl.escape_study import reanalyse as redo

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = build_config(parser.parse_args(["study", "escape", "--out", str(out), *flags]))
    results = redo(cfg, json.loads((out / "results.json").read_text()))
    written = write_outputs(cfg, results, out)
    print(f"rewrote {', '.join(p.name for p in written)} in {out}")
    print(fit_table(results["fits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
