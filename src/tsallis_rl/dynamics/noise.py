"""Label-noise memorisation under gradient flow on l_q (METHOD.md section 3, Prop. C.2).

One input, a clean label and a noise label seen with frequency eps. With contamination
pt = p(noise label), the expected loss is J(pt) = (1 - eps)(-log_q(1 - pt)) + eps(-log_q pt) and
    dpt/dt = [eps pt**-q - (1 - eps)(1 - pt)**-q] * ||grad pt||^2.
Two parametrisations:
- "direct": theta = pt itself (a point of the simplex), ||grad pt||^2 = 1. Started at the clean model
  pt = 0 it reaches contamination eta << pt* in time ~ eta**(q+1) / ((q+1) eps) for q > 0 and never
  at q = 0 (the projected flow stays at pt = 0). Integrated in v = pt**(q+1), where the flow
  v' = (q+1)[eps - (1-eps) pt**q (1-pt)**-q] is smooth even at pt = 0.
- "logit": pt = sigmoid(theta), ||grad pt||^2 = pt^2 (1-pt)^2 (the softmax score).
Both settle at the root pt* of the bracket, which is the escort minimiser (Thm 3.1) of the label
frequencies [1 - eps, eps]: pt*/(1 - pt*) = (eps/(1-eps))**(1/q), so pt* ~ (eps/(1-eps))**(1/q).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad, solve_ivp
from scipy.optimize import brentq


def noise_drift(pt, q: float, eps: float):
    """The bracket eps pt**-q - (1-eps)(1-pt)**-q = -dJ/dpt (positive below pt*, negative above)."""
    pt = np.asarray(pt, dtype=np.float64)
    return eps * pt ** (-q) - (1.0 - eps) * (1.0 - pt) ** (-q)


def equilibrium_contamination(q: float, eps: float) -> float:
    """The stable root pt* in (0, 1/2) of the drift, by Brent's method in log pt (0 at q = 0)."""
    if q == 0.0:
        return 0.0

    def log_gap(s: float) -> float:  # log(eps pt**-q) - log((1-eps)(1-pt)**-q), pt = e**s
        return math.log(eps) - q * s - math.log1p(-eps) + q * math.log1p(-math.exp(s))

    return math.exp(brentq(log_gap, -700.0, math.log(0.5), xtol=1e-14, rtol=1e-15))


def _direct_v_rhs(v: float, q: float, eps: float) -> float:
    pt = max(v, 0.0) ** (1.0 / (q + 1.0))
    drift = (q + 1.0) * (eps - (1.0 - eps) * (pt / (1.0 - pt)) ** q)
    return 0.0 if (v <= 0.0 and drift < 0.0) else drift  # projected flow at the boundary pt = 0


def simulate_contamination(
    q: float, eps: float, times, *, param: str = "direct", pt0: float = 0.0, rtol: float = 1e-10
) -> np.ndarray:
    """Contamination pt(t) at the given increasing times (t >= 0) under gradient flow on J.

    param "direct" (pt0 may be 0) or "logit" (pt0 in (0, 1)). Returns an array like `times`.
    """
    t = np.asarray(times, dtype=np.float64)
    span = (0.0, float(t[-1]))
    if param == "direct":
        sol = solve_ivp(
            lambda s, y: [_direct_v_rhs(y[0], q, eps)],
            span,
            [pt0 ** (q + 1.0)],
            t_eval=t,
            method="DOP853",
            rtol=rtol,
            atol=1e-30,
        )
        return np.maximum(sol.y[0], 0.0) ** (1.0 / (q + 1.0))
    if param == "logit":
        if not 0.0 < pt0 < 1.0:
            raise ValueError("the logit parametrisation needs 0 < pt0 < 1")

        def rhs(s, y):
            pt = 1.0 / (1.0 + math.exp(-y[0]))
            return [float(noise_drift(pt, q, eps)) * pt * (1.0 - pt)]  # theta' = -dJ/dtheta

        sol = solve_ivp(
            rhs,
            span,
            [math.log(pt0 / (1.0 - pt0))],
            t_eval=t,
            method="LSODA",
            rtol=rtol,
            atol=1e-12,
        )
        return 1.0 / (1.0 + np.exp(-sol.y[0]))
    raise ValueError(f"param must be 'direct' or 'logit', got {param!r}")


def time_to_contamination(q: float, eps: float, eta: float) -> dict[str, float]:
    """Time for the direct parametrisation, started clean (pt = 0), to reach contamination eta.

    Returns the time by quadrature of dv / v' (v = pt**(q+1)), by ODE simulation with an event,
    and the Prop. C.2 leading term eta**(q+1) / ((q+1) eps); inf where eta >= pt* or q = 0.
    """
    theory = eta ** (q + 1.0) / ((q + 1.0) * eps) if q > 0 else math.inf
    if q == 0.0 or eta >= equilibrium_contamination(q, eps):
        return {"quadrature": math.inf, "ode": math.inf, "theory": theory}
    v_eta = eta ** (q + 1.0)
    quad_t, _ = quad(lambda v: 1.0 / _direct_v_rhs(v, q, eps), 0.0, v_eta, epsabs=0.0, epsrel=1e-12)

    def event(s, y):
        return y[0] - v_eta

    event.terminal = True
    sol = solve_ivp(
        lambda s, y: [_direct_v_rhs(y[0], q, eps)],
        (0.0, 1e6 * quad_t + 1.0),
        [0.0],
        method="DOP853",
        rtol=1e-10,
        atol=1e-30,
        events=event,
    )
    ode_t = float(sol.t_events[0][0]) if len(sol.t_events[0]) else math.inf
    return {"quadrature": float(quad_t), "ode": ode_t, "theory": theory}
