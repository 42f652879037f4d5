"""The answer-likelihood objectives side by side over seeds, on the embedded default experiment.

Runs `tsallis-rl train` with its defaults (chain-sum, cold regime, the cached base model) for GRPO,
the peer estimators (VeriFree, log-likelihood, IWAE, RLPR, RFT) and GARL / PAFT, once per seed,
then prints the measured table: per method the mean ± sd over seeds (and per seed) of test p@1,
p@k, m@k, the best validation p@1, on how many seeds and how early validation p@1 left 0 (the cold
start), the best step, the final validation rationale correctness (when the task logs it) and the
wall time. Every number is read from the run's summary.json and metrics.jsonl; the mean and sd are
`tsallis_rl.report.aggregate_seeds` (sd with n - 1).

    python bench/peer_comparison.py                          # the full comparison (~1 h on 2 cores)
    python bench/peer_comparison.py --estimators grpo,garl:0.75 --seeds 0,1 --steps 2 \\
        --out runs/peer-tiny -- --val-size 4 --test-size 4 --eval-k 2
    python bench/peer_comparison.py --table-only --write-readme   # table of a finished OUT

--write-readme replaces only the block between `<!-- peer-table:start -->` and
`<!-- peer-table:end -->` in README.md (exit 1 with a message when the markers are absent).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tsallis_rl.config import TrainConfig, default_of
from tsallis_rl.io import read_jsonl, write_atomic
from tsallis_rl.report import aggregate_seeds

PEERS = "grpo,verifree,loglik,iwae,rlpr,rft,garl:0,garl:0.5,garl:0.75,garl:1,paft:0.75"
START, END = "<!-- peer-table:start -->", "<!-- peer-table:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--estimators", default=PEERS, help=f"comma list NAME[:q] (default {PEERS})")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    ap.add_argument("--steps", type=int, help="optimizer steps (default: tsallis-rl train's)")
    ap.add_argument("--out", default="runs/peer-comparison", help="run directory")
    ap.add_argument("--resume", action="store_true", help="keep the finished (method, seed) runs")
    ap.add_argument("--table-only", action="store_true", help="do not train; read --out")
    ap.add_argument("--write-readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--readme", default="README.md", help="the README to write into")
    ap.add_argument("extra", nargs="*", help="more flags for tsallis-rl train (after --)")
    return ap.parse_args(argv)


def train(args: argparse.Namespace) -> tuple[int, float]:
    """Run the suite (exit status, wall seconds of the whole command)."""
    cmd = [sys.executable, "-m", "tsallis_rl.cli", "train", "--out", args.out]
    cmd += ["--estimators", args.estimators, "--seeds", args.seeds, "--progress", "false"]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    if args.resume:
        cmd.append("--resume")
    elif Path(args.out).exists():
        cmd.append("--overwrite")
    cmd += args.extra
    print("$", " ".join(cmd), flush=True)
    t0 = datetime.datetime.now()
    code = subprocess.run(cmd).returncode
    return code, (datetime.datetime.now() - t0).total_seconds()


def run_rows(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (method, seed) of a finished OUT, with what the summary lacks read off the
    run's validation records: best validation p@1 and the first step at which p@1 > 0."""
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    per_seed = [r for r in summary if r.get("seed") is not None]
    if not any("seed" in r for r in summary):  # one seed: the single-seed layout OUT/<tag>/
        per_seed = [{**r, "seed": cfg["seed"], "run": r["method"]} for r in summary]
    rows = []
    for r in per_seed:
        evals = [x for x in read_jsonl(out / r["run"] / "metrics.jsonl") if x["kind"] == "eval"]
        escaped = next((x["step"] for x in evals if x.get("p@1", 0.0) > 0), None)
        rows.append({
            **r,
            "max_val_p@1": max((x["p@1"] for x in evals), default=None),
            "escaped": None if not evals else float(escaped is not None),
            "first_step_p@1>0": escaped,
            "final_rationale_correct": evals[-1].get("rationale_correct") if evals else None,
        })  # fmt: skip
    return rows, cfg


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pm(row: dict[str, Any], key: str, spec: str) -> str:
    sd = row.get(f"{key}_sd")
    return _f(row.get(key), spec) + ("" if sd is None else f" ± {format(sd, spec)}")


def tables(rows: list[dict[str, Any]], k: int) -> str:
    """The markdown tables: mean ± sd per method, then every (method, seed)."""
    cols = [  # key, header, format
        ("test_p@1", "test p@1", ".3f"),
        (f"test_p@{k}", f"test p@{k}", ".3f"),
        (f"test_m@{k}", f"test m@{k}", ".3f"),
        ("max_val_p@1", "best val p@1", ".3f"),
        ("first_step_p@1>0", "first step val p@1 > 0", ".0f"),
        ("best_step", "best step", ".0f"),
        ("final_rationale_correct", "final rationale correct", ".2f"),
        ("wall_seconds", "wall s", ".0f"),
    ]
    agg = aggregate_seeds(rows, [c[0] for c in cols])
    head = " | ".join(h for _, h, _ in cols)
    lines = [
        f"| method | seeds | escaped (seeds) | {head} |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for a in agg:
        n_esc = sum(1 for r in rows if r["method"] == a["method"] and r["escaped"])
        cells = [_pm(a, key, spec) for key, _, spec in cols]
        lines.append(
            f"| {a['method']} | {a['n_seeds']} | {n_esc}/{a['n_seeds']} | {' | '.join(cells)} |"
        )
    lines += ["", f"| method | seed | {head} |", "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        cells = [_f(r.get(key), spec) for key, _, spec in cols]
        lines.append(f"| {r['method']} | {r['seed']} | {' | '.join(cells)} |")
    return "\n".join(lines)


SUITE_FIELDS = {"estimators", "seeds", "seed", "steps", "out", "progress", "resume", "overwrite"}


def changed_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The options of a saved config.yaml that differ from `tsallis-rl train`'s defaults (other
    than what every comparison sets: the suite, its seeds, steps and where it runs)."""
    fields = TrainConfig.__dataclass_fields__
    return {
        k: v for k, v in cfg.items() if k in fields and k not in SUITE_FIELDS and v != default_of(k)
    }


def block(rows: list[dict[str, Any]], cfg: dict[str, Any], wall: float | None) -> str:
    """The README block: what was run, where, and the measured tables."""
    seeds = sorted({r["seed"] for r in rows})
    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    total = "" if wall is None else f", {wall / 60:.0f} min in all"
    changed = ", ".join(f"{k} {v}" for k, v in changed_options(cfg).items())
    return "\n".join([
        f"Measured by `python bench/peer_comparison.py` on {when} ({machine}{total}): "
        f"`tsallis-rl train` defaults ({cfg['task']}, {cfg['regime']} regime, {cfg['steps']} steps, "
        f"M = {cfg['num_rollouts']}, lr {cfg['lr']:g}{'; changed: ' + changed if changed else ''}), "
        f"seeds {', '.join(map(str, seeds))}. "
        "Mean ± sd over seeds (sd with n - 1); \"escaped\" counts the seeds whose validation "
        "p@1 left 0 and \"first step\" averages over those seeds; the per-seed rows follow. "
        "Single-run numbers vary from machine to machine.",
        "",
        tables(rows, int(cfg["eval_k"])),
    ])  # fmt: skip


def write_readme(readme: Path, text: str) -> bool:
    """Replace the block between the markers (False, nothing written, when they are absent)."""
    doc = readme.read_text(encoding="utf-8") if readme.exists() else ""
    start, end = doc.find(START), doc.find(END)
    if start < 0 or end < start:
        return False
    new = doc[: start + len(START)] + "\n" + text + "\n" + doc[end:]
    write_atomic(readme, new)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall = None
    if not args.table_only:
        code, wall = train(args)
        if code != 0:
            return code
    out = Path(args.out)
    if not (out / "summary.json").exists():
        print(f"{out}/summary.json not found: no finished suite there", file=sys.stderr)
        return 2
    rows, cfg = run_rows(out)
    text = block(rows, cfg, wall)
    print("\n" + text)
    if args.write_readme:
        if not write_readme(Path(args.readme), text):
            print(
                f"\n{args.readme}: no {START} ... {END} block; add the two markers where the "
                "table belongs and rerun with --table-only --write-readme",
                file=sys.stderr,
            )
            return 1
        print(f"\nwrote the table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
