"""`tsallis-rl study escape`: does the escape-time theory hold in a real network?

Trains GARL on the chain-sum cold task over q x difficulty dial x optimiser (x seed) with the
trainer's own runs, detects each run's escape step on a fixed probe set and fits the slope of
log(escape step) against log(1/p0) per (q, optimiser), beside the theory's 1 - q.
    tsallis-rl study escape --q 0.5,0.75,1 --dial 1,2,3,4 --optimizers sgd,adam --out runs/escape
    tsallis-rl study escape --q 0.75,1 --dial 1,3 --optimizers adam --steps 10 --out /tmp/e
Writes OUT/report.md, OUT/results.json, OUT/config.yaml, OUT/escape_steps.png, OUT/curves.png and
every run under OUT/runs/. OUT must be empty or absent unless --resume (keep its finished runs) or
--overwrite (replace it) is given, and only a folder tsallis-rl wrote is ever reused or replaced.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tsallis_rl.errors import ConfigError
from tsallis_rl.escape_study import (
    EscapeStudyConfig,
    analyse,
    fit_table,
    train_grid,
    write_outputs,
)
from tsallis_rl.io import write_yaml
from tsallis_rl.rundir import check_out_dir, claim_out_dir


def _list(kind: type, what: str):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


def _lrs(text: str) -> dict[str, float]:
    """ "sgd=0.01,adam=1e-4" -> {"sgd": 0.01, "adam": 0.0001}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected OPT=LR,..., got {part!r}") from None
        if not eq:
            raise argparse.ArgumentTypeError(f"expected OPT=LR,..., got {part!r}")
    return out


def register(subparsers) -> None:
    d = EscapeStudyConfig()
    p = subparsers.add_parser(
        "study",
        help="measured studies on trained networks: escape (escape time vs p0, q, optimiser)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", choices=["escape"])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--q", type=_list(float, "numbers"), help=f"q grid (default: {d.q})")
    p.add_argument(
        "--dial", type=_list(int, "integers"), help=f"chain-sum dial settings (default: {d.dials})"
    )
    p.add_argument(
        "--optimizers", type=_list(str, "names"), help=f"sgd, adam, adamw (default: {d.optimizers})"
    )
    p.add_argument(
        "--seeds", type=_list(int, "integers"), help=f"seeds per cell (default: {d.seeds})"
    )
    p.add_argument(
        "--lr",
        type=_lrs,
        help=f"learning rate per optimiser, e.g. sgd=0.01,adam=1e-4 (default: {d.lr})",
    )
    p.add_argument("--steps", type=int, help=f"optimizer steps per run (default: {d.steps})")
    p.add_argument(
        "--eval-every", type=int, help=f"probe evaluation every N steps (default: {d.eval_every})"
    )
    p.add_argument("--probe-size", type=int, help=f"probe problems (default: {d.probe_size})")
    p.add_argument("--eval-k", type=int, help=f"samples per probe problem (default: {d.eval_k})")
    p.add_argument(
        "--max-grad-norm",
        type=float,
        help=f"gradient clipping, 0 = off (default: {d.max_grad_norm})",
    )
    p.add_argument(
        "--threshold-log-p",
        type=float,
        help=f"escape: probe mean log P-hat >= this (default: {d.threshold_log_p:g}, P-hat ~ 0.007, the cold-start notes' mark)",
    )
    p.add_argument(
        "--p1-threshold",
        type=float,
        help=f"escape by accuracy: probe p@1 >= this (default: {d.p1_threshold})",
    )
    p.add_argument(
        "--bootstrap", type=int, help=f"bootstrap resamples of each slope (default: {d.bootstrap})"
    )
    p.add_argument("--workers", type=int, help=f"runs trained side by side (default: {d.workers})")
    p.add_argument("--threads", type=int, help=f"CPU threads in all (default: {d.threads})")
    p.add_argument(
        "--model", help="base model path (default: the project's cached chain-sum base model)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT (a folder this wrote)")
    p.add_argument(
        "--resume", action="store_true", help="keep finished runs in OUT/runs, train the rest"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)  # fmt: skip


FLAGS = {
    "q": "q", "dial": "dials", "optimizers": "optimizers", "seeds": "seeds", "steps": "steps",
    "eval_every": "eval_every", "probe_size": "probe_size", "eval_k": "eval_k",
    "max_grad_norm": "max_grad_norm", "threshold_log_p": "threshold_log_p",
    "p1_threshold": "p1_threshold", "bootstrap": "bootstrap", "workers": "workers",
    "threads": "threads", "model": "model",
}  # fmt: skip


def build_config(args: argparse.Namespace):
    """EscapeStudyConfig from its defaults and the flags given; validated (ConfigError if bad)."""
    cfg = EscapeStudyConfig()
    for flag, name in FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, name, value)
    if args.lr is not None:
        cfg.lr = {**cfg.lr, **args.lr}
    return cfg.validate()


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume cannot be combined")
    check_out_dir(out, overwrite=overwrite, resume=resume)


def run(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    _check_out(args.out, args.overwrite, args.resume)
    claim_out_dir(args.out, overwrite=args.overwrite, kind="study")
    write_yaml(args.out / "config.yaml", cfg.to_dict())
    t0 = time.perf_counter()
    n = len(cfg.grid())
    print(f"study escape: {n} runs ({cfg.workers} at a time), {cfg.steps} steps each", flush=True)
    train_grid(cfg, args.out, resume=args.resume)
    results = analyse(cfg, args.out)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    written = write_outputs(cfg, results, args.out)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out} ({results['wall_seconds']} s)")
    print(fit_table(results["fits"]))
    return 0
