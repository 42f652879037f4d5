"""The escort minimiser (Thm 3.1) found by numerical optimisation, to check `qlog.escort`.

    minimise  L(theta) = sum_j alpha_j (-log_q theta_j)  over the simplex.

For q in (0, 1] L is convex and its minimiser is interior: we optimise the softmax logits with
L-BFGS-B and an analytic gradient (theta = softmax(phi), dL/dphi = theta * (g - theta . g) with
g_j = -alpha_j theta_j**-q). At q = 0 L = 1 - alpha . theta is linear and we solve the linear
programme (HiGHS); ties are split evenly, as `escort` does.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog, minimize


def escort_objective(theta: np.ndarray, alpha: np.ndarray, q: float) -> float:
    """sum_j alpha_j (-log_q theta_j) in float64 (the q = 1 pole is the cross-entropy)."""
    if q == 1.0:
        return float(-(alpha * np.log(theta)).sum())
    return float((alpha * (1.0 - theta ** (1.0 - q)) / (1.0 - q)).sum())


def escort_numerical(alpha, q: float, *, seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """Numerical minimiser of sum_j alpha_j (-log_q theta_j) on the simplex; returns (theta, info)."""
    a = np.asarray(alpha, dtype=np.float64)
    a = a / a.sum()
    if q == 0.0:
        res = linprog(-a, A_eq=np.ones((1, a.size)), b_eq=[1.0], bounds=[(0, 1)] * a.size)
        theta = res.x
        ties = np.isclose(a, a.max(), rtol=0, atol=1e-15)
        if ties.sum() > 1:  # the LP face is a whole set of ties: report its centre, like escort()
            theta = ties / ties.sum()
        return theta, {
            "objective": escort_objective(np.maximum(theta, 1e-300), a, q),
            "nit": res.nit,
        }

    def fun(phi: np.ndarray) -> tuple[float, np.ndarray]:
        log_theta = phi - phi.max()
        log_theta -= np.log(np.exp(log_theta).sum())
        theta = np.exp(log_theta)
        if q == 1.0:
            value = float(-(a * log_theta).sum())
        else:
            value = float((a * -np.expm1((1.0 - q) * log_theta)).sum() / (1.0 - q))
        g = -a * np.exp(-q * log_theta)  # dL/dtheta
        return value, theta * (g - theta @ g)

    rng = np.random.default_rng(seed)
    res = minimize(
        fun,
        rng.normal(size=a.size),
        jac=True,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 10_000, "maxcor": 30},
    )
    phi = res.x - res.x.max()
    theta = np.exp(phi) / np.exp(phi).sum()
    return theta, {"objective": float(res.fun), "nit": int(res.nit)}
