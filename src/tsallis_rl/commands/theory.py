"""`tsallis-rl theory {escape,noise,escort,bias,all} --out DIR`: the gradient-flow theory lab.

Writes report.md (tables), PNG plots, results.json (every number) and config.yaml into DIR.
    tsallis-rl theory all --out runs/theory            # full grids, under 2 minutes on 2 cores
    tsallis-rl theory bias --out /tmp/b --quick         # small grids, seconds
DIR must be empty or absent; --overwrite replaces a DIR that tsallis-rl wrote (never another one).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from tsallis_rl.dynamics.lab import RUNNERS, SECTIONS, TheoryConfig
from tsallis_rl.dynamics.report import render
from tsallis_rl.errors import ConfigError
from tsallis_rl.io import read_yaml
from tsallis_rl.rundir import check_out_dir, claim_out_dir


def _parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _parse_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "theory",
        help="gradient-flow theory lab: escape times, noise, escort minimiser, estimator bias",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("section", choices=["escape", "noise", "escort", "bias", "all"])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--quick", action="store_true", help="small grids (seconds)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an --out folder this command wrote before"
    )
    p.add_argument("--config", type=Path, help="YAML file of TheoryConfig fields")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--q", type=_parse_floats, help="q grid for every section, e.g. 0,0.5,1")
    p.add_argument("--bias-replicates", type=int, help="Monte Carlo replicates per (P, q, M)")
    p.add_argument("--bias-m", type=_parse_ints, help="M grid of the bias study, e.g. 2,8,32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """TheoryConfig from (quick grid or defaults) < YAML file < flags."""
    cfg = TheoryConfig.quick_grid() if args.quick else TheoryConfig()
    fields = {f.name for f in dataclasses.fields(TheoryConfig)}
    if args.config is not None:
        data = read_yaml(args.config) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config}: expected a mapping of TheoryConfig fields")
        for key, value in data.items():
            if key not in fields:
                raise ConfigError(f"--config {args.config}: unknown field {key!r}")
            setattr(cfg, key, value)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.q is not None:
        if not all(0.0 <= q <= 1.0 for q in args.q) or not args.q:
            raise ConfigError(f"--q: every q must lie in [0, 1], got {args.q}")
        cfg.escape_q = cfg.noise_q = cfg.escort_q = cfg.bias_q = list(args.q)
    if args.bias_replicates is not None:
        if args.bias_replicates < 2:
            raise ConfigError("--bias-replicates must be >= 2")
        cfg.bias_replicates = args.bias_replicates
    if args.bias_m is not None:
        if any(m < 2 for m in args.bias_m) or len(args.bias_m) < 2:
            raise ConfigError("--bias-m needs at least two values, each >= 2")
        cfg.bias_m = sorted(args.bias_m)
    return cfg


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    cfg = build_config(args)
    check_out_dir(args.out, overwrite=args.overwrite)  # before any work
    sections = list(SECTIONS) if args.section == "all" else [args.section]
    results, timings = {}, {}
    total = sum(cfg.units(s) for s in sections)
    with tqdm(total=total, desc="theory", unit="step", disable=args.no_progress) as bar:
        for name in sections:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            results[name] = RUNNERS[name](cfg, bar.update)
            timings[name] = round(time.perf_counter() - t0, 3)
    claim_out_dir(args.out, overwrite=args.overwrite, kind="theory")
    t0 = time.perf_counter()
    written = render(results, args.out, cfg.to_dict(), timings)
    timings["render"] = round(time.perf_counter() - t0, 3)
    print(f"wrote {len(written)} files to {args.out}: {', '.join(p.name for p in written)}")
    for name in sections:
        print(f"  {name}: {timings[name]:.1f} s")
    return 0
