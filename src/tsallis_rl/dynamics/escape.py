"""Cold-start escape times under gradient flow on l_q (METHOD.md section 3, Thm 5.1-5.2, App. C.1).

- `sigmoid_escape_time(p0, q, delta)`: the exact escape time of the sigmoid toy P = sigma(theta),
      T_q(p0, delta) = int_{p0}^{delta} du / (u**(2-q) (1-u)**2),
  from the series (1-u)**-2 = sum_k (k+1) u**k integrated term by term. Each term is
      (k+1) (delta**e - p0**e) / e = (k+1) delta**e * (-expm1(-e L)) / e,   e = k + q - 1, L = log(delta/p0),
  which is positive, free of cancellation, and tends to (k+1) L as e -> 0 (the q = 1 and q = 0 logs),
  so the sum is accurate to a few ulps for any p0 in (0, delta], q in [0, 1], delta < 1.
- Three exact models under the gradient flow theta' = -grad l_q = P**-q grad P (`SigmoidModel`,
  `SoftmaxModel`, `LatentModel`), integrated by `simulate_escape` with an event at P = delta.
- `fit_rate`: the log-log slope of T against 1/p0 (theory 1 - q) or the line T = a + b log(1/p0) (q = 1).

Example:
    >>> sigmoid_escape_time(1e-6, 0.5)   # ~ 2 / sqrt(1e-6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import solve_ivp
from scipy.special import expit, log_expit, logsumexp, softmax

# --------------------------------------------------------------------------------------------------
# Exact escape time of the sigmoid toy model


def _check_escape_args(p0: np.ndarray, q: float, delta: float) -> None:
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if not np.all((p0 > 0.0) & (p0 <= delta)):
        raise ValueError(f"p0 must lie in (0, delta={delta}], got {p0}")


def sigmoid_escape_time(p0, q: float, delta: float = 0.5):
    """Exact T_q(p0, delta) = int_{p0}^{delta} u**(q-2) (1-u)**-2 du for the sigmoid toy.

    p0: float or array in (0, delta]; q in [0, 1]; delta in (0, 1). Returns a float or an array of
    p0's shape. Relative accuracy ~1e-15 (see the module docstring for the series used).
    """
    q = float(q)
    delta = float(delta)
    arr = np.asarray(p0, dtype=np.float64)
    _check_escape_args(arr, q, delta)
    flat = arr.reshape(-1, 1)
    L = np.log(delta) - np.log(flat)  # [n, 1], >= 0
    # Terms decay like (k+1) delta**k; keep going until they are 1e-20 of the first order-one term.
    n_terms = int(math.ceil(math.log(1e-20 * (1.0 - delta) ** 2) / math.log(delta))) + 8
    k = np.arange(n_terms, dtype=np.float64)[None, :]  # [1, K]
    e = k - (1.0 - q)  # k + q - 1, with 1 - q exact for q in [1/2, 1]
    eL = e * L
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(e == 0.0, L, -np.expm1(-eL) / np.where(e == 0.0, 1.0, e))
    terms = (k + 1.0) * np.exp(e * math.log(delta)) * phi  # all >= 0
    out = np.sort(terms, axis=1).sum(axis=1)  # smallest first
    out = out.reshape(arr.shape)
    return float(out) if np.ndim(p0) == 0 else out


def sigmoid_escape_time_closed_form(p0, q: float, delta: float = 0.5):
    """Partial-fraction closed forms at the poles (q = 0 and q = 1 only), for cross-checks.

    q = 0: 1/(u^2 (1-u)^2) = 1/u^2 + 2/u + 2/(1-u) + 1/(1-u)^2;  q = 1: 1/(u (1-u)^2) = 1/u + 1/(1-u) + 1/(1-u)^2.
    """
    p = np.asarray(p0, dtype=np.float64)
    if q == 0.0:

        def F(u):
            return -1.0 / u + 2.0 * np.log(u) - 2.0 * np.log1p(-u) + 1.0 / (1.0 - u)

    elif q == 1.0:

        def F(u):
            return np.log(u) - np.log1p(-u) + 1.0 / (1.0 - u)

    else:
        raise ValueError("closed forms exist here only for q = 0 and q = 1")
    out = F(delta) - F(p)
    return float(out) if np.ndim(p0) == 0 else out


def sigmoid_escape_time_asymptotic(p0, q: float, delta: float = 0.5):
    """Leading-order T_q as p0 -> 0: p0**-(1-q)/(1-q) for q < 1; log(1/p0) + F1(delta) - 1 at q = 1."""
    p = np.asarray(p0, dtype=np.float64)
    if q < 1.0:
        out = p ** (-(1.0 - q)) / (1.0 - q)
    else:
        out = -np.log(p) + (math.log(delta) - math.log1p(-delta) + 1.0 / (1.0 - delta) - 1.0)
    return float(out) if np.ndim(p0) == 0 else out


# --------------------------------------------------------------------------------------------------
# Exact models under gradient flow on l_q


def _softmax(x: np.ndarray) -> np.ndarray:
    """A plain-numpy softmax (scipy's is ~50x slower on tiny vectors, and the ODE calls it a lot)."""
    ex = np.exp(x - x.max())
    return ex / ex.sum()


@dataclass
class SigmoidModel:
    """P = sigma(theta), theta in R: ||grad log P||^2 = (1 - P)^2."""

    name: str = "sigmoid"

    def init(self, p0: float) -> np.ndarray:
        return np.array([math.log(p0) - math.log1p(-p0)])

    def success(self, theta: np.ndarray) -> float:
        return float(expit(theta[0]))

    def flow(self, theta: np.ndarray, q: float) -> np.ndarray:
        """theta' = P**-q dP/dtheta = P**(1-q) (1 - P)."""
        log_p = log_expit(theta[0])
        return np.array([math.exp((1.0 - q) * log_p) * expit(-theta[0])])


@dataclass
class SoftmaxModel:
    """A softmax over N answers with gold index 0; the other logits are drawn once from N(0, 1)."""

    n: int = 10
    seed: int = 0
    name: str = "softmax"
    others: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.others = np.random.default_rng(self.seed).normal(size=self.n - 1)

    def init(self, p0: float) -> np.ndarray:
        gold = math.log(p0) - math.log1p(-p0) + logsumexp(self.others)
        return np.concatenate([[gold], self.others])

    def success(self, theta: np.ndarray) -> float:
        return float(_softmax(theta)[0])

    def flow(self, theta: np.ndarray, q: float) -> np.ndarray:
        """theta' = P**(1-q) (e_gold - pi)."""
        pi = _softmax(theta)
        g = -pi
        g[0] += 1.0
        return pi[0] ** (1.0 - q) * g


@dataclass
class LatentModel:
    """Latent rationales z in {0..Z-1}: p(z|x) = softmax(phi), p(y*|z) = b_z fixed, P = sum_z pi_z b_z.

    Rationale 0 is the good one (b_0 = b_good); the others have likelihoods below 1e-10, so a cold
    start P = p0 means the model rarely writes the good rationale.
    """

    z: int = 8
    b_good: float = 0.9
    seed: int = 0
    name: str = "latent"
    b: np.ndarray = field(init=False)
    others: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.b = np.concatenate([[self.b_good], 1e-10 * rng.uniform(size=self.z - 1)])
        self.others = rng.normal(size=self.z - 1)

    def init(self, p0: float) -> np.ndarray:
        b_bad = float(softmax(self.others) @ self.b[1:])
        if not p0 > b_bad:
            raise ValueError(f"p0 = {p0} is below the floor {b_bad} of the latent model")
        pi0 = (p0 - b_bad) / (self.b_good - b_bad)
        gold = math.log(pi0) - math.log1p(-pi0) + logsumexp(self.others)
        return np.concatenate([[gold], self.others])

    def success(self, theta: np.ndarray) -> float:
        return float(_softmax(theta) @ self.b)

    def flow(self, theta: np.ndarray, q: float) -> np.ndarray:
        """phi' = P**-q pi * (b - P)."""
        pi = _softmax(theta)
        p = float(pi @ self.b)
        return p ** (-q) * pi * (self.b - p)


def simulate_escape(
    model,
    p0: float,
    q: float,
    delta: float = 0.5,
    *,
    rtol: float = 1e-10,
    t_max: float | None = None,
) -> float:
    """Time for the gradient flow of l_q on `model` to take P from p0 to delta (solve_ivp, DOP853)."""
    theta0 = model.init(p0)
    if t_max is None:  # far beyond any escape time the theorems allow for these bounded scores
        t_max = 1e3 * (sigmoid_escape_time_asymptotic(p0, q, delta) + 10.0)

    def event(t, th):
        return model.success(th) - delta

    event.terminal = True
    event.direction = 1
    sol = solve_ivp(
        lambda t, th: model.flow(th, q),
        (0.0, t_max),
        theta0,
        method="DOP853",
        rtol=rtol,
        atol=1e-12,
        events=event,
    )
    if sol.status != 1 or len(sol.t_events[0]) == 0:
        raise RuntimeError(f"{model.name}: no escape by t = {t_max:g} (p0={p0}, q={q})")
    return float(sol.t_events[0][0])


# --------------------------------------------------------------------------------------------------
# Rate fits


def fit_rate(p0s, times, q: float) -> dict[str, float]:
    """Fit the escape rate: log T = c + slope log(1/p0) for q < 1 (theory: slope = 1 - q),
    T = c + slope log(1/p0) at q = 1 (theory: linear, slope ~ 1 for bounded scores). Returns the
    slope, intercept, R^2 of that fit, and the theory slope (NaN where it is only "linear")."""
    x = -np.log(np.asarray(p0s, dtype=np.float64))
    t = np.asarray(times, dtype=np.float64)
    y = np.log(t) if q < 1.0 else t
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {
        "kind": "loglog" if q < 1.0 else "linear_in_log",
        "slope": float(slope),
        "intercept": float(intercept),
        "r2": r2,
        "theory_slope": (1.0 - q) if q < 1.0 else float("nan"),
    }
