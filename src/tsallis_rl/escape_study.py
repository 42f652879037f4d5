"""The escape-time study: does T ~ p0^-(1-q) (q < 1) and T ~ log(1/p0) (q = 1) hold in a real network?

`tsallis-rl study escape` trains GARL over a grid q x dial x optimiser x seed with the trainer's own
runs (`suite.train_run`, in parallel worker processes as `run_suite` does). The chain-sum
difficulty dial (`chainsum?dial=D`) sets p0, the initial success probability; the validation split
is a small FIXED probe set evaluated every `eval_every` steps. This module then

- detects each run's escape step: the first probe evaluation whose mean log P-hat reaches
  `threshold_log_p` (separately: whose p@1 reaches `p1_threshold`); a run that never gets there is
  right-censored at its last step (`escape_time`);
- fits, per (q, optimiser), log T = a + b x + N(0, s^2) with x = log(1/p0) (and x = log log(1/p0))
  by maximum likelihood for interval-censored data (`censored_fit`, a Tobit model): an escape seen
  at evaluation step t after evaluation step t' is known only to lie in (t', t]; a censored run
  contributes P(T > last step); bootstrap intervals resample runs (`bootstrap_slope`);
- writes report.md, results.json and plots beside the theory's slope over the same p0 range.

The theory reference (`theory_time`) is the gradient-flow time to the study's own threshold
delta = exp(threshold_log_p), not only its asymptote: dP/dt ~ P^(2-q) takes
T ~ (p0^-(1-q) - delta^-(1-q)) / (1 - q) for q < 1 and T ~ log(delta / p0) at q = 1, so its slope
against log(1/p0) (or log log(1/p0)) depends on where p0 lies (`theory_slope`: the least-squares
slope over the runs' own p0, e.g. 0.263 for q = 0.75 between p0 = e^-13.8 and e^-21.7, and about
1.3 against log log(1/p0) at q = 1 for p0 from e^-14 to e^-40), tending to 1 - q (and to 1 at
q = 1) as p0 -> 0. `reanalyse` recomputes everything from a results.json's stored curves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import ConfigError
from tsallis_rl.io import read_jsonl, write_atomic, write_json, write_yaml
from tsallis_rl.models import basemodel
from tsallis_rl.suite import PoolJob, finished_result, train_pool
from tsallis_rl.tasks.chainsum import DIAL_FORMS

# --------------------------------------------------------------------------------------------------
# Pure functions: the detector and the censored fit

REGRESSORS = {
    "log_inv_p0": lambda log_inv_p0: log_inv_p0,
    "loglog_inv_p0": np.log,
}


@dataclass(frozen=True)
class EscapeTime:
    """When a run escaped, as an interval (lo, hi] of steps (lo = hi = exact; hi = inf = censored).

    `step` is the reported escape step: the first evaluation step at or past the threshold, or the
    last step for a censored run. `before_start` marks a run already past it at its first record.
    """

    step: int
    lo: float
    hi: float
    censored: bool
    before_start: bool = False


def escape_time(steps: np.ndarray, values: np.ndarray, threshold: float) -> EscapeTime:
    """First step at which `values` (e.g. mean log P-hat per evaluation, [N]) reaches `threshold`.

    `steps` [N] are the increasing evaluation steps. The escape happened in (previous step, step];
    a run that never reaches the threshold is right-censored at its last step (lo = last, hi = inf);
    one already past it at its first record is left-censored (lo = 0, hi = first step).
    """
    steps = np.asarray(steps, dtype=float)
    values = np.asarray(values, dtype=float)
    if steps.ndim != 1 or steps.shape != values.shape or steps.size == 0:
        raise ValueError("escape_time needs two 1-D arrays of the same, non-zero length")
    hit = np.flatnonzero(values >= threshold)
    if hit.size == 0:
        return EscapeTime(int(steps[-1]), float(steps[-1]), math.inf, censored=True)
    i = int(hit[0])
    if i == 0:
        return EscapeTime(int(steps[0]), 0.0, float(steps[0]), censored=False, before_start=True)
    return EscapeTime(int(steps[i]), float(steps[i - 1]), float(steps[i]), censored=False)


def _log_interval_prob(zl: np.ndarray, zh: np.ndarray) -> np.ndarray:
    """log(Phi(zh) - Phi(zl)) for zl < zh, accurate in both tails."""
    from scipy.special import log_ndtr

    upper = zl > 0  # both in the upper tail: use the mirrored difference Phi(-zl) - Phi(-zh)
    a = np.where(upper, log_ndtr(-zl), log_ndtr(zh))
    b = np.where(upper, log_ndtr(-zh), log_ndtr(zl))
    return a + np.log1p(-np.exp(np.minimum(b - a, -1e-300)))


def censored_nll(params: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Negative log-likelihood of y = a + b x + N(0, s^2) with y known to lie in [lo, hi].

    params = (a, b, log s); x, lo, hi [N] in log-step units; lo = hi is an exact observation
    (density), lo = -inf a left-censored and hi = +inf a right-censored one.
    """
    a, b, log_s = params
    s = math.exp(log_s)
    mu = a + b * x
    exact = lo == hi
    nll = 0.0
    if exact.any():
        z = (lo[exact] - mu[exact]) / s
        nll += float(np.sum(0.5 * z**2 + log_s + 0.5 * math.log(2 * math.pi)))
    if (~exact).any():
        zl = (lo[~exact] - mu[~exact]) / s
        zh = (hi[~exact] - mu[~exact]) / s
        nll -= float(np.sum(_log_interval_prob(zl, zh)))
    return nll


@dataclass(frozen=True)
class SlopeFit:
    """Censored-regression fit of log T on x: slope b, intercept a, residual scale s."""

    slope: float
    intercept: float
    sigma: float
    n: int
    n_censored: int


def censored_fit(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    min_sigma: float = 1e-3,
) -> SlopeFit | None:
    """Maximum-likelihood (interval-censored Tobit) fit of log T = a + b x + N(0, s^2).

    x, lo, hi [N]: regressor and the log-step interval that holds each run's log escape step.
    groups [N] (default x): the setting each run belongs to, e.g. its dial. Returns None when the
    slope is not identified: the runs whose escape was observed span fewer than two groups (all
    censored, or every observed escape at one dial setting, whose seeds differ in p0 by too little
    to carry a slope on their own).
    """
    from scipy.optimize import minimize

    x, lo, hi = (np.asarray(v, dtype=float) for v in (x, lo, hi))
    seen = np.isfinite(hi)
    if np.unique(np.asarray(x if groups is None else groups)[seen]).size < 2:
        return None
    # start: least squares on the interval midpoints (censored ones at their bound)
    mid = np.where(np.isfinite(lo) & np.isfinite(hi), (lo + hi) / 2, np.where(seen, hi, lo))
    b0, a0 = np.polyfit(x, mid, 1)
    resid = mid - (a0 + b0 * x)
    s0 = max(float(np.std(resid)), 0.1)
    res = minimize(
        censored_nll,
        np.array([a0, b0, math.log(s0)]),
        args=(x, lo, hi),
        method="L-BFGS-B",
        bounds=[(None, None), (None, None), (math.log(min_sigma), math.log(100.0))],
    )
    a, b, log_s = res.x
    return SlopeFit(float(b), float(a), math.exp(log_s), int(x.size), int((~seen).sum()))


def bootstrap_slope(
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict[str, float | int | None]:
    """Percentile bootstrap interval of the censored-fit slope, resampling runs with replacement.

    Resamples in which the slope is not identified (see `censored_fit`'s groups) are dropped and
    counted (`n_valid`).
    """
    x, lo, hi = (np.asarray(v, dtype=float) for v in (x, lo, hi))
    groups = x if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        fit = censored_fit(x[idx], lo[idx], hi[idx], groups=groups[idx])
        if fit is not None:
            slopes.append(fit.slope)
    if len(slopes) < max(10, n_boot // 10):
        return {"low": None, "high": None, "n_valid": len(slopes)}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(slopes, [tail, 100 - tail])
    return {"low": float(low), "high": float(high), "n_valid": len(slopes)}


def theory_log_time(q: float, log_inv_p0: np.ndarray, log_delta: float) -> np.ndarray:
    """log of the gradient-flow time from p0 to the threshold delta, up to an additive constant.

    log_inv_p0 [N] = log(1/p0); log_delta = log(delta) (the study's threshold_log_p, e.g. -5).
    dP/dt = c P^(2-q) gives T = (p0^-(1-q) - delta^-(1-q)) / (c (1-q)) for q < 1 and
    T = log(delta / p0) / c at q = 1. NaN where p0 >= delta (already escaped). Stable in log space
    for log(1/p0) in the thousands.
    """
    x = np.asarray(log_inv_p0, dtype=float)
    gap = x + log_delta  # log(delta / p0) > 0 when p0 < delta
    with np.errstate(divide="ignore", invalid="ignore"):
        if q >= 1.0:
            out = np.log(gap)
        else:
            a = 1.0 - q  # p0^-a - delta^-a = exp(a x) (1 - exp(-a gap))
            out = a * x + np.log(-np.expm1(-a * gap)) - math.log(a)
    return np.where(gap > 0, out, np.nan)


def theory_slope(
    q: float, regressor: str, log_inv_p0: np.ndarray | None = None, log_delta: float | None = None
) -> float:
    """The theory's slope of log T against the regressor (log(1/p0) or log log(1/p0)).

    With the runs' log(1/p0) [N] and the threshold log(delta): the least-squares slope of
    `theory_log_time` on the regressor over those points (the secant for two p0 values; the local
    derivative when all are equal), i.e. what a fit of exact gradient-flow times at the same p0
    would give. Without them: the asymptote as p0 -> 0, 1 - q against log(1/p0) and 1 against
    log log(1/p0) at q = 1 (NaN for q < 1 there).
    """
    if regressor not in REGRESSORS:
        raise ValueError(f"unknown regressor {regressor!r}")
    if log_inv_p0 is None or log_delta is None:
        if regressor == "log_inv_p0":
            return 1.0 - q
        return 1.0 if q == 1.0 else math.nan
    x = np.asarray(log_inv_p0, dtype=float)
    y = theory_log_time(q, x, log_delta)
    ok = np.isfinite(y) & (x > (1.0 if regressor == "loglog_inv_p0" else 0.0))
    x, y = x[ok], y[ok]
    if x.size == 0:
        return math.nan
    if np.ptp(x) < 1e-9:  # one p0: the local derivative
        h = 1e-4 * max(abs(x[0]), 1.0)
        xs = np.array([x[0] - h, x[0] + h])
        ys = theory_log_time(q, xs, log_delta)
        r = REGRESSORS[regressor](xs)
        return float((ys[1] - ys[0]) / (r[1] - r[0]))
    r = REGRESSORS[regressor](x)
    return float(np.polyfit(r, y, 1)[0])


def log_interval(times: list[EscapeTime]) -> tuple[np.ndarray, np.ndarray]:
    """[N] log-step bounds of the escape intervals (a lower bound of step 0 becomes -inf)."""
    lo = np.array([t.lo for t in times], dtype=float)
    hi = np.array([t.hi for t in times], dtype=float)
    with np.errstate(divide="ignore"):
        return np.log(lo), np.log(hi)


def fit_group(
    log_inv_p0: np.ndarray,
    times: list[EscapeTime],
    regressor: str,
    *,
    n_boot: int,
    seed: int,
    settings: np.ndarray | None = None,
) -> dict[str, Any]:
    """Censored fit + bootstrap of log escape step against one regressor of log(1/p0), [N] runs.

    Runs that escaped before their first record or whose p0 is not < 1 carry no slope information
    at the log scale and are left out (counted in `excluded`). `settings` [N] (the dial of each
    run), when given, are `censored_fit`'s groups: escapes at two or more settings identify a slope.
    """
    x_all = np.asarray(log_inv_p0, dtype=float)
    keep = np.array([not t.before_start for t in times]) & (x_all > 0)
    if regressor == "loglog_inv_p0":
        keep &= x_all > 1.0  # log log needs log(1/p0) > 1 to be positive; smaller p0 only
    kept = [t for t, k in zip(times, keep) if k]
    x = REGRESSORS[regressor](x_all[keep])
    lo, hi = log_interval(kept)
    groups = x if settings is None else np.asarray(settings)[keep]
    fit = censored_fit(x, lo, hi, groups=groups) if kept else None
    escaped = np.isfinite(hi)
    out: dict[str, Any] = {
        "regressor": regressor,
        "log_inv_p0": [float(v) for v in x_all[keep]],
        "settings_escaped": int(np.unique(groups[escaped]).size),
        "n": int(keep.sum()),
        "excluded": int((~keep).sum()),
        "n_censored": int(sum(t.censored for t in kept)),
        "slope": fit.slope if fit else None,
        "intercept": fit.intercept if fit else None,
        "sigma": fit.sigma if fit else None,
    }
    boot = bootstrap_slope(x, lo, hi, n_boot=n_boot, seed=seed, groups=groups) if fit else {}
    out["ci_low"], out["ci_high"] = boot.get("low"), boot.get("high")
    out["n_boot_valid"] = boot.get("n_valid", 0)
    return out


# --------------------------------------------------------------------------------------------------
# The grid: one TrainConfig per (q, dial, optimiser, seed), trained by suite.train_run

OPTIMIZERS = ("sgd", "adam", "adamw")  # the trainer's optimisers


@dataclass
class EscapeStudyConfig:
    """The study grid and the options it changes from TrainConfig's defaults (the rest are kept).

    The probe set is the run's validation split (`probe_size` problems, fixed by the seed and the
    same operands at every dial), evaluated with `eval_k` samples every `eval_every` steps.
    `max_grad_norm` = 0 leaves the optimisers unclipped, as in the theory's gradient flow.
    """

    q: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    dials: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "adam"])
    seeds: list[int] = field(default_factory=lambda: [0])
    lr: dict[str, float] = field(default_factory=lambda: {"sgd": 1e-2, "adam": 1e-4, "adamw": 1e-4})
    steps: int = 150
    eval_every: int = 5
    probe_size: int = 16
    eval_k: int = 4
    max_grad_norm: float = 0.0
    threshold_log_p: float = -5.0
    p1_threshold: float = 0.5
    bootstrap: int = 1000
    workers: int = 2
    threads: int = 2
    model: str | None = None

    def validate(self) -> EscapeStudyConfig:
        """Raise ConfigError naming the first bad grid value or option; returns self."""
        if not self.q or not self.dials or not self.optimizers or not self.seeds:
            raise ConfigError(
                "every grid (--q, --dial, --optimizers, --seeds) needs at least one value"
            )
        bad_q = [q for q in self.q if not 0.0 <= q <= 1.0]
        if bad_q:
            raise ConfigError(f"--q: every q must lie in [0, 1], got {bad_q}")
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown:
            raise ConfigError(f"--optimizers: unknown {unknown}; known: {', '.join(OPTIMIZERS)}")
        missing = [o for o in self.optimizers if self.lr.get(o, 0) <= 0]
        if missing:
            raise ConfigError(f"--lr: no positive learning rate for {missing}")
        bad_d = [d for d in self.dials if not 0 <= d < len(DIAL_FORMS)]
        if bad_d:
            raise ConfigError(f"--dial: settings {bad_d} outside 0..{len(DIAL_FORMS) - 1}")
        for name in ("steps", "eval_every", "probe_size", "eval_k", "workers", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.bootstrap < 0:
            raise ConfigError("--bootstrap must be >= 0")
        if self.model is not None and not Path(self.model).is_dir():
            raise ConfigError(
                f"--model {self.model}: no such folder (a saved chain-sum base model)"
            )
        for cfg in self.train_configs(Path(".")).values():
            cfg.validate("study")
        return self

    def grid(self) -> list[tuple[float, int, str, int]]:
        """(q, dial, optimiser, seed) of every run, in a stable order."""
        return [
            (q, d, o, s)
            for o in self.optimizers
            for q in self.q
            for d in self.dials
            for s in self.seeds
        ]

    def train_configs(self, out: Path) -> dict[str, Any]:
        """TrainConfig of every run, keyed by its tag (directory name under out/runs)."""
        configs = {}
        for q, d, opt, seed in self.grid():
            tag = run_name(q, d, opt, seed)
            configs[tag] = TrainConfig(
                model=self.model,
                task=f"chainsum?dial={d}",
                estimator="garl",
                estimators=None,
                q=float(q),
                optimizer=opt,
                lr=self.lr[opt],
                max_grad_norm=self.max_grad_norm,
                steps=self.steps,
                eval_every=self.eval_every,
                eval_k=self.eval_k,
                val_size=self.probe_size,
                test_size=0,
                save_every=0,
                seed=seed,
                threads=self.threads,
                workers=1,
                progress=False,
                out=str(out / "runs" / tag),
            )
        return configs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_name(q: float, dial: int, optimizer: str, seed: int) -> str:
    """Directory name of one run, e.g. garl_q0.75_dial2_sgd_s0."""
    return f"garl_q{q:g}_dial{dial}_{optimizer}_s{seed}"


def train_grid(
    cfg: Any, out: Path, *, resume: bool = False, runner: Callable[..., dict] | None = None
) -> dict[str, dict]:
    """Train every run of the grid (finished ones kept when `resume`) in `suite.train_pool`, up to
    `cfg.workers` side by side; returns final.json content by tag.

    The studies' one way to train a grid: `cfg` is any study config with `train_configs(out)`,
    `steps`, `workers`, `threads` and `model` (EscapeStudyConfig, noise_study.NoiseStudyConfig);
    `runner` replaces `suite.train_run` in the pool (the noise study's probing trainer)."""
    base = basemodel.BaseModelConfig(threads=cfg.threads)
    model_path = cfg.model or str(basemodel.ensure_base_model(base))
    configs = cfg.train_configs(out)
    results: dict[str, dict] = {}
    pending = []
    for tag, run_cfg in configs.items():
        finished = finished_result(Path(run_cfg.out), cfg.steps) if resume else None
        if finished is not None:
            results[tag] = finished
        else:
            pending.append(PoolJob(tag, run_cfg, Path(run_cfg.out)))
    results.update(
        train_pool(pending, model_path, workers=cfg.workers, threads=cfg.threads, runner=runner)
    )
    return {tag: results[tag] for tag in configs}


# --------------------------------------------------------------------------------------------------
# Analysis: curves -> escape steps -> fits


def probe_curve(run_dir: Path) -> dict[str, list[float]]:
    """The run's probe evaluations from its metrics.jsonl: step, mean log P-hat, p@1 (lists)."""

    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    evals.sort(key=lambda r: r["step"])
    return {
        "step": [float(r["step"]) for r in evals],
        "log_p_hat": [float(r["log_p_hat"]) for r in evals],
        "p@1": [float(r.get("p@1", 0.0)) for r in evals],
        "rationale_correct": [float(r.get("rationale_correct", math.nan)) for r in evals],
    }


def analyse(cfg: EscapeStudyConfig, out: Path) -> dict[str, Any]:
    """Escape steps of every run under out/runs and the per-(q, optimiser) censored fits."""
    runs = []
    for q, dial, opt, seed in cfg.grid():
        tag = run_name(q, dial, opt, seed)
        curve = probe_curve(out / "runs" / tag)
        if not curve["step"] or curve["step"][0] != 0:
            raise ValueError(f"run {tag}: no step-0 probe evaluation in its metrics.jsonl")
        steps = np.array(curve["step"])
        by_logp = escape_time(steps, np.array(curve["log_p_hat"]), cfg.threshold_log_p)
        by_p1 = escape_time(steps, np.array(curve["p@1"]), cfg.p1_threshold)
        runs.append(
            {
                "tag": tag, "q": q, "dial": dial, "optimizer": opt, "seed": seed,
                "initial_log_p": curve["log_p_hat"][0],
                "escape_log_p": dataclasses.asdict(by_logp),
                "escape_p1": dataclasses.asdict(by_p1),
                "final_log_p": curve["log_p_hat"][-1], "final_p1": curve["p@1"][-1],
                "curve": curve,
            }
        )  # fmt: skip
    return fit_runs(cfg, runs)


def reanalyse(cfg: EscapeStudyConfig, results: dict[str, Any]) -> dict[str, Any]:
    """`analyse` again from a results.json's stored runs (their probe curves): escape steps are
    re-detected with cfg's thresholds and every fit and theory slope recomputed; no run is needed.
    """
    runs = []
    for r in results["runs"]:
        steps = np.array(r["curve"]["step"])
        by_logp = escape_time(steps, np.array(r["curve"]["log_p_hat"]), cfg.threshold_log_p)
        by_p1 = escape_time(steps, np.array(r["curve"]["p@1"]), cfg.p1_threshold)
        runs.append(
            {**r, "escape_log_p": dataclasses.asdict(by_logp),
             "escape_p1": dataclasses.asdict(by_p1)}
        )  # fmt: skip
    out = fit_runs(cfg, runs)
    if "wall_seconds" in results:
        out["wall_seconds"] = results["wall_seconds"]
    return out


def fit_runs(cfg: EscapeStudyConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-(q, optimiser) censored fits of run records (escape times detected), beside the
    theory's slope over the same runs' p0 (`theory_slope` with the threshold) and its asymptote."""
    fits = []
    for opt in cfg.optimizers:
        for q in cfg.q:
            group = [r for r in runs if r["q"] == q and r["optimizer"] == opt]
            log_inv_p0 = np.array([-r["initial_log_p"] for r in group])
            dials = np.array([r["dial"] for r in group])
            for criterion in ("escape_log_p", "escape_p1"):
                times = [EscapeTime(**r[criterion]) for r in group]
                regressors = ["log_inv_p0"] + (["loglog_inv_p0"] if q == 1.0 else [])
                for reg in regressors:
                    res = fit_group(
                        log_inv_p0, times, reg, n_boot=cfg.bootstrap, seed=0, settings=dials
                    )
                    # the theory's time runs to the log P threshold; p@1 >= 0.5 lies beyond it
                    th = theory_slope(q, reg, np.array(res["log_inv_p0"]), cfg.threshold_log_p)
                    fits.append(
                        {"q": q, "optimizer": opt, "criterion": criterion,
                         "theory_slope": th, "asymptote_slope": theory_slope(q, reg), **res}
                    )  # fmt: skip
    dial_p0 = {}
    for dial in cfg.dials:
        vals = [r["initial_log_p"] for r in runs if r["dial"] == dial]
        dial_p0[str(dial)] = {"mean_initial_log_p": float(np.mean(vals)), "runs": len(vals)}
    return {"runs": runs, "fits": fits, "dials": dial_p0}


# --------------------------------------------------------------------------------------------------
# Outputs: results.json, report.md, plots

OUTPUT_NAMES = ("report.md", "results.json", "config.yaml", "escape_steps.png", "curves.png")
CRITERIA = {"escape_log_p": "mean log P-hat >= threshold", "escape_p1": "p@1 >= threshold"}


def _f(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fit_table(fits: list[dict[str, Any]]) -> str:
    """Markdown table of the slope fits beside the theory slope."""
    rows = [
        "| optimiser | q | criterion | regressor | slope | 95% bootstrap CI | theory (to delta) | asymptote | runs (censored) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in fits:
        ci = f"[{_f(f['ci_low'])}, {_f(f['ci_high'])}]" if f["ci_low"] is not None else "-"
        reg = "log(1/p0)" if f["regressor"] == "log_inv_p0" else "log log(1/p0)"
        asym = f.get("asymptote_slope", theory_slope(f["q"], f["regressor"]))
        rows.append(
            f"| {f['optimizer']} | {f['q']:g} | {f['criterion']} | {reg} | {_f(f['slope'])} | {ci} "
            f"| {_f(f['theory_slope'])} | {_f(asym, '.2f')} | {f['n']} ({f['n_censored']}) |"
        )
    return "\n".join(rows)


def run_table(runs: list[dict[str, Any]]) -> str:
    """Markdown table of every run: p0, escape steps (>N = censored at N), final probe numbers."""

    def show(e: dict[str, Any]) -> str:
        if e["censored"]:
            return f">{e['step']}"
        return f"<={e['step']}" if e["before_start"] else str(e["step"])

    rows = [
        "| optimiser | q | dial | seed | initial log P-hat | escape step (log P) | escape step (p@1) | final log P-hat | final p@1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rows.append(
            f"| {r['optimizer']} | {r['q']:g} | {r['dial']} | {r['seed']} | {r['initial_log_p']:.2f} "
            f"| {show(r['escape_log_p'])} | {show(r['escape_p1'])} | {r['final_log_p']:.2f} "
            f"| {r['final_p1']:.2f} |"
        )
    return "\n".join(rows)


def report_markdown(cfg: EscapeStudyConfig, results: dict[str, Any]) -> str:
    dials = "\n".join(
        f"| {d} | {v['mean_initial_log_p']:.2f} | {math.exp(v['mean_initial_log_p']):.2e} |"
        for d, v in results["dials"].items()
    )
    return f"""# Escape-time study

GARL over q = {cfg.q} x dial = {cfg.dials} x optimiser = {cfg.optimizers} x seed = {cfg.seeds};
{cfg.steps} steps each, learning rates { ({o: cfg.lr[o] for o in cfg.optimizers}) },
gradient clipping {cfg.max_grad_norm or "off"}. Probe set: the validation split
({cfg.probe_size} problems, {cfg.eval_k} samples each), evaluated every {cfg.eval_every} steps.

**Escape step**: the first probe evaluation with mean log P-hat >= {cfg.threshold_log_p:.3f}
(P-hat = {math.exp(cfg.threshold_log_p):.2f}), and separately with p@1 >= {cfg.p1_threshold}.
A run that never gets there is right-censored at its last step (shown `>N`).

**Fit**: per (optimiser, q), log T = a + b x + N(0, s^2), x = log(1/p0) (and log log(1/p0) at
q = 1), where p0 = exp(initial mean log P-hat on the probe set). Maximum likelihood for
interval-censored data (Tobit): an escape seen at evaluation step t is known only to lie in
(previous evaluation, t]; a censored run contributes P(T > last step). 95% percentile bootstrap
over runs ({cfg.bootstrap} resamples). Runs past the threshold at step 0 are left out.
Theory (gradient flow, METHOD.md section 3, run to this study's own threshold delta =
exp({cfg.threshold_log_p:g})): dP/dt ~ P^(2-q) takes T ~ p0^-(1-q) - delta^-(1-q) for q < 1 and
T ~ log(delta/p0) at q = 1. "theory (to delta)" is the least-squares slope of that log T against
the regressor over the same runs' p0, i.e. what exact gradient-flow times would fit here; it is
above the asymptote ("asymptote": 1 - q, and 1 against log log(1/p0) at q = 1, reached only as
p0 -> 0) because the threshold subtracts a constant. The p@1 criterion lies beyond the log P
threshold; the same theory slope is shown for it as a reference. A slope is `-` when it is not
identified (fewer than two dial settings with an observed escape); with few runs per group the
bootstrap interval is wide or missing.

## Dial: measured initial log P-hat

| dial | mean initial log P-hat | p0 |
|---|---|---|
{dials}

## Slopes

{fit_table(results["fits"])}

## Runs

{run_table(results["runs"])}

Plots: `escape_steps.png` (escape step against 1/p0, log-log, per q; open triangles are censored
runs at their last step; dashed lines are the theory's time to delta through the fitted line's
centre),
`curves.png` (probe log P-hat per run).
"""


def theory_curve(q: float, grid: np.ndarray, fit: dict[str, Any], log_delta: float) -> np.ndarray:
    """Escape steps the theory predicts on `grid` = log(1/p0) [G]: the gradient-flow time to delta
    (`theory_log_time`), scaled to meet the fitted line at the grid's centre; NaN where p0 >= delta."""
    mid = float(grid.mean())
    log_t_mid = fit["intercept"] + fit["slope"] * mid
    y = theory_log_time(q, grid, log_delta)
    return np.exp(log_t_mid + y - theory_log_time(q, np.array([mid]), log_delta)[0])


def plot_escape_steps(cfg: EscapeStudyConfig, results: dict[str, Any], path: Path) -> None:
    """Escape step (log P criterion) against 1/p0 on log-log axes, one panel per q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.q), figsize=(4.2 * len(cfg.q), 3.6), squeeze=False)
    colors = dict(zip(cfg.optimizers, ["C0", "C3", "C2"]))
    for ax, q in zip(axes[0], cfg.q):
        for opt in cfg.optimizers:
            group = [r for r in results["runs"] if r["q"] == q and r["optimizer"] == opt]
            for r in group:
                e = r["escape_log_p"]
                marker = "^" if e["censored"] else "o"
                face = "none" if e["censored"] else colors[opt]
                ax.scatter(math.exp(-r["initial_log_p"]), max(e["step"], 1), marker=marker,
                           facecolors=face, edgecolors=colors[opt], s=30)  # fmt: skip
            fit = next(
                (f for f in results["fits"] if f["q"] == q and f["optimizer"] == opt
                 and f["criterion"] == "escape_log_p" and f["regressor"] == "log_inv_p0"),
                None,
            )  # fmt: skip
            xs = np.array([-r["initial_log_p"] for r in group])
            if fit and fit["slope"] is not None and xs.size:
                grid = np.linspace(xs.min(), xs.max(), 20)
                ax.plot(np.exp(grid), np.exp(fit["intercept"] + fit["slope"] * grid),
                        color=colors[opt], label=f"{opt}: b = {fit['slope']:.2f}")  # fmt: skip
                th = theory_curve(q, grid, fit, cfg.threshold_log_p)
                ax.plot(np.exp(grid), th, "--", color=colors[opt], alpha=0.6,
                        label="theory: " + ("T ~ log(delta/p0)" if q == 1 else
                                            f"T ~ p0^-{1 - q:g} - delta^-{1 - q:g}"))  # fmt: skip
            else:
                ax.scatter([], [], color=colors[opt], label=f"{opt}: slope not identified")
        if any(
            r["escape_log_p"]["censored"] for r in results["runs"] if r["q"] == q
        ):  # the open-triangle marker, once per panel that has one
            ax.scatter([], [], marker="^", facecolors="none", edgecolors="0.4",
                       label="censored: no escape by its last step")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"GARL q = {q:g}", fontsize=9)
        ax.set_xlabel("1 / p0")
        ax.set_ylabel("escape step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(cfg: EscapeStudyConfig, results: dict[str, Any], path: Path) -> None:
    """Probe mean log P-hat against step for every run: rows = optimiser, columns = q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nr, nc = len(cfg.optimizers), len(cfg.q)
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 3.2 * nr), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, opt in enumerate(cfg.optimizers):
        for j, q in enumerate(cfg.q):
            ax = axes[i][j]
            for r in results["runs"]:
                if r["q"] != q or r["optimizer"] != opt:
                    continue
                k = cfg.dials.index(r["dial"])
                color = cmap(k / max(len(cfg.dials) - 1, 1))
                label = f"dial {r['dial']}" if r["seed"] == cfg.seeds[0] else None
                ax.plot(r["curve"]["step"], r["curve"]["log_p_hat"], color=color, lw=1, label=label)
            ax.axhline(cfg.threshold_log_p, color="k", ls=":", lw=0.8)
            ax.set_title(f"{opt}, q = {q:g}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("probe mean log P-hat")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("escape_steps.png", plot_escape_steps),
    ("curves.png", plot_curves),
)


def write_outputs(
    cfg: Any,
    results: dict[str, Any],
    out: Path,
    *,
    report: Callable[[Any, dict[str, Any]], str] | None = None,
    plots: tuple[tuple[str, Callable[..., None]], ...] | None = None,
    names: tuple[str, ...] = OUTPUT_NAMES,
) -> list[Path]:
    """results.json, config.yaml, report.md and the plots into `out` (atomic writes).

    The studies' one writer: `report(cfg, results)` gives report.md and each `plots` entry is
    (file name, plot(cfg, results, path)); defaults are this study's. Returns out / `names`.
    """
    write_json(out / "results.json", results, indent=1)
    write_yaml(out / "config.yaml", cfg.to_dict())
    write_atomic(out / "report.md", (report or report_markdown)(cfg, results))
    for name, plot in plots or PLOTS:
        tmp = out / f".{name}.tmp.png"
        plot(cfg, results, tmp)
        tmp.replace(out / name)
    return [out / n for n in names]
