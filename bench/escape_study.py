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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_bench, beside this script
import study_bench  # noqa: E402

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


def show_run(results: dict) -> None:
    from tsallis_rl.escape_study import run_table

    print("\ninitial probe log P-hat per dial setting (measured at step 0):")
    for dial, v in results["dials"].items():
        print(f"  dial {dial}: {v['mean_initial_log_p']:8.2f}")
    print("\nruns:")
    print(run_table(results["runs"]))


def show_reanalysis(results: dict) -> str:
    from tsallis_rl.escape_study import fit_table

    return fit_table(results["fits"])


def main() -> int:
    return study_bench.main("escape", PRESETS, __doc__, show_run, show_reanalysis)


if __name__ == "__main__":
    sys.exit(main())
