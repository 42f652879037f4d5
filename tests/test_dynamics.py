"""Theory lab: exact escape times, ODE rates, noise equilibria, escort optimiser, estimator bias."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from tsallis_rl.dynamics import (
    LatentModel,
    SigmoidModel,
    SoftmaxModel,
    bias_variance_point,
    equilibrium_contamination,
    escort_numerical,
    fit_bias_slope,
    fit_rate,
    make_latent_model,
    sigmoid_escape_time,
    sigmoid_escape_time_asymptotic,
    sigmoid_escape_time_closed_form,
    simulate_contamination,
    simulate_escape,
    time_to_contamination,
)
from tsallis_rl.qlog import escort


def _mp_escape(p0: float, q: float, delta: float = 0.5) -> float:
    """Independent quadrature: u = e^s, int exp((q-1) s) / (1-e^s)^2 ds in 40-digit arithmetic."""
    with mp.workdps(40):
        f = lambda s: mp.exp((mp.mpf(q) - 1) * s) / (1 - mp.exp(s)) ** 2  # noqa: E731
        pts = mp.linspace(mp.log(mp.mpf(p0)), mp.log(mp.mpf(delta)), 10)
        return float(mp.quad(f, pts))


@pytest.mark.parametrize("q", [0.0, 1e-9, 0.3, 0.75, 1.0 - 1e-9, 1.0])
@pytest.mark.parametrize("p0", [1e-12, 1e-7, 1e-3, 0.49])
def test_escape_time_matches_independent_quadrature_to_1e8(p0, q):
    assert sigmoid_escape_time(p0, q) == pytest.approx(_mp_escape(p0, q), rel=1e-8)


@pytest.mark.parametrize("q", [0.0, 1.0])
def test_escape_time_matches_closed_forms_at_the_poles(q):
    p0 = np.logspace(-12, math.log10(0.4), 15)
    np.testing.assert_allclose(
        sigmoid_escape_time(p0, q), sigmoid_escape_time_closed_form(p0, q), rtol=1e-12
    )


def test_escape_time_other_delta_and_array_shape():
    p0 = np.array([[1e-9, 1e-4], [0.1, 0.5]])
    out = sigmoid_escape_time(p0, 0.6, delta=0.9)
    assert out.shape == (2, 2)
    assert out[0, 0] == pytest.approx(_mp_escape(1e-9, 0.6, 0.9), rel=1e-8)
    assert sigmoid_escape_time(0.9, 0.6, delta=0.9) == 0.0
    with pytest.raises(ValueError):
        sigmoid_escape_time(0.6, 0.5)


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75])
def test_escape_time_asymptotics_power_law(q):
    ratio = sigmoid_escape_time(1e-12, q) / sigmoid_escape_time_asymptotic(1e-12, q)
    assert ratio == pytest.approx(1.0, abs=1e-3)


def test_escape_time_asymptotics_log_at_q1():
    t = sigmoid_escape_time(1e-12, 1.0)
    assert t == pytest.approx(sigmoid_escape_time_asymptotic(1e-12, 1.0), abs=1e-10)
    assert t - math.log(1e12) == pytest.approx(1.0, abs=1e-10)  # F1(1/2) - 1 = 1


def test_sigmoid_ode_rates_meet_the_targets():
    p0s = np.logspace(-3, -7, 5)
    model = SigmoidModel()
    for q in (0.0, 0.25, 0.5, 0.75):
        times = [simulate_escape(model, p, q) for p in p0s]
        np.testing.assert_allclose(times, sigmoid_escape_time(p0s, q), rtol=1e-7)
        assert abs(fit_rate(p0s, times, q)["slope"] - (1 - q)) < 0.05
    times = [simulate_escape(model, p, 1.0) for p in p0s]
    assert fit_rate(p0s, times, 1.0)["r2"] > 0.999


@pytest.mark.parametrize("model", [SoftmaxModel(n=5), LatentModel(z=4)])
def test_multidim_models_escape_at_the_theorem_rate(model):
    p0s = np.logspace(-3, -6, 4)
    fit = fit_rate(p0s, [simulate_escape(model, p, 0.5, rtol=1e-8) for p in p0s], 0.5)
    assert abs(fit["slope"] - 0.5) < 0.05
    fit1 = fit_rate(p0s, [simulate_escape(model, p, 1.0, rtol=1e-8) for p in p0s], 1.0)
    assert fit1["r2"] > 0.999


@pytest.mark.parametrize("q", [0.25, 0.5, 1.0])
def test_noise_equilibrium_is_the_escort_minimiser(q):
    eps = 0.1
    pt_star = equilibrium_contamination(q, eps)
    esc = float(escort(torch.tensor([1 - eps, eps], dtype=torch.float64), q)[1])
    assert pt_star == pytest.approx(esc, rel=1e-10)
    t_end = 100 * pt_star ** (q + 1) / ((q + 1) * eps)
    curve = simulate_contamination(
        q, eps, np.logspace(math.log10(t_end) - 10, math.log10(t_end), 20)
    )
    assert curve[-1] == pytest.approx(pt_star, rel=1e-3)
    assert np.all(np.diff(curve) >= -1e-15)


def test_noise_time_to_eta_leading_term_and_q0_never():
    eps = 0.1
    assert math.isinf(time_to_contamination(0.0, eps, 1e-6)["quadrature"])
    assert simulate_contamination(0.0, eps, [0.0, 1e3]).max() == 0.0
    for q in (0.5, 1.0):
        eta = 1e-4 * equilibrium_contamination(q, eps)
        t = time_to_contamination(q, eps, eta)
        assert t["quadrature"] / t["theory"] == pytest.approx(1.0, rel=0.02)
        assert t["ode"] == pytest.approx(t["quadrature"], rel=1e-6)
    # higher q memorises faster (same eta)
    ts = [time_to_contamination(q, eps, 1e-6)["quadrature"] for q in (0.25, 0.5, 0.75, 1.0)]
    assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("q", [0.0, 0.2, 0.5, 0.75, 1.0])
def test_escort_numerical_minimiser_matches_closed_form(q):
    alpha = np.random.default_rng(3).dirichlet(np.ones(5))
    theta, _ = escort_numerical(alpha, q)
    np.testing.assert_allclose(theta, escort(torch.tensor(alpha), q).numpy(), atol=1e-6)


def test_bias_sign_and_slope_on_fixed_seed():
    model = make_latent_model(0.3, z=5, seed=1)
    gen = torch.Generator().manual_seed(0)
    ms = [16, 32, 64]
    pts = [bias_variance_point(model, 0.75, m, 800, gen) for m in ms]
    for p in pts:
        g = p["garl_plugin"]
        # the bias points along Thm 6.1's leading term, resolved well beyond its standard error
        assert g["bias_along_leading"] > 5 * g["bias_along_leading_se"]
        assert g["rel_err_vs_leading"] < 0.5
        assert p["paft_minus_plugin_max_z"] < 5.0  # E[PAFT] = E[GARL plug-in]
        assert p["paft"]["variance"] >= p["garl_plugin"]["variance"]  # law of total variance
    fit = fit_bias_slope(ms, [p["garl_plugin"]["bias_norm"] for p in pts])
    assert fit["slope"] == pytest.approx(-1.0, abs=0.25)


def test_bias_is_zero_at_q0():
    model = make_latent_model(0.3, z=5, seed=1)
    p = bias_variance_point(model, 0.0, 8, 2000, torch.Generator().manual_seed(0))
    assert p["garl_plugin"]["bias_norm"] < 1e-12  # g_bar is the estimate itself
    assert p["garl_rloo"]["bias_norm"] < 4 * p["garl_rloo"]["bias_se_norm"]
    assert p["leading_norm"] == 0.0
    assert p["garl_plugin"]["raw_bias_norm"] < 4 * p["garl_plugin"]["raw_bias_se_norm"]
