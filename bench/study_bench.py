"""The one driver behind bench/escape_study.py and bench/noise_study.py: run a `tsallis-rl study
KIND` preset (resuming a non-empty OUT), or rewrite OUT's outputs from its results.json."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(
    kind: str,
    presets: dict[str, list[str]],
    doc: str,
    show_run: Callable[[dict[str, Any]], None],
    show_reanalysis: Callable[[dict[str, Any]], str],
) -> int:
    """`show_run` prints a finished study's tables; `show_reanalysis` returns a reanalysis's."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", choices=sorted(presets), default="hour")
    ap.add_argument(
        "--reanalyse", action="store_true", help="recompute OUT's analysis from its results.json"
    )
    ap.add_argument("extra", nargs="*", help=f"extra `tsallis-rl study {kind}` flags (after --)")
    args = ap.parse_args()
    flags = [*presets[args.preset], *args.extra]
    if args.reanalyse:
        return reanalyse(kind, args.out, flags, show_reanalysis)
    from tsallis_rl.cli import main as cli

    argv = ["study", kind, "--out", str(args.out), *flags]
    if args.out.exists() and any(args.out.iterdir()):
        argv.append("--resume")
    code = cli(argv)
    if code:
        return code
    results = json.loads((args.out / "results.json").read_text())
    show_run(results)
    print(f"\nwall time: {results['wall_seconds']} s; report: {args.out / 'report.md'}")
    return 0


def reanalyse(kind: str, out: Path, flags: list[str], show: Callable[[dict[str, Any]], str]) -> int:
    """Rewrite OUT's outputs from its results.json with the study settings `flags` (no training)."""
    from tsallis_rl.commands.study import build_config, register

    study = importlib.import_module(f"tsallis_rl.{kind}_study")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    cfg = build_config(parser.parse_args(["study", kind, "--out", str(out), *flags]))
    results = study.reanalyse(cfg, json.loads((out / "results.json").read_text()))
    written = study.write_outputs(cfg, results, out)
    print(f"rewrote {', '.join(p.name for p in written)} in {out}")
    print(show(results))
    return 0
