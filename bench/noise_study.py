"""Benchmark study: label-noise memorisation, clean accuracy and q schedules in the trained chain-sum
network (issue 24), sized for this 2-core machine.

Runs `tsallis-rl study noise` (GARL and PAFT on `chainsum?noise=eps`; see tsallis_rl.noise_study)
and prints its settings table: final clean validation p@1, escape and collapse, and the measured
memorisation p~ on the corrupted training examples beside Prop. C.2's (eps/(1-eps))^(1/q).

The `hour` preset: q = 0.25, 0.5, 0.75, 1 x eps = 0, 0.2, 0.4 x GARL, PAFT x warm, cold x seeds
0, 1, 2, plus the schedules 1 -> 0.25 linear and step (switch at step 50) from the cold start;
100 Adam steps at lr 1e-4 (no clipping, as in the escape study), 64 training problems (each seen
~12 times at B = 8), the cold answer at chain-sum dial 2 (p0 ~ e^-22, where Adam escapes in
30-100 steps in the escape study), validation and the memorisation probe every 10 steps (16
problems x 4 samples). 2 worker processes x 1 thread.

Sizing (measured on this machine, 1 thread per run, while another job used both cores): ten
single 100-step runs of this configuration (64 training / 16 validation problems, eval every 10)
took 26.5 s (warm GARL q = 1, eps 0.4), 27.4 (warm PAFT), 25.9 (cold dial 2 GARL), 25.8 (cold
PAFT), 25.8 / 25.6 / 25.2 (cold dial 1: GARL q = 0.25, linear, step), 25.5 (cold dial 2 GARL
q = 0.25), and 36.5 / 37.4 (cold dial 2 GARL q = 1 / linear, as the other job's load rose);
mean 28.2 s. Runs: warm 2 estimators x 4 q x 3 eps x 3 seeds = 72, cold 2 x (4 q + 2 schedules)
x 3 x 3 = 108; 180 runs x 28.2 s / 2 workers = 2538 s = 42 min (56 min at the slowest measured
37.4 s per run), under the 60-minute budget.

    python bench/noise_study.py --out bench/results/noise-study          # 38.0 min measured here
    python bench/noise_study.py --preset smoke --out /tmp/noise-smoke    # ~1 min: the pipeline
    python bench/noise_study.py --out runs/x -- --lr 5e-5                # extra study flags after --

Finished runs are kept (--resume), so an interrupted study continues where it stopped.
--reanalyse recomputes escape, collapse and the tables from OUT's results.json (the stored curves)
with the preset's settings and rewrites OUT's outputs; nothing is trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_bench, beside this script
import study_bench  # noqa: E402

PRESETS = {
    "hour": [
        "--q", "0.25,0.5,0.75,1", "--noise", "0,0.2,0.4", "--estimators", "garl,paft",
        "--regime", "warm,cold", "--schedules", "linear,step", "--schedule-regimes", "cold",
        "--q-start", "1", "--q-end", "0.25", "--seeds", "0,1,2", "--steps", "100",
        "--eval-every", "10", "--train-size", "64", "--val-size", "16", "--eval-k", "4",
        "--cold-dial", "2", "--workers", "2", "--threads", "2",
    ],
    "smoke": [
        "--q", "0.5,1", "--noise", "0,0.4", "--estimators", "garl,paft", "--regime", "warm,cold",
        "--schedules", "linear", "--schedule-regimes", "cold", "--seeds", "0", "--steps", "10",
        "--eval-every", "5", "--train-size", "16", "--val-size", "4", "--eval-k", "2",
        "--workers", "2", "--threads", "2",
    ],
}  # fmt: skip


def show_run(results: dict) -> None:
    from tsallis_rl.noise_study import run_table

    print("\nruns:")
    print(run_table(results["runs"]))


def show_reanalysis(results: dict) -> str:
    from tsallis_rl.noise_study import summary_table

    return summary_table(results)


def main() -> int:
    return study_bench.main("noise", PRESETS, __doc__, show_run, show_reanalysis)


if __name__ == "__main__":
    sys.exit(main())
