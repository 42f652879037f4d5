r"""`tsallis-rl train`: with no arguments, the CPU cold-start experiment; otherwise any model and task.

    tsallis-rl train                                   # the embedded default (make run)
    tsallis-rl train --resume                          # continue it after a stop (make resume)
    tsallis-rl train --estimator paft --q 0.5          # exactly one run, paft_q0.5
    tsallis-rl train --steps 100 --estimators garl:0.75,grpo --out runs/short
    tsallis-rl train --model Qwen/Qwen3-0.6B --task finqa --data data/finqa --regime cold \
        --estimator garl --q 0.75 --num-rollouts 32 --thinking-budget 3968 --answer-budget 128 --lora
    accelerate launch -m tsallis_rl.cli train --model ... (several GPUs)

Which runs: --estimators (default: the cold-start suite grpo,garl:0,garl:0.75,garl:1,paft:0.75);
--estimator and/or --q replace it with that single run. Everything is checked (values, data, that
the model loads and its prompts fit) before the run directory is created.
"""

from __future__ import annotations

import argparse

from tsallis_rl.config import add_arguments, default_of, from_args
from tsallis_rl.suite import run_suite


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train with GARL / PAFT / GRPO (no arguments: the CPU cold-start default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.set_defaults(func=run, on_interrupt=interrupted)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C left (cli.py prints it): each run keeps its last whole checkpoint."""
    out = args.out or (f"the --out of {args.config}" if args.config else default_of("out"))
    every = args.save_every if args.save_every is not None else default_of("save_every")
    return (
        f"{out} keeps each run's last checkpoint (saved every {every} steps) and every finished "
        "run; continue with the same command plus --resume (after `make run`: make resume)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = from_args(args)
    results = run_suite(cfg)
    if not results:  # a non-main process of a multi-process launch
        return 0
    print(f"\nwrote {cfg.out}/report.md and {cfg.out}/summary.json")
    for res in results:
        test = res.get("test", {})
        k = cfg.eval_k
        print(
            f"  {res.get('run', res['tag']):>14}: test p@1 {test.get('p@1', float('nan')):.3f}  p@{k} {test.get(f'p@{k}', float('nan')):.3f}  m@{k} {test.get(f'm@{k}', float('nan')):.3f}  (best step {res.get('best_step')})"
        )
    return 0
