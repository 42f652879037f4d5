"""Report of a suite: summary.json, report.md (the table and what each method did), PNG plots.

With several seeds (`--seeds`), summary.json lists one aggregate row per method first (the same
fields as a single-seed row, holding the mean over seeds, plus `<field>_sd`, `<field>_ci95`,
`seeds`, `n_seeds` and `seed: null`), then one row per (method, seed) with its `seed` and `run`;
report.md gives both tables and the plots show the seed mean per method with the min-max shaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tsallis_rl.config import TrainConfig
from tsallis_rl.io import read_jsonl, write_atomic, write_json, write_jsonl


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
    """summary.json, metrics.jsonl (all runs), report.md and plots in `out`.

    Results that carry a `run` (a suite over several seeds) get the per-seed and aggregate report.
    """
    if any("run" in res for res in results):
        write_seed_report(out, cfg, results)
        return
    k = cfg.eval_k
    rows = summary_rows(results, k)
    write_json(out / "summary.json", rows)
    per_run = {res["tag"]: read_jsonl(out / res["tag"] / "metrics.jsonl") for res in results}
    merged = [{"method": tag, **rec} for tag, recs in per_run.items() for rec in recs]
    write_jsonl(out / "metrics.jsonl", merged)
    plots = write_plots(out, per_run, k)
    lines = [
        "# tsallis-rl training report",
        "",
        _setup_line(cfg, f"seed {cfg.seed_list()[0]}"),
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


def _setup_line(cfg: TrainConfig, seeds: str) -> str:
    k = cfg.eval_k
    return (
        f"Task `{cfg.task}` ({cfg.regime} regime), model `{cfg.model or 'chain-sum base (built here)'}`; "
        f"M = {cfg.num_rollouts} rollouts per prompt, B = {cfg.batch_size} prompts per step, {cfg.steps} steps, "
        f"lr {cfg.lr:g} ({cfg.optimizer}), thinking budget {cfg.thinking_budget}, {seeds}. "
        f"Checkpoint per method = best validation m@{k}; test on {cfg.test_size or 'all'} held-out examples, {k} samples each."
    )


# --------------------------------------------------------------------------------------------------
# several seeds


class Spread(NamedTuple):
    """Mean, sample sd (n - 1) and two-sided t-interval of a metric over n seeds (None: undefined)."""

    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def is_fraction(key: str) -> bool:
    """A metric that is a proportion in [0, 1] (p@k, m@k, rationale correctness)."""
    name = key.removeprefix("test_").removeprefix("val_").removeprefix("final_")
    return name.startswith(("p@", "m@")) or name == "rationale_correct"


def spread(
    values: Sequence[float | None],
    level: float = 0.95,
    *,
    bounds: tuple[float, float] | None = None,
) -> Spread:
    """Spread of the finite values (None / NaN dropped): mean, sd with n - 1, and the t-interval
    mean ± t_{(1+level)/2, n-1} · sd / √n, clipped to `bounds` when the metric has them (a
    fraction's interval never leaves [0, 1]). One value: its mean, no sd or interval; none: all
    None."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Spread(0, None, None, None, None)
    mean = math.fsum(xs) / n
    if n == 1:
        return Spread(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Spread(n, mean, sd, lo, hi)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def aggregate_seeds(
    rows: list[dict[str, Any]], keys: Sequence[str] | None = None, level: float = 0.95
) -> list[dict[str, Any]]:
    """One row per method (first-appearance order) from per-seed rows (each with method, seed, q).

    Each key (default: every numeric field but seed and q) becomes its mean over the seeds, with
    `<key>_sd` (n - 1) and `<key>_ci95` ([lo, hi], the t-interval, within [0, 1] for a fraction;
    None below two values); the row
    also holds q, `seeds` (in row order), `n_seeds` and `seed: None`.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["method"], []).append(row)
    if keys is None:
        skip = {"seed", "q"}
        keys = list(
            dict.fromkeys(k for r in rows for k, v in r.items() if k not in skip and _is_number(v))
        )
    tag = f"_ci{round(level * 100)}"
    out = []
    for method, group in groups.items():
        agg: dict[str, Any] = {"method": method, "q": group[0].get("q"), "seed": None}
        for key in keys:
            bounds = (0.0, 1.0) if is_fraction(key) else None
            s = spread([r.get(key) for r in group], level, bounds=bounds)
            agg[key] = s.mean
            agg[f"{key}_sd"] = s.sd
            agg[key + tag] = None if s.lo is None else [s.lo, s.hi]
        agg["seeds"] = [r["seed"] for r in group]
        agg["n_seeds"] = len(group)
        out.append(agg)
    return out


def seed_rows(
    results: list[dict[str, Any]], per_run: dict[str, list[dict[str, Any]]], k: int
) -> list[dict[str, Any]]:
    """One row per (method, seed): the single-seed fields plus seed, run and the last validation
    rationale correctness (None when the task does not log it)."""
    rows = []
    for res, row in zip(results, summary_rows(results, k)):
        evals = [r for r in per_run[res["run"]] if r.get("kind") == "eval"]
        final_rc = evals[-1].get("rationale_correct") if evals else None
        rows.append(
            {**row, "seed": res["seed"], "run": res["run"], "final_rationale_correct": final_rc}
        )
    return rows


def _pm(row: dict[str, Any], key: str, spec: str = ".3f") -> str:
    """`mean ± sd [lo, hi]` of an aggregate row's key ("-" parts when undefined)."""
    text = _fmt(row.get(key), spec)
    if row.get(f"{key}_sd") is not None:
        text += f" ± {_fmt(row[f'{key}_sd'], spec)}"
    if row.get(f"{key}_ci95") is not None:
        lo, hi = row[f"{key}_ci95"]
        text += f" [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"
    return text


def write_seed_report(out: Path, cfg: TrainConfig, results: list[dict[str, Any]]) -> None:
    """The report of a suite over several seeds: aggregate + per-seed rows, seed-mean plots."""
    k = cfg.eval_k
    per_run = {res["run"]: read_jsonl(out / res["run"] / "metrics.jsonl") for res in results}
    rows = seed_rows(results, per_run, k)
    keys = ["test_p@1", f"test_p@{k}", f"test_m@{k}", "best_step", "wall_seconds"]
    keys += ["initial_log_p", "final_rationale_correct"]
    aggregate = aggregate_seeds(rows, keys)
    write_json(out / "summary.json", aggregate + rows)
    merged = [
        {"method": res["tag"], "seed": res["seed"], "run": res["run"], **rec}
        for res in results
        for rec in per_run[res["run"]]
    ]
    write_jsonl(out / "metrics.jsonl", merged)
    by_method: dict[str, list[list[dict[str, Any]]]] = {}
    for res in results:
        by_method.setdefault(res["tag"], []).append(per_run[res["run"]])
    plots = write_seed_plots(out, by_method, k)
    seeds = ", ".join(str(s) for s in cfg.seed_list())
    has_rc = any(r["final_rationale_correct"] is not None for r in rows)
    rc_head, rc_sep = (" final rationale correct |", "---|") if has_rc else ("", "")
    lines = [
        "# tsallis-rl training report",
        "",
        _setup_line(
            cfg,
            f"seeds {seeds} (every method once per seed: splits, data order and "
            "sampling change with the seed, the base model does not)",
        ),
        "",
        f"## Over {len(cfg.seed_list())} seeds: mean ± sd [95% interval]",
        "",
        "sd is the sample standard deviation (n - 1); the interval is Student's t interval "
        "mean ± t(0.975, n - 1) · sd / √n over the seeds.",
        "",
        f"| method | q | seeds | test p@1 | test p@{k} | test m@{k} | best step |{rc_head} wall s |",
        f"|---|---|---|---|---|---|---|{rc_sep}---|",
    ]
    for r in aggregate:
        rc = f" {_pm(r, 'final_rationale_correct', '.2f')} |" if has_rc else ""
        lines.append(
            f"| {r['method']} | {_fmt(r['q'], 'g')} | {r['n_seeds']} | {_pm(r, 'test_p@1')} | "
            f"{_pm(r, f'test_p@{k}')} | {_pm(r, f'test_m@{k}')} | {_pm(r, 'best_step', '.1f')} |{rc} "
            f"{_pm(r, 'wall_seconds', '.0f')} |"
        )
    lines += [
        "",
        "## Per seed",
        "",
        f"| method | seed | test p@1 | test p@{k} | test m@{k} | best step | initial log P̂ |{rc_head} wall s |",
        f"|---|---|---|---|---|---|---|{rc_sep}---|",
    ]
    for r in rows:
        rc = f" {_fmt(r['final_rationale_correct'], '.2f')} |" if has_rc else ""
        lines.append(
            f"| {r['method']} | {r['seed']} | {_fmt(r['test_p@1'])} | {_fmt(r[f'test_p@{k}'])} | "
            f"{_fmt(r[f'test_m@{k}'])} | {_fmt(r['best_step'])} | {_fmt(r['initial_log_p'], '.1f')} |{rc} "
            f"{_fmt(r['wall_seconds'], '.0f')} |"
        )
    lines += ["", "## What each run did", ""]
    lines += [describe_run(run, recs, k) for run, recs in per_run.items()]
    lines += ["", "## Plots (mean over seeds, min-max shaded)", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


def seed_curve(
    runs: list[list[dict[str, Any]]], kind: str, key: str
) -> list[tuple[int, float, float, float]]:
    """(step, mean, min, max) over seeds of one metric, at the steps every seed logged it."""
    by_step: list[dict[int, float]] = [
        {r["step"]: float(r[key]) for r in recs if r.get("kind") == kind and r.get(key) is not None}
        for recs in runs
    ]
    steps = sorted(set.intersection(*(set(d) for d in by_step))) if by_step else []
    curve = []
    for step in steps:
        xs = [d[step] for d in by_step]
        curve.append((step, math.fsum(xs) / len(xs), min(xs), max(xs)))
    return curve


def write_seed_plots(
    out: Path, by_method: dict[str, list[list[dict[str, Any]]]], k: int
) -> list[Path]:
    """Validation p@1, m@k, log P̂ and max advantage per step: a line per method (seed mean),
    the range over seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [
        ("val_p_at_1.png", "eval", "p@1", "validation p@1"),
        ("val_m_at_k.png", "eval", f"m@{k}", f"validation m@{k}"),
        (
            "val_log_p.png",
            "eval",
            "log_p_hat",
            "validation mean log P̂ (gold answer, teacher-forced)",
        ),
        ("max_advantage.png", "train", "max_adv", "max amplified advantage c/M^q per step"),
    ]
    n = max((len(runs) for runs in by_method.values()), default=0)
    paths = []
    for fname, kind, key, title in specs:
        fig, ax = plt.subplots(figsize=(8.0, 4.0))
        for tag, runs in by_method.items():
            curve = seed_curve(runs, kind, key)
            if not curve:
                continue
            steps, mean, lo, hi = zip(*curve)
            (line,) = ax.plot(steps, mean, label=tag, **_line_style(len(ax.lines), kind))
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        _style_axes(ax, key, f"{title}\nmean of {n} seeds, min-max shaded")
        path = out / fname
        tmp = out / (fname + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# plots


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

    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    for tag, recs in per_run.items():
        pts = [(r["step"], r[key]) for r in recs if r["kind"] == kind and r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=tag, **_line_style(len(ax.lines), kind))
    _style_axes(ax, key, title)
    return fig


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _line_style(i: int, kind: str) -> dict[str, Any]:
    """The i-th run's look: its own marker and dash, the marker smaller for each later run.

    Runs often coincide (GRPO and GARL q = 0 both at m@k 0 for the whole cold start): the run
    drawn later lies on top, so a larger hollow marker underneath stays visible around it."""
    dashes = ("-", "--", "-.", ":")
    style: dict[str, Any] = {"linestyle": dashes[i % len(dashes)], "linewidth": 1.2}
    if kind == "eval":
        style.update(
            marker=MARKERS[i % len(MARKERS)], markersize=max(2.5, 8.0 - 1.2 * i),
            markerfacecolor="none",
        )  # fmt: skip
    return style


def _style_axes(ax: Any, key: str, title: str) -> None:
    """Shared look: step axis, symlog for advantages, [0, 1] for rates, grid; the legend outside
    the axes, on the right, so that it never covers a curve."""
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    if key == "max_adv":
        ax.set_yscale("symlog", linthresh=1e-4)
    if key.startswith(("p@", "m@")):
        ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.figure.tight_layout()
