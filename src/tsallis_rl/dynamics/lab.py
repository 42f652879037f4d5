"""The theory lab's experiments: each `run_*` takes a `TheoryConfig` and returns a JSON-ready dict
of every number it computed (no I/O here; `dynamics.report` writes report.md, PNGs, results.json).

    >>> from tsallis_rl.dynamics.lab import TheoryConfig, run_escape
    >>> res = run_escape(TheoryConfig.quick_grid())
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from tsallis_rl.dynamics.bias import (
    ESTIMATORS,
    bias_variance_point,
    fit_bias_slope,
    make_latent_model,
)
from tsallis_rl.dynamics.escape import (
    LatentModel,
    SigmoidModel,
    SoftmaxModel,
    fit_rate,
    sigmoid_escape_time,
    sigmoid_escape_time_asymptotic,
    simulate_escape,
)
from tsallis_rl.dynamics.landscape import escort_numerical, escort_objective
from tsallis_rl.dynamics.noise import (
    equilibrium_contamination,
    simulate_contamination,
    time_to_contamination,
)
from tsallis_rl.qlog import escort

SECTIONS = ("escape", "noise", "escort", "bias")
Progress = Callable[[int], None]


@dataclass
class TheoryConfig:
    """Every knob of `tsallis-rl theory`; written next to the results as config.yaml."""

    seed: int = 0
    delta: float = 0.5  # escape threshold on P
    escape_q: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    escape_p0_min: float = 1e-7
    escape_p0_max: float = 1e-3
    escape_n_p0: int = 9
    softmax_n: int = 10
    latent_z: int = 8
    noise_eps: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    noise_q: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    noise_eta: float = 1e-6  # fixed contamination level for the time-to-eta table
    noise_eta_frac: float = 0.01  # and eta = frac * pt* per (q, eps)
    escort_q: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    escort_sizes: list[int] = field(default_factory=lambda: [2, 5, 10])
    escort_draws: int = 3
    bias_q: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    bias_p: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.6])
    bias_m: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32, 64, 128, 256])
    bias_fit_m_min: int = 16  # the 1/M law is asymptotic: fit the slope on M >= this
    bias_replicates: int = 2000
    bias_z: int = 6

    @classmethod
    def quick_grid(cls, **overrides) -> TheoryConfig:
        """A small grid for tests and a first look (seconds)."""
        base = cls(
            escape_q=[0.0, 0.5, 1.0],
            escape_n_p0=5,
            noise_eps=[0.1],
            noise_q=[0.0, 0.5, 1.0],
            escort_q=[0.0, 0.5, 1.0],
            escort_sizes=[3],
            escort_draws=1,
            bias_q=[0.0, 0.5, 1.0],
            bias_p=[0.3],
            bias_m=[4, 16, 64],
            bias_fit_m_min=4,
            bias_replicates=500,
        )
        for k, v in overrides.items():
            setattr(base, k, v)
        return base

    def to_dict(self) -> dict:
        return asdict(self)

    def units(self, section: str) -> int:
        """Work units of a section, for the progress bar."""
        return {
            "escape": 3 * len(self.escape_q),
            "noise": len(self.noise_eps) * len(self.noise_q),
            "escort": len(self.escort_sizes) * self.escort_draws,
            "bias": len(self.bias_p) * len(self.bias_q),
        }[section]


def _noop(n: int) -> None:
    return None


# --------------------------------------------------------------------------------------------------


def run_escape(cfg: TheoryConfig, progress: Progress = _noop) -> dict:
    """Escape times vs p0 for each q on three models by ODE, the exact sigmoid integral, rate fits."""
    p0s = np.logspace(math.log10(cfg.escape_p0_max), math.log10(cfg.escape_p0_min), cfg.escape_n_p0)
    models = [
        SigmoidModel(),
        SoftmaxModel(n=cfg.softmax_n, seed=cfg.seed),
        LatentModel(z=cfg.latent_z, seed=cfg.seed),
    ]
    out: dict = {"p0": p0s.tolist(), "q": list(cfg.escape_q), "delta": cfg.delta, "models": {}}
    for model in models:
        rows = []
        for q in cfg.escape_q:
            times = [simulate_escape(model, float(p0), q, cfg.delta) for p0 in p0s]
            row = {"q": q, "ode_time": times, "fit": fit_rate(p0s, times, q)}
            if model.name == "sigmoid":
                exact = sigmoid_escape_time(p0s, q, cfg.delta)
                row["exact_time"] = exact.tolist()
                row["ode_vs_exact_max_rel_err"] = float(np.max(np.abs(np.array(times) / exact - 1)))
                row["exact_fit"] = fit_rate(p0s, exact, q)
                row["asymptotic_time"] = np.atleast_1d(
                    sigmoid_escape_time_asymptotic(p0s, q, cfg.delta)
                ).tolist()
            rows.append(row)
            progress(1)
        out["models"][model.name] = rows
    # Thm 5.2: T_q / T_q' grows without bound as p0 -> 0 for q < q' (exact sigmoid integral).
    qs = sorted(cfg.escape_q)
    wide = np.logspace(-1, -12, 12)
    out["ratio_p0"] = wide.tolist()
    out["ratios"] = [
        {
            "q": a,
            "q_prime": b,
            "ratio": (
                sigmoid_escape_time(wide, a, cfg.delta) / sigmoid_escape_time(wide, b, cfg.delta)
            ).tolist(),
        }
        for a, b in zip(qs[:-1], qs[1:])
    ]
    return out


def run_noise(cfg: TheoryConfig, progress: Progress = _noop) -> dict:
    """Prop. C.2: contamination curves, equilibria vs escort, time to reach eta vs the leading term."""
    out: dict = {"eps": list(cfg.noise_eps), "q": list(cfg.noise_q), "rows": [], "curves": []}
    for eps in cfg.noise_eps:
        positive = [q for q in cfg.noise_q if q > 0] or [1.0]
        t_end = 20.0 * max(
            equilibrium_contamination(q, eps) ** (q + 1) / ((q + 1) * eps) for q in positive
        )
        times = np.logspace(math.log10(t_end) - 12.0, math.log10(t_end), 80)
        for q in cfg.noise_q:
            pt_star = equilibrium_contamination(q, eps)
            alpha = torch.tensor([1.0 - eps, eps], dtype=torch.float64)
            curve = simulate_contamination(q, eps, times)
            logit_end = float(
                simulate_contamination(q, eps, [0.0, 1e3 / eps], param="logit", pt0=0.5)[-1]
            )
            eta_rel = cfg.noise_eta_frac * pt_star
            row = {
                "eps": eps,
                "q": q,
                "equilibrium_root": pt_star,
                "equilibrium_ode_direct": float(curve[-1]),
                "equilibrium_ode_logit": logit_end,
                "escort": float(escort(alpha, q)[1]),
                "approx": (eps / (1 - eps)) ** (1 / q) if q > 0 else 0.0,
                "eta_fixed": cfg.noise_eta,
                "time_eta_fixed": time_to_contamination(q, eps, cfg.noise_eta),
                "eta_rel": eta_rel,
                "time_eta_rel": time_to_contamination(q, eps, eta_rel)
                if q > 0
                else {"quadrature": math.inf, "ode": math.inf, "theory": math.inf},
            }
            out["rows"].append(row)
            out["curves"].append({"eps": eps, "q": q, "t": times.tolist(), "pt": curve.tolist()})
            progress(1)
    return out


def run_escort(cfg: TheoryConfig, progress: Progress = _noop) -> dict:
    """Thm 3.1: the numerical minimiser of sum alpha_j (-log_q theta_j) vs `escort(alpha, q)`."""
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for j in cfg.escort_sizes:
        for d in range(cfg.escort_draws):
            alpha = rng.dirichlet(np.ones(j))
            for q in cfg.escort_q:
                theta, info = escort_numerical(alpha, q, seed=cfg.seed + d)
                closed = escort(torch.tensor(alpha), q).numpy()
                rows.append(
                    {
                        "size": j,
                        "draw": d,
                        "q": q,
                        "alpha": alpha.tolist(),
                        "numerical": theta.tolist(),
                        "closed_form": closed.tolist(),
                        "max_abs_err": float(np.max(np.abs(theta - closed))),
                        "objective_numerical": info["objective"],
                        "objective_closed_form": escort_objective(
                            np.maximum(closed, 1e-300), alpha, q
                        ),
                        "mode_mass": float(closed[np.argmax(alpha)]),
                    }
                )
            progress(1)
    return {"rows": rows, "max_abs_err": max(r["max_abs_err"] for r in rows)}


def run_bias(cfg: TheoryConfig, progress: Progress = _noop) -> dict:
    """Thm 6.1 / Props D.3-D.4: bias and variance of GARL (plug-in, RLOO) and PAFT vs M."""
    gen = torch.Generator().manual_seed(cfg.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [R, M] ops on a few MB: threads only add contention
    try:
        blocks = []
        for p in cfg.bias_p:
            model = make_latent_model(p, z=cfg.bias_z, seed=cfg.seed)
            for q in cfg.bias_q:
                points = [
                    bias_variance_point(model, q, m, cfg.bias_replicates, gen) for m in cfg.bias_m
                ]
                fits = {}
                if q > 0:
                    keep = [i for i, m in enumerate(cfg.bias_m) if m >= cfg.bias_fit_m_min]
                    ms = [cfg.bias_m[i] for i in keep]
                    for name in ESTIMATORS:
                        norms = [points[i][name]["bias_norm"] for i in keep]
                        ses = [points[i][name]["bias_se_norm"] for i in keep]
                        fits[name] = fit_bias_slope(ms, norms, ses)
                        fits[name]["slope_all_m"] = fit_bias_slope(
                            cfg.bias_m, [pt[name]["bias_norm"] for pt in points]
                        )["slope"]
                blocks.append(
                    {
                        "P": model.success,
                        "q": q,
                        "points": points,
                        "fits": fits,
                        "theta": {"phi": model.phi.tolist(), "psi": model.psi.tolist()},
                    }
                )
                progress(1)
    finally:
        torch.set_num_threads(threads)
    return {"M": list(cfg.bias_m), "replicates": cfg.bias_replicates, "blocks": blocks}


RUNNERS = {"escape": run_escape, "noise": run_noise, "escort": run_escort, "bias": run_bias}
