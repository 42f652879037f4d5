"""`tsallis-rl study escape|noise`: measured studies on trained networks.

escape: does the escape-time theory hold in a real network? Trains GARL on the chain-sum cold task
over q x difficulty dial x optimiser (x seed) with the trainer's own runs, detects each run's escape
step on a fixed probe set and fits the slope of log(escape step) against log(1/p0) per
(q, optimiser), beside the theory's 1 - q.
    tsallis-rl study escape --q 0.5,0.75,1 --dial 1,2,3,4 --optimizers sgd,adam --out runs/escape
    tsallis-rl study escape --q 0.75,1 --dial 1,3 --optimizers adam --steps 10 --out /tmp/e
Writes OUT/report.md, OUT/results.json, OUT/config.yaml, OUT/escape_steps.png, OUT/curves.png.

noise: the other half of the trade-off. Trains GARL and PAFT on chain-sum with `?noise=eps` (a
seeded fraction of wrong training sums; validation clean) over q (and q schedules) x eps x
regime x seed, measures clean validation p@1 over time, memorisation of the wrong labels on the
corrupted examples beside Prop. C.2's (eps/(1-eps))^(1/q), escape and collapse.
    tsallis-rl study noise --q 0.25,0.5,0.75,1 --noise 0,0.2,0.4 --estimators garl,paft \\
        --regime warm,cold --schedules linear,step --seeds 0,1,2 --out runs/noise
Writes OUT/report.md, OUT/results.json, OUT/config.yaml, OUT/memorisation.png, OUT/accuracy.png.

Every run lives under OUT/runs/. OUT must be empty or absent unless --resume (keep its finished
runs) or --overwrite (replace it) is given, and only a folder tsallis-rl wrote is ever reused or
replaced.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsallis_rl import escape_study, noise_study
from tsallis_rl.config import add_bool_flag, add_field_flags, given_fields
from tsallis_rl.errors import ConfigError
from tsallis_rl.io import write_yaml
from tsallis_rl.rundir import check_out_dir, claim_out_dir


@dataclass(frozen=True)
class Study:
    """One study: its config class, flags (flag -> field) and helps, and its steps."""

    config: type
    flags: dict[str, str]
    helps: dict[str, str]
    train: Callable[..., Any]
    analyse: Callable[[Any, Path], dict[str, Any]]
    write: Callable[[Any, dict[str, Any], Path], list[Path]]
    table: Callable[[dict[str, Any]], str]
    help: str


ESCAPE_FLAGS = {
    "q": "q", "dial": "dials", "optimizers": "optimizers", "seeds": "seeds", "lr": "lr",
    "steps": "steps", "eval_every": "eval_every", "probe_size": "probe_size", "eval_k": "eval_k",
    "max_grad_norm": "max_grad_norm", "threshold_log_p": "threshold_log_p",
    "p1_threshold": "p1_threshold", "bootstrap": "bootstrap", "workers": "workers",
    "threads": "threads", "model": "model",
}  # fmt: skip

COMMON_HELPS = {
    "seeds": "seeds per cell", "steps": "optimizer steps per run",
    "workers": "runs trained side by side", "threads": "CPU threads in all",
    "model": "base model path (default None: the project's cached chain-sum base model)",
    "max_grad_norm": "gradient clipping, 0 = off",
}  # fmt: skip

ESCAPE_HELPS = {
    **COMMON_HELPS,
    "q": "q grid", "dials": "chain-sum dial settings", "optimizers": "sgd, adam, adamw",
    "lr": "learning rate per optimiser, e.g. sgd=0.01,adam=1e-4 (merged into the defaults)",
    "eval_every": "probe evaluation every N steps", "probe_size": "probe problems",
    "eval_k": "samples per probe problem",
    "threshold_log_p": "escape: probe mean log P-hat >= this (P-hat ~ 0.007 at -5, the "
    "cold-start notes' mark)", "p1_threshold": "escape by accuracy: probe p@1 >= this",
    "bootstrap": "bootstrap resamples of each slope",
}  # fmt: skip

NOISE_FLAGS = {
    "q": "q", "noise": "noise", "estimators": "estimators", "regime": "regimes",
    "schedules": "schedules", "schedule_regimes": "schedule_regimes", "q_start": "q_start",
    "q_end": "q_end",
    "switch_step": "switch_step", "seeds": "seeds", "cold_dial": "cold_dial",
    "optimizer": "optimizer", "lr": "lr", "max_grad_norm": "max_grad_norm", "steps": "steps",
    "eval_every": "eval_every", "train_size": "train_size", "val_size": "val_size",
    "eval_k": "eval_k", "collapse_fraction": "collapse_fraction",
    "collapse_min_peak": "collapse_min_peak", "escape_p1": "escape_p1",
    "memo_threshold": "memo_threshold", "workers": "workers",
    "threads": "threads", "model": "model",
}  # fmt: skip

NOISE_HELPS = {
    **COMMON_HELPS,
    "q": "constant q grid", "noise": "label-noise fractions eps in [0, 1) (the task's ?noise=)",
    "estimators": "q estimators, e.g. garl,paft", "regimes": "warm and/or cold",
    "schedules": "q schedules from --q-start to --q-end (linear, step, cosine; the trainer's "
    "--q-schedule values); an empty value runs none",
    "schedule_regimes": "the regimes the schedules run in",
    "q_start": "first q of every schedule", "q_end": "final q of every schedule",
    "switch_step": "step schedule: the step q becomes q_end (default steps // 2)",
    "cold_dial": "chain-sum dial of the cold regime's answer", "optimizer": "adam, adamw, sgd",
    "lr": "learning rate", "eval_every": "validation + memorisation probe every N steps",
    "train_size": "training problems (small: each corrupted one is seen many times)",
    "val_size": "validation problems (and corrupted examples probed)",
    "eval_k": "samples per problem (validation and probe)",
    "collapse_fraction": "collapse: val p@1 falls below this x its peak after the peak",
    "collapse_min_peak": "collapse: only from a peak p@1 >= this",
    "escape_p1": "escape: first evaluation with val p@1 >= this",
    "memo_threshold": "memorisation step: first probe with mean P(noisy label) >= this",
}  # fmt: skip

STUDIES = {
    "escape": Study(
        escape_study.EscapeStudyConfig, ESCAPE_FLAGS, ESCAPE_HELPS, escape_study.train_grid,
        escape_study.analyse, escape_study.write_outputs,
        lambda results: escape_study.fit_table(results["fits"]),
        "escape time vs p0, q, optimiser",
    ),
    "noise": Study(
        noise_study.NoiseStudyConfig, NOISE_FLAGS, NOISE_HELPS, noise_study.train_grid,
        noise_study.analyse, noise_study.write_outputs, noise_study.summary_table,
        "label-noise memorisation vs q and q schedules, clean accuracy, collapse",
    ),
}  # fmt: skip


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="measured studies on trained networks: "
        + "; ".join(f"{name} ({s.help})" for name, s in STUDIES.items()),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="study", required=True, metavar="{" + ",".join(STUDIES) + "}")
    for name, study in STUDIES.items():
        sp = kinds.add_parser(
            name, help=study.help, description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        sp.add_argument("--out", required=True, type=Path, help="output folder")
        add_field_flags(sp, study.config, study.flags, helps=study.helps)
        add_bool_flag(sp, "--overwrite", "replace OUT (a folder `study` wrote)", default=False)
        add_bool_flag(
            sp, "--resume", "keep finished runs in OUT/runs, train the rest", default=False
        )
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
        sp.set_defaults(func=run, on_interrupt=_interrupted)


def _interrupted(args: argparse.Namespace) -> str:
    return (
        f"finished runs in {args.out}/runs are kept, the others keep their last checkpoint; "
        "continue with the same command plus --resume"
    )


def count(n: int, noun: str) -> str:
    """ "1 run", "2 runs"."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def build_config(args: argparse.Namespace):
    """The study's config from its defaults and the flags given; validated (ConfigError if bad)."""
    study = STUDIES[args.study]
    cfg = study.config()
    for name, value in given_fields(args, study.flags).items():
        merge = name == "lr" and isinstance(cfg.lr, dict)  # escape: per-optimiser rates
        setattr(cfg, name, {**cfg.lr, **value} if merge else value)
    return cfg.validate()


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume cannot be combined")
    check_out_dir(out, kind="study", overwrite=overwrite, resume=resume)


def run(args: argparse.Namespace) -> int:
    study = STUDIES[args.study]
    cfg = build_config(args)
    _check_out(args.out, args.overwrite, args.resume)
    claim_out_dir(args.out, overwrite=args.overwrite, kind="study")
    write_yaml(args.out / "config.yaml", cfg.to_dict())
    t0 = time.perf_counter()
    n = len(cfg.grid())
    print(
        f"study {args.study}: {count(n, 'run')} ({cfg.workers} at a time), {cfg.steps} steps each",
        flush=True,
    )
    study.train(cfg, args.out, resume=args.resume)
    results = study.analyse(cfg, args.out)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    written = study.write(cfg, results, args.out)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out} ({results['wall_seconds']} s)")
    print(study.table(results))
    return 0
