"""Report of a suite: summary.json, report.md (the table and what each method did), PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tsallis_rl.config import TrainConfig
from tsallis_rl.rundir import json_safe, read_jsonl, write_atomic


def summary_rows(results: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """One object per method: method, q, test p@1 / p@k / m@k, best step, wall seconds, initial log P."""
    rows = []
    for res in results:
        test = res.get("test", {})
        rows.append({
            "method": res["tag"],
            "q": res.get("q"),
            "test_p@1": test.get("p@1"),
            f"test_p@{k}": test.get(f"p@{k}"),
            f"test_m@{k}": test.get(f"m@{k}"),
            "best_step": res.get("best_step"),
            "wall_seconds": res.get("wall_seconds"),
            "initial_log_p": res.get("initial_log_p"),
        })  # fmt: skip
    return rows


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def describe_run(tag: str, records: list[dict[str, Any]], k: int) -> str:
    """One paragraph of what a run did, read off its metrics (no hand-written claims)."""
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    if not evals:
        return f"- **{tag}**: no evaluation recorded."
    first, last = evals[0], evals[-1]
    best = max(evals, key=lambda r: (r.get(f"m@{k}", 0.0), -r["step"]))
    escaped = next((r["step"] for r in evals if r.get("p@1", 0.0) > 0), None)
    crossed = next((r["step"] for r in evals if r.get("log_p_hat", -math.inf) > -5), None)
    zero_grad = sum(1 for r in train if r.get("frac_reward_zero_std", 0.0) == 1.0)
    parts = [
        f"val log P̂ {_fmt(first.get('log_p_hat'), '.1f')} → {_fmt(last.get('log_p_hat'), '.1f')}",
        f"p@1 {_fmt(first.get('p@1'))} → {_fmt(last.get('p@1'))} (best m@{k} {_fmt(best.get(f'm@{k}'))} at step {best['step']})",
        f"first step with p@1 > 0: {escaped if escaped is not None else 'never'}",
        f"first step with log P̂ > -5: {crossed if crossed is not None else 'never'}",
    ]
    if "rationale_correct" in last:
        parts.append(
            f"correct rationales {_fmt(first.get('rationale_correct'), '.2f')} → {_fmt(last.get('rationale_correct'), '.2f')}"
        )
    if train and "frac_reward_zero_std" in train[0]:
        parts.append(
            f"{zero_grad}/{len(train)} steps had every group's rewards equal (zero GRPO gradient)"
        )
    return f"- **{tag}**: " + "; ".join(parts) + "."


def write_report(out: Path, cfg: TrainConfig, results: list[dict[str, Any]]) -> None:
    """summary.json, metrics.jsonl (all runs), report.md and plots in `out`."""
    k = cfg.eval_k
    rows = summary_rows(results, k)
    write_atomic(out / "summary.json", json.dumps(json_safe(rows), indent=2))
    per_run = {res["tag"]: read_jsonl(out / res["tag"] / "metrics.jsonl") for res in results}
    merged = [{"method": tag, **rec} for tag, recs in per_run.items() for rec in recs]
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(json_safe(r)) + "\n" for r in merged))
    plots = write_plots(out, per_run, k)
    lines = [
        "# tsallis-rl training report",
        "",
        f"Task `{cfg.task}` ({cfg.regime} regime), model `{cfg.model or 'chain-sum base (built here)'}`; "
        f"M = {cfg.num_rollouts} rollouts per prompt, B = {cfg.batch_size} prompts per step, {cfg.steps} steps, "
        f"lr {cfg.lr:g} ({cfg.optimizer}), thinking budget {cfg.thinking_budget}, seed {cfg.seed}. "
        f"Checkpoint per method = best validation m@{k}; test on {cfg.test_size or 'all'} held-out examples, {k} samples each.",
        "",
        f"| method | q | test p@1 | test p@{k} | test m@{k} | best step | initial log P̂ | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_fmt(r['q'], 'g')} | {_fmt(r['test_p@1'])} | {_fmt(r[f'test_p@{k}'])} | "
            f"{_fmt(r[f'test_m@{k}'])} | {_fmt(r['best_step'])} | {_fmt(r['initial_log_p'], '.1f')} | {_fmt(r['wall_seconds'], '.0f')} |"
        )
    lines += ["", "## What each method did", ""]
    lines += [describe_run(tag, recs, k) for tag, recs in per_run.items()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def write_plots(out: Path, per_run: dict[str, list[dict[str, Any]]], k: int) -> list[Path]:
    """Validation m@k and log P̂ per step, and max amplified advantage c/M^q per step (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [
        ("val_m_at_k.png", "eval", f"m@{k}", f"validation m@{k}"),
        (
            "val_log_p.png",
            "eval",
            "log_p_hat",
            "validation mean log P̂ (gold answer, teacher-forced)",
        ),
        ("max_advantage.png", "train", "max_adv", "max amplified advantage c/M^q per step"),
    ]
    paths = []
    for fname, kind, key, title in specs:
        fig = plot_metric(per_run, kind, key, title)
        path = out / fname
        tmp = out / (fname + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        paths.append(path)
    return paths


def plot_metric(per_run: dict[str, list[dict[str, Any]]], kind: str, key: str, title: str) -> Any:
    """One metric per step, a line per run; rates (p@k, m@k) on a [0, 1] axis even when all 0."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for tag, recs in per_run.items():
        pts = [(r["step"], r[key]) for r in recs if r["kind"] == kind and r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=tag, marker="o" if kind == "eval" else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_title(title)
    if key == "max_adv":
        ax.set_yscale("symlog", linthresh=1e-4)
    if key.startswith(("p@", "m@")):
        ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
