"""tsallis_rl.qlog: the q-logarithm, the per-example J_Q loss, its gradient factors and the escort.

References are computed independently here with mpmath at 50 digits (u**(1-q) - 1) / (1 - q),
never with the expm1 form the implementation uses.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from tsallis_rl.qlog import amplification, attenuation, escort, log_q, log_q_from_log, q_loss

mpmath.mp.dps = 50

QS = [0.0, 0.25, 0.5, 0.75, 1.0, 0.3141592653589793]
US = [1.0, 0.9, 0.5, 0.1, 1e-3, 1e-12, 1e-200]


def ref_log_q(u: float, q: float) -> float:
    """(u**(1-q) - 1)/(1-q) at 50 digits; log(u) at q = 1."""
    u, q = mpmath.mpf(u), mpmath.mpf(q)
    if q == 1:
        return float(mpmath.log(u))
    return float((u ** (1 - q) - 1) / (1 - q))


@pytest.mark.parametrize("q", QS)
def test_log_q_matches_closed_form_for_floats(q):
    for u in US:
        got = log_q(u, q)
        assert isinstance(got, float)
        assert got == pytest.approx(ref_log_q(u, q), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("q", QS)
def test_log_q_matches_closed_form_for_tensors(q):
    u = torch.tensor(US, dtype=torch.float64)
    got = log_q(u, q)
    assert isinstance(got, torch.Tensor) and got.shape == u.shape and got.dtype == torch.float64
    ref = torch.tensor([ref_log_q(x, q) for x in US], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-15)


def test_log_q_poles_are_exact():
    for u in US:
        assert log_q(u, 0.0) == u - 1.0  # RL pole: 1 - P
        assert log_q(u, 1.0) == math.log(u)  # density-estimation pole: log P
        assert q_loss(u, 0.0) == 1.0 - u
        assert q_loss(u, 1.0) == -math.log(u)
    t = torch.tensor(US, dtype=torch.float64)
    assert torch.equal(log_q(t, 0.0), t - 1.0)
    assert torch.equal(log_q(t, 1.0), torch.log(t))
    assert torch.equal(q_loss(t, 1.0), -torch.log(t))


def test_log_q_is_continuous_at_q_one_without_zero_over_zero():
    q = 1.0 - 1e-12
    for u in US:
        got = log_q(u, q)
        assert math.isfinite(got)
        # log_q(u) = log u + (1-q) log(u)**2 / 2 + ...: within 1e-12 * log(u)**2 of log u
        assert got == pytest.approx(math.log(u), rel=1e-9, abs=1e-12)
        assert got == pytest.approx(ref_log_q(u, q), rel=1e-9, abs=1e-12)
    t = torch.tensor(US, dtype=torch.float64)
    got_t = log_q(t, q)
    assert torch.isfinite(got_t).all()
    torch.testing.assert_close(got_t, torch.log(t), rtol=1e-9, atol=1e-12)
    # float32 tensor as well
    t32 = t[:-1].float()
    assert torch.isfinite(log_q(t32, q)).all()


def test_log_q_at_zero_is_minus_one_over_one_minus_q():
    assert log_q(0.0, 0.5) == -2.0
    assert log_q(0.0, 0.0) == -1.0
    assert log_q(0.0, 1.0) == -math.inf
    assert log_q(torch.tensor([0.0]), 0.25).item() == pytest.approx(-1 / 0.75)
    assert q_loss(0.0, 0.75) == pytest.approx(4.0)


def test_log_q_from_log_matches_log_q_and_stays_accurate_in_log_space():
    for q in QS:
        for u in US:
            assert log_q_from_log(math.log(u), q) == pytest.approx(
                ref_log_q(u, q), rel=1e-13, abs=1e-15
            )
        # log u = -1000 (u underflows in float64): the limit -1/(1-q)
        if q < 1:
            assert log_q_from_log(-1000.0, q) == pytest.approx(
                float((mpmath.e ** (-1000 * (1 - mpmath.mpf(q))) - 1) / (1 - mpmath.mpf(q))),
                rel=1e-13,
            )
    t = torch.tensor([-1000.0, -1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(log_q_from_log(t, 1.0), t)


@pytest.mark.parametrize("q", QS)
def test_amplification_and_attenuation_closed_forms(q):
    for p in US:
        assert amplification(p, q) == pytest.approx(
            float(mpmath.mpf(p) ** -mpmath.mpf(q)), rel=1e-13
        )
        assert attenuation(p, q) == pytest.approx(
            float(mpmath.mpf(p) ** (1 - mpmath.mpf(q))), rel=1e-13
        )
    t = torch.tensor(US, dtype=torch.float64)
    torch.testing.assert_close(amplification(t, q), t ** (-q), rtol=1e-14, atol=0)
    torch.testing.assert_close(attenuation(t, q), t ** (1 - q), rtol=1e-14, atol=0)


def test_gradient_identity_prop_4_1():
    """d l_q / dP = P**-q d l_0 / dP = P**(1-q) d l_1 / dP, checked with autograd on tensors."""
    for q in QS:
        p = torch.tensor([0.3, 1e-4, 0.99], dtype=torch.float64, requires_grad=True)
        (g_q,) = torch.autograd.grad(q_loss(p, q).sum(), p)
        (g_0,) = torch.autograd.grad(q_loss(p, 0.0).sum(), p)
        (g_1,) = torch.autograd.grad(q_loss(p, 1.0).sum(), p)
        pd = p.detach()
        torch.testing.assert_close(g_q, amplification(pd, q) * g_0, rtol=1e-12, atol=0)
        torch.testing.assert_close(g_q, attenuation(pd, q) * g_1, rtol=1e-12, atol=0)


def test_amplification_of_zero_is_inf_not_an_exception():
    assert amplification(0.0, 0.5) == math.inf
    assert amplification(0.0, 0.0) == 1.0
    assert attenuation(0.0, 0.5) == 0.0
    assert attenuation(0.0, 1.0) == 1.0


@pytest.mark.parametrize("q", [0.25, 0.5, 0.75, 1.0, 0.6180339887])
def test_escort_matches_closed_form(q):
    alpha = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
    got = escort(alpha, q)
    for row, a in zip(got, alpha.tolist()):
        powers = [mpmath.mpf(x) ** (1 / mpmath.mpf(q)) for x in a]
        ref = [float(p / mpmath.fsum(powers)) for p in powers]
        torch.testing.assert_close(row, torch.tensor(ref, dtype=torch.float64), rtol=1e-13, atol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, dtype=torch.float64))


def test_escort_at_q_one_is_the_proper_scoring_rule():
    alpha = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    torch.testing.assert_close(escort(alpha, 1.0), alpha)


def test_escort_minimises_expected_q_loss():
    """Thm 3.1: on the simplex, sum_j alpha_j (-log_q theta_j) is smallest at the escort."""
    alpha = torch.tensor([0.55, 0.3, 0.15], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for q in [0.25, 0.5, 0.75, 1.0]:
        star = escort(alpha, q)
        best = (alpha * q_loss(star, q)).sum()
        expo = -torch.log(torch.rand(200, 3, generator=gen, dtype=torch.float64))
        others = expo / expo.sum(-1, keepdim=True)  # uniform on the simplex
        near = torch.softmax(
            torch.log(star) + 0.01 * torch.randn(50, 3, generator=gen).double(), -1
        )
        others = torch.cat([others, near])
        vals = (alpha * q_loss(others, q)).sum(-1)
        assert (vals >= best - 1e-12).all()


def test_escort_tends_to_the_mode_as_q_goes_to_zero():
    alpha = torch.tensor([0.3, 0.45, 0.25])
    mode = torch.tensor([0.0, 1.0, 0.0])
    for q in [1e-3, 1e-30, 1e-300, 5e-324]:
        got = escort(alpha, q)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, mode)
    torch.testing.assert_close(escort(alpha, 0.0), mode)
    # ties: q = 0 and tiny q both split evenly
    tied = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    half = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(escort(tied, 0.0), half)
    torch.testing.assert_close(escort(tied, 1e-200), half)
    # monotone sharpening: the mode's mass grows as q decreases
    masses = [escort(alpha.double(), q)[1].item() for q in [1.0, 0.75, 0.5, 0.25, 0.1]]
    assert masses == sorted(masses)


def test_escort_keeps_dtype_and_accepts_lists():
    assert escort(torch.tensor([0.5, 0.5]), 0.5).dtype == torch.float32
    torch.testing.assert_close(escort([1, 3], 1.0), torch.tensor([0.25, 0.75], dtype=torch.float64))


@pytest.mark.parametrize("bad_q", [-0.1, 1.0001, float("nan"), 2])
def test_q_outside_unit_interval_raises(bad_q):
    for fn in (log_q, q_loss, amplification, attenuation, log_q_from_log):
        with pytest.raises(ValueError, match="q must"):
            fn(0.5, bad_q)
    with pytest.raises(ValueError, match="q must"):
        escort(torch.tensor([0.5, 0.5]), bad_q)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="u >= 0"):
        log_q(-0.1, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        escort(torch.tensor([0.5, -0.1]), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        escort(torch.tensor([0.0, 0.0]), 0.5)
