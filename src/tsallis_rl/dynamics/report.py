"""Render the theory lab's results: report.md (tables), PNG plots, results.json.

`render(results, out_dir, config)` writes every file atomically (`tsallis_rl.io`; non-finite numbers
are null in results.json). Matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tsallis_rl.io import write_atomic, write_json, write_yaml

OUTPUT_NAMES = (
    "report.md",
    "results.json",
    "config.yaml",
    "escape.png",
    "noise.png",
    "escort.png",
    "bias.png",
    "variance.png",
)


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_fmt(c) if isinstance(c, float) else str(c) for c in r) + " |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _save_fig(fig, path: Path) -> None:
    """Write `fig` as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())
    plt.close(fig)


def _label(ax, title: str, xlabel: str, ylabel: str | None = None, legend_size: int = 7) -> None:
    """Title, axis labels, a log-friendly grid and a small legend."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=legend_size)


# --------------------------------------------------------------------------------------------------


def _escape_md(res: dict) -> str:
    md = ["## Escape from a cold start (Thm 5.1-5.2, App. C.1)\n"]
    md.append(
        f"Gradient flow on l_q from P = p0 to P = {res['delta']}, simulated as an ODE (scipy DOP853, "
        "event at P = delta) on three exact models: the sigmoid toy P = sigma(theta); a softmax over "
        "N answers with one gold; a latent-rationale model (softmax p(z|x), fixed p(y*|z)). "
        "Rate fit over p0 in "
        f"[{min(res['p0']):.0e}, {max(res['p0']):.0e}]: log-log slope of T against 1/p0 for q < 1 "
        "(theory 1 - q); T = a + b log(1/p0) at q = 1 (theory: linear), with R^2.\n"
    )
    rows = []
    for name, mrows in res["models"].items():
        for r in mrows:
            f = r["fit"]
            th = f["theory_slope"]
            rows.append(
                [
                    name,
                    r["q"],
                    f["kind"],
                    f["slope"],
                    th,
                    abs(f["slope"] - th) if not math.isnan(th) else float("nan"),
                    f"{f['r2']:.9f}",
                ]
            )
    md.append(_table(["model", "q", "fit", "fitted slope", "theory", "abs diff", "R^2"], rows))
    sig = res["models"].get("sigmoid", [])
    if sig:
        md.append(
            "\nSigmoid model: ODE escape time against the exact integral "
            "T_q = int du / (u^(2-q) (1-u)^2), and the exact integral's own rate fit.\n"
        )
        md.append(
            _table(
                [
                    "q",
                    "max rel err ODE vs exact",
                    "exact-integral slope",
                    "exact R^2",
                    "T(p0 min) exact",
                    "leading term",
                ],
                [
                    [
                        r["q"],
                        r["ode_vs_exact_max_rel_err"],
                        r["exact_fit"]["slope"],
                        f"{r['exact_fit']['r2']:.9f}",
                        r["exact_time"][-1],
                        r["asymptotic_time"][-1],
                    ]
                    for r in sig
                ],
            )
        )
    md.append("\nThm 5.2: T_q / T_q' grows without bound as p0 -> 0 (exact sigmoid integral).\n")
    p0s = res["ratio_p0"]
    idx = [0, len(p0s) // 2, len(p0s) - 1]
    md.append(
        _table(
            ["q", "q'"] + [f"p0={p0s[i]:.0e}" for i in idx],
            [[r["q"], r["q_prime"]] + [r["ratio"][i] for i in idx] for r in res["ratios"]],
        )
    )
    md.append("\n![escape times](escape.png)\n")
    return "\n".join(md)


def _escape_plot(res: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(res["models"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    inv = 1.0 / np.asarray(res["p0"])
    for ax, name in zip(axes[0], names):
        for r in res["models"][name]:
            line = ax.loglog(inv, r["ode_time"], "o", ms=4, label=f"q={r['q']} ODE")[0]
            if "exact_time" in r:
                ax.loglog(inv, r["exact_time"], "-", color=line.get_color(), lw=1)
        _label(ax, f"{name}: escape time to P={res['delta']}", "1/p0", "T")
    _save_fig(fig, out / "escape.png")


def _noise_md(res: dict) -> str:
    md = ["## Label-noise memorisation (Prop. C.2)\n"]
    md.append(
        "Two labels, flip rate eps. Equilibrium contamination pt*: Brent root of the drift, long-time "
        "ODE state (direct parametrisation from the clean start pt = 0, and logit parametrisation "
        "from pt = 0.5), the escort minimiser escort([1-eps, eps], q)[1], and (eps/(1-eps))^(1/q).\n"
    )
    md.append(
        _table(
            [
                "eps",
                "q",
                "pt* root",
                "pt* ODE direct",
                "pt* ODE logit",
                "escort",
                "(eps/(1-eps))^(1/q)",
            ],
            [
                [
                    r["eps"],
                    r["q"],
                    r["equilibrium_root"],
                    r["equilibrium_ode_direct"],
                    r["equilibrium_ode_logit"],
                    r["escort"],
                    r["approx"],
                ]
                for r in res["rows"]
            ],
        )
    )
    md.append(
        "\nTime for the clean model (pt = 0) to reach contamination eta: quadrature, ODE event, and "
        "the leading term eta^(q+1) / ((q+1) eps) (inf: never, as at q = 0).\n"
    )
    rows = []
    for r in res["rows"]:
        for key, eta in (("time_eta_fixed", r["eta_fixed"]), ("time_eta_rel", r["eta_rel"])):
            t = r[key]
            ratio = t["quadrature"] / t["theory"] if math.isfinite(t["theory"]) else float("nan")
            rows.append([r["eps"], r["q"], eta, t["quadrature"], t["ode"], t["theory"], ratio])
    md.append(_table(["eps", "q", "eta", "T quadrature", "T ODE", "leading term", "ratio"], rows))
    md.append("\n![contamination](noise.png)\n")
    return "\n".join(md)


def _noise_plot(res: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    eps_list = res["eps"]
    fig, axes = plt.subplots(1, len(eps_list), figsize=(5 * len(eps_list), 4), squeeze=False)
    for ax, eps in zip(axes[0], eps_list):
        for c in res["curves"]:
            if c["eps"] != eps:
                continue
            pt = np.asarray(c["pt"])
            if pt.max() <= 0:
                ax.plot([], [], label=f"q={c['q']} (stays 0)")
                continue
            ax.loglog(c["t"], np.where(pt > 0, pt, np.nan), label=f"q={c['q']}")
        _label(ax, f"contamination from a clean start, eps={eps}", "t", "p(noise label)")
    _save_fig(fig, out / "noise.png")


def _escort_md(res: dict) -> str:
    md = ["## Escort minimiser (Thm 3.1)\n"]
    md.append(
        "argmin over the simplex of sum_j alpha_j (-log_q theta_j) by L-BFGS-B on softmax logits "
        "(linear programme at q = 0), against escort(alpha, q) = alpha^(1/q) / sum. "
        f"Largest absolute difference over all cases: {_fmt(res['max_abs_err'])}.\n"
    )
    md.append(
        _table(
            [
                "J",
                "draw",
                "q",
                "max abs err",
                "objective (numerical)",
                "objective (closed form)",
                "mass on mode",
            ],
            [
                [
                    r["size"],
                    r["draw"],
                    r["q"],
                    r["max_abs_err"],
                    r["objective_numerical"],
                    r["objective_closed_form"],
                    r["mode_mass"],
                ]
                for r in res["rows"]
            ],
        )
    )
    md.append("\n![escort](escort.png)\n")
    return "\n".join(md)


def _escort_plot(res: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    num = np.concatenate([r["numerical"] for r in res["rows"]])
    cf = np.concatenate([r["closed_form"] for r in res["rows"]])
    ax.plot([0, 1], [0, 1], "k-", lw=0.8)
    ax.plot(cf, num, "o", ms=4)
    ax.set_xlabel("escort(alpha, q)")
    ax.set_ylabel("numerical minimiser")
    ax.set_title("escort minimiser: optimiser vs closed form")
    _save_fig(fig, out / "escort.png")


def _bias_md(res: dict) -> str:
    md = ["## Estimator bias and variance (Thm 6.1, Props D.3-D.4)\n"]
    md.append(
        "Latent model with exact grad l_q by enumeration; "
        f"{res['replicates']} Monte Carlo replicates per M, all batched into one [R, M] call of "
        "garl_loss / paft_loss (normalize=False). Bias = mean(estimate - oracle), where the oracle "
        "g_bar / P^q plus a centred first-order term has known mean grad l_q (a control variate). "
        "GARL plug-in is the most precise; RLOO and PAFT carry extra zero-mean noise (baseline, "
        "resampling), so their direct bias estimates are noisier (slope fits weighted by 1/se^2). "
        "Slope: log ||bias|| against log M.\n"
    )
    rows = []
    for b in res["blocks"]:
        last = b["points"][-1]
        if b["fits"]:
            fp = b["fits"]
            rows.append(
                [
                    b["P"],
                    b["q"],
                    f"{fp['garl_plugin']['slope']:.3f} +- {fp['garl_plugin']['slope_se']:.3f}",
                    fp["garl_plugin"]["slope_all_m"],
                    f"{fp['garl_rloo']['slope']:.3f} +- {fp['garl_rloo']['slope_se']:.3f}",
                    f"{fp['paft']['slope']:.3f} +- {fp['paft']['slope_se']:.3f}",
                    last["garl_plugin"]["bias_norm"],
                    last["leading_norm"],
                    last["garl_plugin"]["rel_err_vs_leading"],
                ]
            )
        else:
            rows.append(
                [
                    b["P"],
                    b["q"],
                    "(q = 0)",
                    float("nan"),
                    "-",
                    "-",
                    last["garl_plugin"]["bias_norm"],
                    last["leading_norm"],
                    float("nan"),
                ]
            )
    md.append(
        _table(
            [
                "P",
                "q",
                "plug-in slope (fit M)",
                "plug-in slope (all M)",
                "RLOO slope",
                "PAFT slope",
                f"||bias|| plug-in @M={res['M'][-1]}",
                "||leading term||",
                "rel err vs leading",
            ],
            rows,
        )
    )
    md.append(
        "\nq = 0 (RB-RLOO): bias against its standard error, and the equal-mean checks: max |z| over "
        "coordinates of mean(RLOO - plug-in) and mean(PAFT - plug-in) (same pools), over all M.\n"
    )
    rows = []
    for b in res["blocks"]:
        pts = b["points"]
        rows.append(
            [
                b["P"],
                b["q"],
                max(p["garl_plugin"]["bias_norm"] for p in pts) if b["q"] == 0 else "-",
                max(p["garl_rloo"]["bias_norm"] / p["garl_rloo"]["bias_se_norm"] for p in pts)
                if b["q"] == 0
                else "-",
                max(p["rloo_minus_plugin_max_z"] for p in pts),
                max(p["paft_minus_plugin_max_z"] for p in pts),
                min(p["paft"]["variance"] / p["garl_plugin"]["variance"] for p in pts),
                min(p["paft"]["variance"] / p["garl_rloo"]["variance"] for p in pts),
            ]
        )
    md.append(
        _table(
            [
                "P",
                "q",
                "max ||bias|| plug-in (q=0)",
                "max ||bias||/se RLOO (q=0)",
                "max z RLOO-plugin",
                "max z PAFT-plugin",
                "min Var(PAFT)/Var(plug-in)",
                "min Var(PAFT)/Var(RLOO)",
            ],
            rows,
        )
    )
    md.append(
        "\nPer-M detail (plug-in GARL): bias along the leading term's direction, with its se.\n"
    )
    rows = []
    for b in res["blocks"]:
        if b["q"] == 0:
            continue
        for p in b["points"]:
            g = p["garl_plugin"]
            rows.append(
                [
                    b["P"],
                    b["q"],
                    p["M"],
                    g["bias_norm"],
                    g["bias_se_norm"],
                    p["leading_norm"],
                    g["bias_along_leading"],
                    g["rel_err_vs_leading"],
                    g["raw_bias_norm"],
                    g["raw_bias_se_norm"],
                ]
            )
    md.append(
        _table(
            [
                "P",
                "q",
                "M",
                "||bias||",
                "se",
                "||leading||",
                "bias . lead/||lead||",
                "rel err",
                "raw ||bias||",
                "raw se",
            ],
            rows,
        )
    )
    md.append("\n![bias](bias.png)\n\n![variance](variance.png)\n")
    return "\n".join(md)


def _bias_plot(res: dict, out: Path) -> None:
    fig, fig2 = bias_figures(res)
    _save_fig(fig, out / "bias.png")
    _save_fig(fig2, out / "variance.png")


def bias_figures(res: dict) -> tuple[Any, Any]:
    """Bias and variance vs M, one panel per P: short panel titles, the shared legend key above."""
    import matplotlib.pyplot as plt

    ps = sorted({round(b["P"], 6) for b in res["blocks"]})
    fig, axes = plt.subplots(1, len(ps), figsize=(5 * len(ps), 4), squeeze=False)
    fig2, axes2 = plt.subplots(1, len(ps), figsize=(5 * len(ps), 4), squeeze=False)
    ms = np.asarray(res["M"])
    for ax, ax2, p in zip(axes[0], axes2[0], ps):
        for b in res["blocks"]:
            if round(b["P"], 6) != p:
                continue
            pts = b["points"]
            if b["q"] > 0:
                bias = [x["garl_plugin"]["bias_norm"] for x in pts]
                se = [x["garl_plugin"]["bias_se_norm"] for x in pts]
                line = ax.errorbar(ms, bias, yerr=se, fmt="o", ms=4, label=f"q={b['q']} GARL")[0]
                ax.loglog(ms, [x["leading_norm"] for x in pts], "-", color=line.get_color(), lw=1)
                ax.loglog(
                    ms, [x["paft"]["bias_norm"] for x in pts], "x", color=line.get_color(), ms=4
                )
            for name, mk in (("garl_plugin", "-"), ("garl_rloo", "--"), ("paft", ":")):
                ax2.loglog(ms, [x[name]["variance"] for x in pts], mk, label=f"q={b['q']} {name}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _label(ax, f"P = {p:g}", "M", "||bias||")
        _label(ax2, f"P = {p:g}", "M", "tr Cov of the estimate", legend_size=6)
    fig.suptitle("||bias|| vs M (o GARL plug-in, x PAFT, line: leading term)")
    fig2.suptitle("variance of the estimate vs M")
    for f in (fig, fig2):
        f.tight_layout()
    return fig, fig2


SECTION_RENDER = {
    "escape": (_escape_md, _escape_plot),
    "noise": (_noise_md, _noise_plot),
    "escort": (_escort_md, _escort_plot),
    "bias": (_bias_md, _bias_plot),
}


def render(results: dict, out_dir: Path, config: dict, timings: dict[str, float]) -> list[Path]:
    """Write report.md, one PNG per section (two for bias), results.json and config.yaml."""
    import matplotlib

    matplotlib.use("Agg")

    out = Path(out_dir)
    md = [
        "# tsallis-rl theory lab\n",
        "Every number below comes from an integration, an optimisation or a Monte Carlo run "
        "(results.json holds them all; config.yaml the settings).\n",
        _table(["section", "seconds"], [[k, v] for k, v in timings.items()]),
    ]
    for name, res in results.items():
        md_fn, plot_fn = SECTION_RENDER[name]
        md.append(md_fn(res))
        plot_fn(res, out)
    write_atomic(out / "report.md", "\n".join(md))
    payload = {"config": config, "timings_s": timings, "results": results}
    write_json(out / "results.json", payload, indent=1)
    write_yaml(out / "config.yaml", config)
    return sorted(p for p in out.iterdir() if p.name in OUTPUT_NAMES)
