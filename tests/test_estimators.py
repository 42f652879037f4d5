"""tsallis_rl.estimators: GARL, PAFT, RB-RLOO and GRPO, checked against independent closed forms.

The references here never reuse the implementation's log-space tricks: they form w = exp(answer_logp)
in mpmath at 60 digits (no underflow at -5000 or -1e8), the mean and the leave-one-out means as
explicit sums, and the coefficients of METHOD.md section 4 literally:
    c_m = w_m / w_bar**q - w_loo_m**(1-q)   (0**0 = 1),   r_m = w_m / w_bar**q
    d loss / d rationale_logp = -c / (B M**(1+q)),  d loss / d answer_logp = -r / (B M**(1+q)).
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import mpmath
import pytest
import torch

from tsallis_rl import estimators as est
from tsallis_rl.estimators import (
    garl_loss,
    get_estimator,
    get_estimator_spec,
    grpo_loss,
    list_estimators,
    paft_loss,
    rb_rloo_loss,
    register_estimator,
)

mpmath.mp.dps = 60

RANDOM_Q = random.Random(20260428).random()  # one "random q", fixed so failures reproduce
QS = [0.0, 0.25, 0.5, 0.75, 1.0, RANDOM_Q]
SHAPES = [(1, 2), (3, 5), (2, 7), (4, 3)]


# --------------------------------------------------------------------------------------------------
# Independent references


def mp_group(logw_row: list[float], q: float):
    """mpmath (ratio, c, w_bar) for one group; ratio_m = w_m / w_bar**q, c with the RLOO baseline."""
    q = mpmath.mpf(q)
    w = [mpmath.exp(mpmath.mpf(a)) if a != -math.inf else mpmath.mpf(0) for a in logw_row]
    M = len(w)
    w_bar = mpmath.fsum(w) / M
    if w_bar == 0:
        return [mpmath.mpf(0)] * M, [mpmath.mpf(0)] * M, w_bar, [mpmath.mpf(0)] * M
    ratio = [wm / w_bar**q for wm in w]
    loo_pow = []
    for m in range(M):
        loo = mpmath.fsum(w[j] for j in range(M) if j != m) / (M - 1) if M > 1 else mpmath.mpf(0)
        loo_pow.append(mpmath.mpf(1) if q == 1 else loo ** (1 - q))
    c = [ratio[m] - loo_pow[m] for m in range(M)]
    return ratio, c, w_bar, loo_pow


def ref_garl_grads(answer_logp: torch.Tensor, q: float, baseline: str, pathwise: bool, normalize):
    """Closed-form (d loss/d rationale_logp, d loss/d answer_logp) as float64 tensors."""
    B, M = answer_logp.shape
    denom = B * (M ** (1 + mpmath.mpf(q)) if normalize else M)
    gz, gy = [], []
    for row in answer_logp.double().tolist():
        ratio, c, _, _ = mp_group(row, q)
        coef = c if baseline == "rloo" else ratio
        gz.append([float(-x / denom) for x in coef])
        gy.append([float(-x / denom) if pathwise else 0.0 for x in ratio])
    return torch.tensor(gz, dtype=torch.float64), torch.tensor(gy, dtype=torch.float64)


def autograd_grads(fn, rationale_logp, answer_logp, *args, **kwargs):
    """Run an estimator on leaf copies of the inputs and return (out, d/d rationale, d/d answer)."""
    r = rationale_logp.detach().clone().requires_grad_(True)
    a = answer_logp.detach().clone().requires_grad_(True)
    out = fn(r, a, *args, **kwargs)
    out.loss.backward()
    return out, r.grad, a.grad


def random_inputs(B, M, gen, low=-30.0, dtype=torch.float64):
    r = -20 * torch.rand(B, M, generator=gen, dtype=torch.float64)
    a = low * torch.rand(B, M, generator=gen, dtype=torch.float64)
    return r.to(dtype), a.to(dtype)


def assert_no_nan(out, *grads):
    assert torch.isfinite(out.loss).all(), out.loss
    for g in grads:
        assert g is not None and torch.isfinite(g).all(), g
    for k, v in out.stats.items():
        assert not math.isnan(v), (k, v)


# --------------------------------------------------------------------------------------------------
# GARL derivatives against closed forms


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("baseline", ["rloo", "none"])
def test_garl_derivatives_match_closed_forms(q, baseline):
    gen = torch.Generator().manual_seed(1)
    for B, M in SHAPES:
        r, a = random_inputs(B, M, gen)
        for pathwise, normalize in [(True, True), (False, True), (True, False), (False, False)]:
            out, gr, ga = autograd_grads(
                garl_loss, r, a, q, baseline=baseline, pathwise=pathwise, normalize=normalize
            )
            ref_z, ref_y = ref_garl_grads(a, q, baseline, pathwise, normalize)
            torch.testing.assert_close(gr, ref_z, rtol=1e-11, atol=1e-300)
            torch.testing.assert_close(ga, ref_y, rtol=1e-11, atol=1e-300)
            # the exported coefficients are the autograd gradient, exactly
            assert torch.equal(out.rationale_grad, gr) and torch.equal(out.answer_grad, ga)
            if not pathwise:
                assert torch.equal(ga, torch.zeros_like(ga))


def test_garl_derivatives_at_random_shapes_and_random_q():
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    for _ in range(6):
        B, M, q = rng.randint(1, 4), rng.randint(2, 8), rng.random()
        r, a = random_inputs(B, M, gen, low=-60.0)
        _, gr, ga = autograd_grads(garl_loss, r, a, q)
        ref_z, ref_y = ref_garl_grads(a, q, "rloo", True, True)
        torch.testing.assert_close(gr, ref_z, rtol=1e-11, atol=1e-300)
        torch.testing.assert_close(ga, ref_y, rtol=1e-11, atol=1e-300)


def test_garl_at_q_zero_equals_rb_rloo_exactly():
    gen = torch.Generator().manual_seed(2)
    for B, M in SHAPES:
        r, a = random_inputs(B, M, gen)
        for pathwise in (True, False):
            o1, gr1, ga1 = autograd_grads(garl_loss, r, a, 0.0, pathwise=pathwise)
            o2, gr2, ga2 = autograd_grads(rb_rloo_loss, r, a, pathwise=pathwise)
            assert torch.equal(gr1, gr2) and torch.equal(ga1, ga2)
            assert torch.equal(o1.loss, o2.loss)
        # and RB-RLOO is RLOO with reward w: c_m = w_m - mean_{j != m} w_j (plain float64)
        w = a.exp()
        loo = torch.stack(
            [torch.cat([w[:, :m], w[:, m + 1 :]], 1).mean(1) for m in range(M)], dim=1
        )
        _, gr2, ga2 = autograd_grads(rb_rloo_loss, r, a)
        torch.testing.assert_close(gr2, -(w - loo) / (B * M), rtol=1e-12, atol=1e-300)
        torch.testing.assert_close(ga2, -w / (B * M), rtol=1e-12, atol=1e-300)
        # normalize does nothing at q = 0 (M**0 = 1)
        _, gr3, _ = autograd_grads(garl_loss, r, a, 0.0, normalize=False)
        assert torch.equal(gr3, gr1)


def test_garl_at_q_one_gives_self_normalised_iwae_weights():
    gen = torch.Generator().manual_seed(3)
    for B, M in SHAPES:
        r, a = random_inputs(B, M, gen)
        out, gr, ga = autograd_grads(garl_loss, r, a, 1.0)
        w = a.exp()
        snw = w / w.sum(1, keepdim=True)  # self-normalised weights, sum to 1
        c = M * snw - 1.0  # = w / w_bar - 1
        torch.testing.assert_close(gr, -c / (B * M**2), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(ga, -M * snw / (B * M**2), rtol=1e-12, atol=1e-300)
        # centred: the score coefficients of a group sum to zero
        torch.testing.assert_close(
            gr.sum(1), torch.zeros(B, dtype=torch.float64), atol=1e-15, rtol=0
        )


def test_garl_rloo_and_plugin_share_the_pathwise_term_and_differ_by_the_loo_baseline():
    gen = torch.Generator().manual_seed(4)
    r, a = random_inputs(3, 5, gen)
    for q in QS:
        _, gr1, ga1 = autograd_grads(garl_loss, r, a, q, baseline="rloo")
        _, gr2, ga2 = autograd_grads(garl_loss, r, a, q, baseline="none")
        assert torch.equal(ga1, ga2)
        assert torch.equal(gr2, ga2)  # plug-in: both derivatives are -w / w_bar**q / (B M**(1+q))
        loo = torch.tensor(
            [[float(x) for x in mp_group(row, q)[3]] for row in a.tolist()], dtype=torch.float64
        )
        torch.testing.assert_close(gr1 - gr2, loo / (3 * 5 ** (1 + q)), rtol=1e-11, atol=1e-300)


def test_garl_stats_report_weight_diagnostics():
    a = torch.tensor([[-1.0, -2.0, -3.0], [-800.0, -801.0, -2000.0]], dtype=torch.float64)
    r = torch.zeros_like(a)
    q = 0.5
    out = garl_loss(r, a, q)
    s = out.stats
    w_bars = [mp_group(row, q)[2] for row in a.tolist()]
    assert s["mean_log_w_bar"] == pytest.approx(
        float(mpmath.fsum(mpmath.log(x) for x in w_bars) / 2)
    )
    cs = [c for row in a.tolist() for c in mp_group(row, q)[1]]
    assert s["max_adv"] == pytest.approx(float(max(cs) / 3**q), rel=1e-12)
    ess = []
    for row in a.tolist():
        w = [mpmath.exp(x) for x in row]
        ess.append(mpmath.fsum(w) ** 2 / mpmath.fsum(x**2 for x in w))
    assert s["ess"] == pytest.approx(float(mpmath.fsum(ess) / 2), rel=1e-12)
    assert s["frac_underflow_groups"] == 0.5  # max log w = -800 < log(float64 tiny)


# --------------------------------------------------------------------------------------------------
# Numerics at the extremes

EXTREME_ROWS = {
    "spread_-5000_to_0": [-5000.0, -3750.0, -2500.0, -1250.0, 0.0],
    "all_at_-5000": [-5000.0, -5000.0, -4999.0, -5000.0, -4990.0],
    "one_dominates_by_700": [0.0, -700.0, -700.0, -700.0, -700.0],
    "one_dominates_by_700_cold": [-3000.0, -3700.0, -3700.0, -3701.0, -3700.0],
    "one_dominates_by_1500": [-10.0, -1510.0, -1510.0, -1510.0, -1510.0],
    "two_dominate": [-1000.0, -1000.0, -1700.0, -1700.5, -2500.0],
    "all_equal": [-1234.5] * 5,
    "all_equal_zero": [0.0] * 5,
    "nearly_equal": [-1.0, -1.0 - 1e-12, -1.0 + 1e-12, -1.0, -1.0],
    "huge_magnitude": [-1e8, -1e8 - 1.0, -1e8 - 3.0, -1e8 - 0.5, -1e8],
    "huge_magnitude_fractional": [
        -33333333.3,
        -33333334.05,
        -33333333.77,
        -33333336.1,
        -33333333.1,
    ],
    "some_zero_weights": [0.0, -math.inf, -2.0, -math.inf, -700.0],
    "one_nonzero_weight": [-math.inf, -math.inf, -5.0, -math.inf, -math.inf],
}


def _check_coefficients_against_mpmath(a64: torch.Tensor, out, q: float):
    """w / w_bar**q to 1e-9 relative; c to 1e-9 of max(w / w_bar**q, w_loo**(1-q))."""
    B, M = a64.shape
    scale = B * M ** (1 + q)
    ratio_got = (-out.answer_grad * scale).tolist()
    c_got = (-out.rationale_grad * scale).tolist()
    for b, row in enumerate(a64.tolist()):
        ratio, c, _, loo_pow = mp_group(row, q)
        for m in range(M):
            ref_r, ref_c = ratio[m], c[m]
            # float64 cannot hold values below ~1e-308 with relative precision: floor at 1e-290
            assert abs(ratio_got[b][m] - ref_r) <= 1e-9 * abs(ref_r) + 1e-290, (row, m, q)
            tol = 1e-9 * max(abs(ref_r), abs(loo_pow[m])) + 1e-290
            assert abs(c_got[b][m] - ref_c) <= tol, (row, m, q, c_got[b][m], float(ref_c))


@pytest.mark.parametrize("name", list(EXTREME_ROWS))
@pytest.mark.parametrize("q", QS + [1.0 - 1e-12, 1e-12])
def test_garl_extreme_log_weights_are_finite_and_accurate(name, q):
    a64 = torch.tensor([EXTREME_ROWS[name]], dtype=torch.float64)
    r64 = torch.linspace(-50.0, -1.0, a64.shape[1], dtype=torch.float64)[None]
    out, gr, ga = autograd_grads(garl_loss, r64, a64, q)
    assert_no_nan(out, gr, ga)
    _check_coefficients_against_mpmath(a64, out, q)
    # PAFT on the same pool: finite, resamples only live weights, attenuation w_bar**(1-q) accurate
    g = torch.Generator().manual_seed(0)
    outp, grp, gap = autograd_grads(paft_loss, r64, a64, q, num_samples=7, generator=g)
    assert_no_nan(outp, grp, gap)
    assert (outp.extras["counts"][a64 == -math.inf] == 0).all()
    w_bar = mp_group(a64[0].tolist(), q)[2]
    ref_atten = float(w_bar ** (1 - mpmath.mpf(q)))
    assert outp.stats["mean_attenuation"] == pytest.approx(ref_atten, rel=1e-9, abs=1e-290)
    # the same rows as float32 inputs: finite loss and gradient, same float64 coefficients
    if not name.startswith("huge") and name != "nearly_equal":  # not representable in float32
        a32, r32 = a64.float(), r64.float()
        out32, gr32, ga32 = autograd_grads(garl_loss, r32, a32, q)
        assert_no_nan(out32, gr32, ga32)
        assert gr32.dtype == torch.float32 and ga32.dtype == torch.float32
        torch.testing.assert_close(out32.rationale_grad, out.rationale_grad, rtol=1e-12, atol=0)
        torch.testing.assert_close(gr32, out.rationale_grad.float())


def test_garl_float32_batch_from_minus_5000_to_0_has_finite_loss_and_gradient():
    gen = torch.Generator().manual_seed(5)
    a = (-5000 * torch.rand(6, 8, generator=gen)).float()
    a[0, 3] = 0.0
    a[1] = -4321.0
    r = (-300 * torch.rand(6, 8, generator=gen)).float()
    for q in QS:
        for baseline in ("rloo", "none"):
            out, gr, ga = autograd_grads(garl_loss, r, a, q, baseline=baseline)
            assert_no_nan(out, gr, ga)


@pytest.mark.parametrize("q", QS)
def test_all_zero_group_contributes_exactly_zero_gradient(q):
    gen = torch.Generator().manual_seed(6)
    r, a = random_inputs(3, 4, gen)
    a[1] = -math.inf  # an all-zero group (a 0/1 reward that failed everywhere)
    a[2, 0] = -math.inf  # a zero weight inside a live group
    for baseline in ("rloo", "none"):
        out, gr, ga = autograd_grads(garl_loss, r, a, q, baseline=baseline)
        assert_no_nan(out, gr, ga)
        assert torch.equal(gr[1], torch.zeros(4, dtype=torch.float64))
        assert torch.equal(ga[1], torch.zeros(4, dtype=torch.float64))
        assert ga[2, 0] == 0.0
        # the live groups get exactly what they would get without the dead one (up to the 1/B)
        keep = [0, 2]
        _, gr2, ga2 = autograd_grads(garl_loss, r[keep], a[keep], q, baseline=baseline)
        torch.testing.assert_close(gr[keep] * 3, gr2 * 2, rtol=1e-14, atol=0)
        torch.testing.assert_close(ga[keep] * 3, ga2 * 2, rtol=1e-14, atol=0)
    out, gr, ga = autograd_grads(paft_loss, r, a, q, generator=torch.Generator().manual_seed(0))
    assert_no_nan(out, gr, ga)
    assert torch.equal(gr[1], torch.zeros(4, dtype=torch.float64))
    assert out.extras["counts"][1].sum() == 0 and out.extras["counts"][2, 0] == 0


def test_batch_of_only_zero_weights_gives_zero_loss_and_gradient():
    r = torch.zeros(2, 3)
    a = torch.full((2, 3), -math.inf)
    for fn, kw in [(garl_loss, {}), (garl_loss, {"baseline": "none"}), (paft_loss, {})]:
        for q in (0.0, 0.5, 1.0):
            out, gr, ga = autograd_grads(fn, r, a, q, **kw)
            assert out.loss.item() == 0.0
            assert torch.equal(gr, torch.zeros_like(gr)) and torch.equal(ga, torch.zeros_like(ga))
            assert all(not math.isnan(v) for v in out.stats.values())


# --------------------------------------------------------------------------------------------------
# PAFT


@pytest.mark.parametrize("q", QS)
def test_paft_derivatives_equal_counts_times_attenuation(q):
    gen = torch.Generator().manual_seed(8)
    for B, M in SHAPES:
        r, a = random_inputs(B, M, gen)
        for K, normalize in [(None, True), (3, True), (11, False), (1, True)]:
            g = torch.Generator().manual_seed(123)
            out, gr, ga = autograd_grads(
                paft_loss, r, a, q, num_samples=K, generator=g, normalize=normalize
            )
            k = M if K is None else K
            n = out.extras["counts"]
            assert n.shape == (B, M)
            assert torch.equal(n, n.round()) and (n >= 0).all()
            assert torch.equal(n.sum(1), torch.full((B,), float(k), dtype=n.dtype))
            denom = B * (M ** mpmath.mpf(q) if normalize else 1) * k
            atten = [mp_group(row, q)[2] ** (1 - mpmath.mpf(q)) for row in a.tolist()]
            ref = torch.tensor(
                [[float(-n[b, m].item() * atten[b] / denom) for m in range(M)] for b in range(B)],
                dtype=torch.float64,
            )
            torch.testing.assert_close(gr, ref, rtol=1e-11, atol=0)
            assert torch.equal(gr, ga)
            assert torch.equal(out.rationale_grad, gr)


def test_paft_is_reproducible_with_a_generator():
    gen = torch.Generator().manual_seed(9)
    r, a = random_inputs(3, 6, gen, low=-3.0)
    o1 = paft_loss(r, a, 0.5, num_samples=20, generator=torch.Generator().manual_seed(42))
    o2 = paft_loss(r, a, 0.5, num_samples=20, generator=torch.Generator().manual_seed(42))
    assert torch.equal(o1.extras["counts"], o2.extras["counts"])
    assert torch.equal(o1.loss, o2.loss)
    draws = {
        tuple(
            paft_loss(r, a, 0.5, num_samples=20, generator=torch.Generator().manual_seed(s))
            .extras["counts"]
            .flatten()
            .tolist()
        )
        for s in range(5)
    }
    assert len(draws) > 1  # the generator does drive the draws


def test_paft_never_resamples_zero_weights_and_follows_the_dominant_one():
    a = torch.tensor([[0.0, -700.0, -math.inf, -700.0]], dtype=torch.float64)
    out = paft_loss(torch.zeros_like(a), a, 0.75, num_samples=50, generator=torch.Generator())
    assert out.extras["counts"][0].tolist() == [50.0, 0.0, 0.0, 0.0]


def _pool(M=4):
    a = torch.tensor(
        [
            [-1.0, -2.5, -0.3, -4.0, -1.7, -math.inf][:M],
            [-800.0, -801.0, -799.5, -803.0, -800.2, -790.0][:M],
        ],
        dtype=torch.float64,
    )
    r = torch.tensor([[-3.0, -1.0, -2.0, -5.0, -0.5, -2.2][:M]] * 2, dtype=torch.float64)
    return r, a


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, RANDOM_Q])
def test_paft_expectation_by_exact_enumeration_equals_garl_plugin(q, monkeypatch):
    """Prop D.3: E[PAFT | pool] = GARL plug-in, summing over every multinomial outcome of K draws."""
    M, K = 4, 3
    r, a = _pool(M)
    B = a.shape[0]
    _, plug_r, plug_a = autograd_grads(garl_loss, r, a, q, baseline="none")
    probs = []
    for row in a.tolist():
        w = [mpmath.exp(x) if x != -math.inf else mpmath.mpf(0) for x in row]
        probs.append([x / mpmath.fsum(w) for x in w])
    outcomes = [n for n in itertools.product(range(K + 1), repeat=M) if sum(n) == K]
    exp_r = torch.zeros(B, M, dtype=torch.float64)
    exp_a = torch.zeros(B, M, dtype=torch.float64)
    for combo in itertools.product(outcomes, repeat=B):
        counts = torch.tensor(combo, dtype=torch.float64)
        p = mpmath.mpf(1)
        for b in range(B):
            p *= mpmath.factorial(K)
            for m in range(M):
                p *= probs[b][m] ** combo[b][m] / mpmath.factorial(combo[b][m])
        if p == 0:
            continue
        monkeypatch.setattr(est, "paft_counts", lambda *args, c=counts, **kw: c.clone())
        out, gr, ga = autograd_grads(paft_loss, r, a, q, num_samples=K)
        assert torch.equal(out.extras["counts"], counts)
        exp_r += float(p) * gr
        exp_a += float(p) * ga
    torch.testing.assert_close(exp_r, plug_r, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(exp_a, plug_a, rtol=1e-12, atol=1e-300)


def test_paft_expectation_over_200k_draws_matches_garl_plugin():
    """Prop D.3 with the real sampler: 2 x 10**5 categorical draws per pool."""
    r, a = _pool(6)
    q, K = 0.5, 200_000
    _, plug_r, _ = autograd_grads(garl_loss, r, a, q, baseline="none")
    out, gr, ga = autograd_grads(
        paft_loss, r, a, q, num_samples=K, generator=torch.Generator().manual_seed(2026)
    )
    # d/dx = -n w_bar**(1-q) / (B M**q K); E[n] = K p, Var[n] = K p (1 - p)
    M = a.shape[1]
    p = torch.softmax(a, 1)  # (the second pool's weights underflow: stay in log space)
    atten = torch.exp((1 - q) * (torch.logsumexp(a, 1, keepdim=True) - math.log(M)))
    sd = (K * p * (1 - p)).sqrt() / (a.shape[0] * M**q * K) * atten
    assert ((gr - plug_r).abs() <= 5 * sd + 1e-300).all(), (gr, plug_r, sd)
    # the counts themselves pass a chi-square goodness-of-fit test against the categorical
    from scipy.stats import chisquare

    for b in range(2):
        live = p[b] > 0
        n = out.extras["counts"][b][live].numpy()
        assert chisquare(n, (K * p[b][live]).numpy()).pvalue > 1e-4


# --------------------------------------------------------------------------------------------------
# Prop 6.2: the leave-one-out baseline keeps the expectation (exact enumeration)


class DiscreteLatentModel:
    """Z rationales with p(z | x) = softmax(theta), p(y* | x, z) = sigmoid(phi_z)."""

    def __init__(self, Z=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.randn(Z, generator=g, dtype=torch.float64).requires_grad_(True)
        self.phi = (torch.randn(Z, generator=g, dtype=torch.float64) - 1).requires_grad_(True)
        self.Z = Z

    def inputs(self, tuples: torch.Tensor):
        rationale_logp = torch.log_softmax(self.theta, 0)[tuples]
        answer_logp = torch.nn.functional.logsigmoid(self.phi)[tuples]
        return rationale_logp, answer_logp

    def success_prob(self):
        return (torch.softmax(self.theta, 0) * torch.sigmoid(self.phi)).sum()

    def expected_gradient(self, M: int, **garl_kwargs):
        """Sum over all Z**M tuples of p(tuple) * grad of the GARL loss on that tuple."""
        tuples = torch.tensor(list(itertools.product(range(self.Z), repeat=M)))
        p_z = torch.softmax(self.theta.detach(), 0)
        total = 0.0
        for t in tuples:
            r, a = self.inputs(t[None])
            total = total + p_z[t].prod() * garl_loss(r, a, **garl_kwargs).loss
        return torch.autograd.grad(total, [self.theta, self.phi])


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("q", QS)
def test_rloo_baseline_keeps_expectation(M, q):
    model = DiscreteLatentModel(seed=M)
    rloo = model.expected_gradient(M, q=q, baseline="rloo")
    plug = model.expected_gradient(M, q=q, baseline="none")
    for g1, g2 in zip(rloo, plug):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)
    # the baseline does change the per-sample estimator (it is not trivially equal)
    r, a = model.inputs(torch.tensor([[0, 1, 2][:M]]))
    assert not torch.allclose(
        garl_loss(r, a, q, baseline="rloo").rationale_grad,
        garl_loss(r, a, q, baseline="none").rationale_grad,
    )


@pytest.mark.parametrize("M", [2, 3])
def test_garl_at_q_zero_is_unbiased_for_the_expected_reward_gradient(M):
    """Thm 6.1: the bias vanishes at q = 0; E[g] = grad (1 - P) exactly."""
    model = DiscreteLatentModel(seed=10 + M)
    got = model.expected_gradient(M, q=0.0)
    exact = torch.autograd.grad(1 - model.success_prob(), [model.theta, model.phi])
    for g1, g2 in zip(got, exact):
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)


def test_garl_bias_shrinks_with_M_for_q_above_zero():
    """Thm 6.1: for q > 0 the bias is O(1 / M); M**q E[g] approaches grad l_q (here M = 2 vs 4)."""
    model = DiscreteLatentModel(Z=3, seed=3)
    q = 0.75
    P = model.success_prob()
    exact = torch.autograd.grad((1 - P ** (1 - q)) / (1 - q), [model.theta, model.phi])
    errs = []
    for M in (2, 4):
        got = model.expected_gradient(M, q=q, normalize=False)
        errs.append(sum((g1 - g2).norm() for g1, g2 in zip(got, exact)).item())
    assert errs[1] < 0.7 * errs[0], errs


# --------------------------------------------------------------------------------------------------
# GRPO


def _grpo_inputs():
    g = torch.Generator().manual_seed(11)
    B, M, T = 2, 4, 5
    token_logp = -torch.rand(B, M, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, M, T, dtype=torch.float64)
    mask[0, 1, 3:] = 0
    mask[1, 2, 1:] = 0
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    return token_logp, mask, rewards


def test_grpo_advantages_are_group_normalised():
    token_logp, mask, rewards = _grpo_inputs()
    out = grpo_loss(token_logp, mask, rewards)
    for b, row in enumerate(rewards.tolist()):
        mu, sd = statistics.mean(row), statistics.stdev(row)  # unbiased std, as in TRL
        for m, r in enumerate(row):
            assert out.advantages[b, m].item() == pytest.approx((r - mu) / (sd + 1e-4), rel=1e-12)
    out2 = grpo_loss(token_logp, mask, rewards, scale_rewards=False)
    torch.testing.assert_close(out2.advantages, rewards - rewards.mean(1, keepdim=True))


def test_grpo_with_ratio_one_is_minus_advantage_times_mean_token_gradient():
    token_logp, mask, rewards = _grpo_inputs()
    B, M, _ = token_logp.shape
    n_tok = mask.sum(-1, keepdim=True)
    for old in (None, token_logp.clone()):
        x = token_logp.clone().requires_grad_(True)
        out = grpo_loss(x, mask, rewards, old_token_logp=old)
        out.loss.backward()
        ref = -out.advantages[:, :, None] * mask / n_tok / (B * M)
        torch.testing.assert_close(x.grad, ref, rtol=1e-12, atol=1e-15)
        assert out.loss.item() == pytest.approx(-out.advantages.mean().item(), abs=1e-12)
        assert out.stats["clip_ratio"] == 0.0


def test_grpo_group_with_equal_rewards_gives_exactly_zero_gradient():
    token_logp, mask, rewards = _grpo_inputs()
    rewards[1] = 0.0  # every sample failed: no signal (the cold-start failure of GRPO)
    x = token_logp.clone().requires_grad_(True)
    out = grpo_loss(x, mask, rewards, old_token_logp=token_logp - 0.3)
    out.loss.backward()
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))
    assert (x.grad[0] != 0).any()
    assert out.stats["frac_reward_zero_std"] == 0.5
    rewards[0] = 1.0
    x = token_logp.clone().requires_grad_(True)
    grpo_loss(x, mask, rewards).loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x.grad))


def test_grpo_clipping_follows_the_ppo_rule():
    """-min(rho A, clip(rho) A): the gradient vanishes exactly where the clipped branch is active."""
    B, M, T, eps = 1, 4, 1, 0.2
    token_logp = torch.zeros(B, M, T, dtype=torch.float64)
    mask = torch.ones(B, M, T, dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)  # A = +a, -a, +a, -a
    rho = torch.tensor([1.5, 1.5, 0.5, 0.5], dtype=torch.float64)
    old = -torch.log(rho).reshape(B, M, T)  # ratio = exp(0 - old) = rho
    x = token_logp.clone().requires_grad_(True)
    out = grpo_loss(x, mask, rewards, old_token_logp=old, clip_eps=eps)
    out.loss.backward()
    adv = out.advantages[0]
    # rho = 1.5, A > 0: clipped at 1.2, no gradient; rho = 1.5, A < 0: unclipped, grad -A rho / (BM)
    # rho = 0.5, A > 0: unclipped; rho = 0.5, A < 0: clipped at 0.8, no gradient
    expected_grad = torch.tensor([0.0, -adv[1] * 1.5, -adv[2] * 0.5, 0.0]) / (B * M)
    torch.testing.assert_close(x.grad.flatten(), expected_grad, rtol=1e-12, atol=1e-15)
    expected_loss = -(adv[0] * 1.2 + adv[1] * 1.5 + adv[2] * 0.5 + adv[3] * 0.8) / (B * M)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    assert out.stats["clip_ratio"] == 1.0  # every ratio lies outside [0.8, 1.2]


def test_grpo_ignores_padded_tokens_even_when_they_are_minus_inf():
    token_logp, mask, rewards = _grpo_inputs()
    padded = token_logp.masked_fill(mask == 0, -math.inf)
    x = padded.clone().requires_grad_(True)
    out = grpo_loss(x, mask, rewards, old_token_logp=padded - 0.1)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[mask == 0], torch.zeros_like(x.grad[mask == 0]))
    y = token_logp.clone().requires_grad_(True)
    ref = grpo_loss(y, mask, rewards, old_token_logp=token_logp - 0.1)
    ref.loss.backward()
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-14)
    torch.testing.assert_close(x.grad, y.grad)


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_returns_each_estimator_by_name():
    assert get_estimator("garl") is garl_loss
    assert get_estimator("paft") is paft_loss
    assert get_estimator("grpo") is grpo_loss
    assert get_estimator("rb_rloo") is rb_rloo_loss
    assert get_estimator("GARL") is garl_loss
    assert get_estimator_spec("grpo").inputs == "sampled_reward"
    assert (
        get_estimator_spec("garl").inputs == "teacher_forced" and get_estimator_spec("garl").uses_q
    )
    assert not get_estimator_spec("rb_rloo").uses_q
    assert {"garl", "paft", "grpo", "rb_rloo"} <= set(list_estimators())
    # the registered function is usable through the uniform signature
    r, a = random_inputs(2, 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(get_estimator("rb_rloo")(r, a, 0.0).loss)


def test_unknown_estimator_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_estimator("reinforce++")
    msg = str(info.value)
    assert "reinforce++" in msg
    for name in ("garl", "paft", "grpo", "rb_rloo"):
        assert name in msg


def test_register_estimator_adds_a_name():
    @register_estimator("Test_Only_Estimator", description="test")
    def fn(rationale_logp, answer_logp, q):
        return garl_loss(rationale_logp, answer_logp, q)

    try:
        assert get_estimator("test_only_estimator") is fn
        assert "test_only_estimator" in list_estimators()
    finally:
        est._REGISTRY.pop("test_only_estimator", None)
    with pytest.raises(ValueError, match="inputs"):
        register_estimator("x", inputs="bogus")


# --------------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("bad_q", [-0.01, 1.01, float("nan"), "high"])
def test_q_outside_unit_interval_raises(bad_q):
    r, a = random_inputs(2, 3, torch.Generator().manual_seed(0))
    for fn in (garl_loss, paft_loss):
        with pytest.raises(ValueError, match="q must"):
            fn(r, a, bad_q)
    with pytest.raises(ValueError, match="q"):
        rb_rloo_loss(r, a, 0.5)


def test_rloo_needs_at_least_two_samples():
    r, a = torch.zeros(3, 1), torch.zeros(3, 1)
    with pytest.raises(ValueError, match="M >= 2"):
        garl_loss(r, a, 0.5)
    with pytest.raises(ValueError, match="M >= 2"):
        rb_rloo_loss(r, a)
    # the plug-in and PAFT are defined at M = 1
    assert torch.isfinite(garl_loss(r, a, 0.5, baseline="none").loss)
    assert torch.isfinite(paft_loss(r, a, 0.5).loss)


def test_shape_mismatch_and_wrong_rank_raise():
    with pytest.raises(ValueError, match="shape mismatch"):
        garl_loss(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        paft_loss(torch.zeros(2, 3), torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="rationale_logp"):
        garl_loss(torch.zeros(6), torch.zeros(6), 0.5)
    with pytest.raises(ValueError, match="answer_logp"):
        garl_loss(torch.zeros(2, 3), torch.zeros(2, 3, 1), 0.5)
    with pytest.raises(ValueError, match="answer_logp"):
        garl_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="baseline"):
        garl_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, baseline="mean")


@pytest.mark.parametrize("K", [0, -3, 2.5, True, "4"])
def test_paft_needs_an_integer_number_of_samples_at_least_one(K):
    with pytest.raises(ValueError, match="num_samples"):
        paft_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.5, num_samples=K)


def test_nan_and_infinite_inputs_raise_naming_the_argument():
    ok = torch.zeros(2, 3)
    bad = ok.clone()
    bad[1, 2] = float("nan")
    for fn in (garl_loss, paft_loss):
        with pytest.raises(ValueError, match="answer_logp has NaN"):
            fn(ok, bad, 0.5)
        with pytest.raises(ValueError, match="rationale_logp has NaN"):
            fn(bad, ok, 0.5)
        inf = ok.clone()
        inf[0, 0] = math.inf
        with pytest.raises(ValueError, match=r"answer_logp has \+inf"):
            fn(ok, inf, 0.5)
        with pytest.raises(ValueError, match="rationale_logp"):
            fn(-inf, ok, 0.5)


def test_grpo_bad_arguments_raise():
    token_logp, mask, rewards = _grpo_inputs()
    with pytest.raises(ValueError, match="token_logp"):
        grpo_loss(token_logp[0], mask[0], rewards)
    with pytest.raises(ValueError, match="token_mask"):
        grpo_loss(token_logp, mask[:, :, :-1], rewards)
    with pytest.raises(ValueError, match="rewards"):
        grpo_loss(token_logp, mask, rewards[:, :-1])
    with pytest.raises(ValueError, match="old_token_logp"):
        grpo_loss(token_logp, mask, rewards, old_token_logp=token_logp[:1])
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(token_logp, mask, rewards, clip_eps=0.0)
    nan_r = rewards.clone()
    nan_r[0, 0] = float("nan")
    with pytest.raises(ValueError, match="rewards has NaN"):
        grpo_loss(token_logp, mask, nan_r)
    nan_t = token_logp.clone()
    nan_t[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="token_logp has NaN"):
        grpo_loss(nan_t, mask, rewards)
    with pytest.raises(ValueError, match="old_token_logp has NaN"):
        grpo_loss(token_logp, mask, rewards, old_token_logp=nan_t)
    nan_t[0, 1, 4] = float("nan")  # a padded position (mask[0, 1, 3:] = 0) may hold anything
    nan_t[0, 0, 0] = 0.0
    assert torch.isfinite(grpo_loss(nan_t, mask, rewards).loss)
