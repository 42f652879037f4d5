"""Bias and variance of GARL and PAFT on an exact latent-rationale model (METHOD.md section 4).

Model: Z rationales, p(z|x) = softmax(phi), p(y*|z) = b_z = sigmoid(psi_z); parameters theta =
(phi, psi) in R^(2Z). P = sum_z pi_z b_z, so grad l_q = -P**-q grad P is exact by enumeration:
    d P / d phi = pi * (b - P),   d P / d psi = pi * b * (1 - b).

Monte Carlo: R replicates of M prior samples z ~ pi are fed as one [R, M] batch to
`garl_loss` / `paft_loss` (normalize=False: the 1/M**q rescaling is a learning rate, not part of the
estimate of grad l_q). Their per-sample derivatives out.rationale_grad / out.answer_grad are the
coefficients of the scores, so each replicate's estimate is formed without backward:
    g_hat = R * sum_m [rationale_grad_m (e_{z_m} - pi) ; answer_grad_m (1 - b_{z_m}) e_{z_m}].
The bias is measured against the oracle g_bar / P**q on the same samples (unbiased, since
E[g_m] = -grad P), a control variate that removes most Monte Carlo noise; the raw bias
mean(g_hat) - grad l_q is reported too. The leading term of Thm 6.1 is computed by enumeration:
    (q / (M P**(q+1))) [((q+1)/2) grad l_1 Var(w) - Cov(g, w)],  g = -w grad log p(z, y*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import expit, logit

from tsallis_rl.estimators import garl_loss, paft_loss


@dataclass
class LatentEstimatorModel:
    """The latent-rationale model with parameters (phi, psi); all arrays float64 [Z]."""

    phi: np.ndarray
    psi: np.ndarray

    @property
    def pi(self) -> np.ndarray:
        e = np.exp(self.phi - self.phi.max())
        return e / e.sum()

    @property
    def b(self) -> np.ndarray:
        return expit(self.psi)

    @property
    def success(self) -> float:
        return float(self.pi @ self.b)

    def grad_success(self) -> np.ndarray:
        """grad P = [pi (b - P), pi b (1 - b)]: [2Z]."""
        pi, b, p = self.pi, self.b, self.success
        return np.concatenate([pi * (b - p), pi * b * (1.0 - b)])

    def exact_grad(self, q: float) -> np.ndarray:
        """grad l_q = -P**-q grad P: [2Z]."""
        return -(self.success ** (-q)) * self.grad_success()

    def per_z_g(self) -> np.ndarray:
        """g(z) = -b_z grad log p(z, y*) for every z: [Z, 2Z]."""
        pi, b = self.pi, self.b
        z = len(pi)
        eye = np.eye(z)
        return -b[:, None] * np.concatenate([eye - pi[None, :], (1.0 - b)[:, None] * eye], axis=1)

    def cov_gw(self) -> np.ndarray:
        """Cov(g, w) under z ~ pi, w = b_z, by enumeration: [2Z]."""
        pi, b = self.pi, self.b
        g = self.per_z_g()
        return (pi * b) @ g - (pi @ g) * (pi @ b)

    def leading_bias(self, q: float, m: int) -> np.ndarray:
        """Thm 6.1 leading term (q / (M P**(q+1))) [((q+1)/2) grad l_1 Var(w) - Cov(g, w)]: [2Z]."""
        pi, b, p = self.pi, self.b, self.success
        var_w = float(pi @ b**2) - p**2
        cov_gw = self.cov_gw()
        grad_l1 = -self.grad_success() / p
        return q / (m * p ** (q + 1.0)) * (0.5 * (q + 1.0) * grad_l1 * var_w - cov_gw)


def make_latent_model(success: float, z: int = 6, seed: int = 0) -> LatentEstimatorModel:
    """A latent model with P = success: b spread from 0.9 (z = 0) down to 0.01, random logits, and
    logits phi = phi_0 + tau * psi with the tilt tau solved for (Brent) so that P hits the target
    (P is increasing in tau: dP/dtau = Cov_pi(b, psi) > 0)."""
    rng = np.random.default_rng(seed)
    psi = np.linspace(logit(0.9), logit(0.01), z) + 0.1 * rng.normal(size=z)
    phi = rng.normal(size=z)
    b = expit(psi)
    if not b.min() < success < b.max():
        raise ValueError(f"success must lie in ({b.min():.3g}, {b.max():.3g}), got {success}")

    def gap(tau: float) -> float:
        return LatentEstimatorModel(phi + tau * psi, psi).success - success

    tau = brentq(gap, -100.0, 100.0, xtol=1e-14)
    return LatentEstimatorModel(phi + tau * psi, psi)


def _scores_times(
    coef_z: torch.Tensor, coef_y: torch.Tensor, z: torch.Tensor, model
) -> torch.Tensor:
    """sum_m coef_z[r,m] (e_{z_rm} - pi) and sum_m coef_y[r,m] (1 - b_{z_rm}) e_{z_rm}: [R, 2Z]."""
    pi = torch.as_tensor(model.pi)
    one_minus_b = torch.as_tensor(1.0 - model.b)
    n_z = pi.numel()
    gz = torch.zeros(z.shape[0], n_z, dtype=torch.float64).scatter_add_(1, z, coef_z)
    gz -= coef_z.sum(1, keepdim=True) * pi[None, :]
    gy = torch.zeros_like(gz).scatter_add_(1, z, coef_y) * one_minus_b[None, :]
    return torch.cat([gz, gy], dim=1)


ESTIMATORS = ("garl_plugin", "garl_rloo", "paft")


def estimator_draws(
    model: LatentEstimatorModel, q: float, m: int, replicates: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One Monte Carlo batch: per-replicate gradient estimates [R, 2Z] of every estimator and the
    oracle g_bar / P**q, all on the same R x M prior samples."""
    pi = torch.as_tensor(model.pi)
    log_pi, log_b = torch.log(pi), torch.log(torch.as_tensor(model.b))
    u = torch.rand(replicates, m, dtype=torch.float64, generator=generator)
    z = torch.searchsorted(torch.cumsum(pi, 0)[:-1].contiguous(), u.contiguous())  # [R, M]
    rationale_logp, answer_logp = log_pi[z], log_b[z]
    r = float(replicates)
    out: dict[str, torch.Tensor] = {}
    for name, kwargs in (
        ("garl_plugin", {"baseline": "none"}),
        ("garl_rloo", {"baseline": "rloo"}),
    ):
        o = garl_loss(rationale_logp, answer_logp, q, normalize=False, **kwargs)
        out[name] = r * _scores_times(o.rationale_grad, o.answer_grad, z, model)
    o = paft_loss(rationale_logp, answer_logp, q, normalize=False, generator=generator)
    out["paft"] = r * _scores_times(o.rationale_grad, o.answer_grad, z, model)
    # Oracle g_bar / P**q plus its first-order correction -q g_bar (w_bar - P) / P**(q+1) centred by
    # its exact mean -q Cov(g, w) / (M P**(q+1)): a zero-mean control variate whose residual against
    # the plug-in estimate is O(1/M) per replicate, so the bias is resolved at every M.
    p = model.success
    w = torch.exp(answer_logp)
    g_bar = _scores_times(-w / m, -w / m, z, model)  # [R, 2Z]
    w_bar = w.mean(1, keepdim=True)
    cov_gw = torch.as_tensor(model.cov_gw())
    first = -q * (g_bar * (w_bar - p) - cov_gw[None, :] / m) / p ** (q + 1.0)
    out["oracle"] = g_bar / p**q + first
    return out


def _mean_and_se(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    return x.mean(0).numpy(), (x.std(0) / math.sqrt(n)).numpy()


def bias_variance_point(
    model: LatentEstimatorModel, q: float, m: int, replicates: int, generator: torch.Generator
) -> dict:
    """Bias (control-variate and raw), its standard error, the Thm 6.1 leading term, the total
    variance tr Cov of each estimator, and the PAFT - GARL plug-in mean difference, at one (q, M)."""
    draws = estimator_draws(model, q, m, replicates, generator)
    exact = model.exact_grad(q)
    lead = model.leading_bias(q, m)
    lead_norm = float(np.linalg.norm(lead))
    res: dict = {"M": m, "leading_norm": lead_norm}
    for name in ESTIMATORS:
        est = draws[name]
        bias, se = _mean_and_se(est - draws["oracle"])
        raw_mean, raw_se = _mean_and_se(est)
        along = float(bias @ lead / lead_norm) if lead_norm > 0 else float(bias @ exact)
        res[name] = {
            "bias_norm": float(np.linalg.norm(bias)),
            "bias_se_norm": float(np.linalg.norm(se)),
            "bias_along_leading": along,
            "bias_along_leading_se": float(np.sqrt(((lead / lead_norm) ** 2 * se**2).sum()))
            if lead_norm > 0
            else float(np.linalg.norm(se)),
            "rel_err_vs_leading": float(np.linalg.norm(bias - lead) / lead_norm)
            if lead_norm > 0
            else float("nan"),
            "raw_bias_norm": float(np.linalg.norm(raw_mean - exact)),
            "raw_bias_se_norm": float(np.linalg.norm(raw_se)),
            "variance": float(est.var(0).sum()),
        }
    diff, diff_se = _mean_and_se(draws["garl_rloo"] - draws["garl_plugin"])
    res["rloo_minus_plugin_max_z"] = float(np.max(np.abs(diff) / np.maximum(diff_se, 1e-300)))
    diff, diff_se = _mean_and_se(draws["paft"] - draws["garl_plugin"])
    res["paft_minus_plugin_max_z"] = float(np.max(np.abs(diff) / np.maximum(diff_se, 1e-300)))
    res["paft_minus_plugin_norm"] = float(np.linalg.norm(diff))
    res["exact_grad_norm"] = float(np.linalg.norm(exact))
    return res


def fit_bias_slope(ms, norms, ses=None) -> dict[str, float]:
    """Slope of log ||bias|| against log M (theory: -1), by weighted least squares when standard
    errors are given (var log ||b|| ~ (se/||b||)^2). Returns the slope and its standard error."""
    x = np.log(np.asarray(ms, dtype=np.float64))
    b = np.asarray(norms, dtype=np.float64)
    y = np.log(b)
    if ses is None:
        w = np.ones_like(x)
    else:
        rel = np.asarray(ses, dtype=np.float64) / b
        w = 1.0 / np.maximum(rel, 1e-3) ** 2
    sw = np.sqrt(w)
    A = np.stack([x, np.ones_like(x)], axis=1) * sw[:, None]
    coef, *_ = np.linalg.lstsq(A, y * sw, rcond=None)
    resid = (y - coef[0] * x - coef[1]) * sw
    dof = max(len(x) - 2, 1)
    cov = np.linalg.inv(A.T @ A) * max(float(resid @ resid) / dof, 1e-300)
    return {"slope": float(coef[0]), "slope_se": float(math.sqrt(cov[0, 0]))}
