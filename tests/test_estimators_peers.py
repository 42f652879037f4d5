"""Peer objectives (VeriFree, loglik, IWAE/VIMCO, RLPR, RFT): gradients equal their formulas.

Each reference below is the estimator's published objective written as a plain stop-gradient
surrogate in float64 (exp, explicit leave-one-out loops, logsumexp), differentiated by autograd,
and compared with the registered estimator's gradient to 1e-6.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tsallis_rl.estimators import (
    garl_loss,
    get_estimator,
    get_estimator_spec,
    iwae_loss,
    loglik_loss,
    register_estimator,
    rft_loss,
    rlpr_loss,
    verifree_loss,
)

SHAPES = [(1, 2), (3, 5), (2, 7)]


def toy(B, M, seed, low=-30.0):
    g = torch.Generator().manual_seed(seed)
    r = -20 * torch.rand(B, M, generator=g, dtype=torch.float64)
    a = low * torch.rand(B, M, generator=g, dtype=torch.float64)
    return r, a


def grads_of(fn, r, a, **kw):
    r = r.detach().clone().requires_grad_(True)
    a = a.detach().clone().requires_grad_(True)
    out = fn(r, a, **kw)
    out.loss.backward()
    ga = a.grad if a.grad is not None else torch.zeros_like(a)
    return out, r.grad, ga


def loo_mean_loops(x: torch.Tensor) -> torch.Tensor:
    B, M = x.shape
    return torch.tensor(
        [
            [sum(x[b, j].item() for j in range(M) if j != m) / (M - 1) for m in range(M)]
            for b in range(B)
        ],
        dtype=torch.float64,
    )


def close(got, want):
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), (got - want).abs().max()


# --------------------------------------------------------------------------------------------------
# VeriFree


def ref_verifree(r, a):
    B, M = r.shape
    w = torch.exp(a)  # differentiable: d w / d a = w (the pathwise term)
    adv = (w - loo_mean_loops(w)).detach()
    return -(adv * r).sum() / (B * M) - w.sum() / (B * M)


@pytest.mark.parametrize("B,M", SHAPES)
def test_verifree_gradient_equals_rloo_on_w_plus_pathwise_term(B, M):
    r, a = toy(B, M, seed=B * 10 + M, low=-5.0)
    _, gr, ga = grads_of(verifree_loss, r, a)
    _, wr, wa = grads_of(lambda r, a: type("O", (), {"loss": ref_verifree(r, a)})(), r, a)
    close(gr, wr)
    close(ga, wa)


@pytest.mark.parametrize("B,M", SHAPES + [(4, 16)])
def test_verifree_equals_garl_at_q_zero_to_1e12_in_float64(B, M):
    r, a = toy(B, M, seed=7 * B + M, low=-3.0)
    _, vr, va = grads_of(verifree_loss, r, a)
    _, gr, ga = grads_of(garl_loss, r, a, q=0.0)
    assert torch.allclose(vr, gr, rtol=1e-12, atol=1e-300)
    assert torch.allclose(va, ga, rtol=1e-12, atol=1e-300)
    assert vr.abs().sum() > 0


def test_verifree_rejects_a_q_other_than_zero():
    r, a = toy(2, 3, seed=0)
    verifree_loss(r, a, 0.0)
    with pytest.raises(ValueError, match="q = 0"):
        verifree_loss(r, a, 0.5)


# --------------------------------------------------------------------------------------------------
# loglik (E[log w])


def ref_loglik(r, a, baseline="rloo", pathwise=True):
    B, M = r.shape
    sig = (a - loo_mean_loops(a)).detach() if baseline == "rloo" else a.detach()
    path = a.sum() if pathwise else 0.0
    return -(sig * r).sum() / (B * M) - path / (B * M)


@pytest.mark.parametrize("B,M", SHAPES)
@pytest.mark.parametrize("baseline,pathwise", [("rloo", True), ("none", True), ("rloo", False)])
def test_loglik_gradient_equals_rloo_on_log_w_plus_grad_log_w(B, M, baseline, pathwise):
    r, a = toy(B, M, seed=B + M)
    _, gr, ga = grads_of(loglik_loss, r, a, baseline=baseline, pathwise=pathwise)
    r2, a2 = r.clone().requires_grad_(True), a.clone().requires_grad_(True)
    ref_loglik(r2, a2, baseline, pathwise).backward()
    close(gr, r2.grad)
    close(ga, a2.grad if a2.grad is not None else torch.zeros_like(a))


def test_loglik_refuses_log_zero_weights():
    r, a = toy(1, 3, seed=1)
    a[0, 1] = -math.inf
    with pytest.raises(ValueError, match="finite answer_logp"):
        loglik_loss(r, a)


# --------------------------------------------------------------------------------------------------
# IWAE with the VIMCO baseline


def ref_iwae(r, a, normalize=True, pathwise=True):
    """sum_m (L - L_-m) log p(z_m) + L, with L = log mean w (autograd gives w_m / sum w for d/d a)."""
    B, M = r.shape
    L = torch.logsumexp(a, dim=1) - math.log(M)  # [B], differentiable
    sig = torch.zeros(B, M, dtype=torch.float64)
    for b in range(B):
        for m in range(M):
            others = [a[b, j].item() for j in range(M) if j != m]
            geo = sum(others) / (M - 1)
            L_loo = math.log((sum(math.exp(x) for x in others) + math.exp(geo)) / M)
            sig[b, m] = L[b].item() - L_loo
    scale = B * (M if normalize else 1)
    path = L.sum() if pathwise else 0.0
    return -((sig * r).sum() + path) / scale


@pytest.mark.parametrize("B,M", SHAPES)
@pytest.mark.parametrize("normalize,pathwise", [(True, True), (False, True), (True, False)])
def test_iwae_gradient_equals_vimco_formula(B, M, normalize, pathwise):
    r, a = toy(B, M, seed=3 * B + M, low=-8.0)
    _, gr, ga = grads_of(iwae_loss, r, a, normalize=normalize, pathwise=pathwise)
    r2, a2 = r.clone().requires_grad_(True), a.clone().requires_grad_(True)
    ref_iwae(r2, a2, normalize, pathwise).backward()
    close(gr, r2.grad)
    close(ga, a2.grad if a2.grad is not None else torch.zeros_like(a))


def test_iwae_shares_garl_q1_pathwise_term_and_differs_in_the_rationale_signal():
    r, a = toy(3, 6, seed=11, low=-10.0)
    iw, ir, ia = grads_of(iwae_loss, r, a)
    ga_, gr, gap = grads_of(garl_loss, r, a, q=1.0)
    assert torch.allclose(ia, gap, rtol=1e-12)
    assert not torch.allclose(ir, gr, rtol=1e-3)


def test_vimco_baseline_keeps_the_expectation_by_exact_enumeration():
    """E_z[sum_m (L - L_-m) grad log p(z_m)] = E_z[sum_m L grad log p(z_m)] over all M-tuples of a
    3-way latent: the leave-one-out baseline does not move the expected gradient."""
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    log_lik = torch.tensor([-1.0, -4.0, -0.5], dtype=torch.float64)
    M = 3
    with_base, plain = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    logp = torch.log_softmax(theta, 0)
    for zs in itertools.product(range(3), repeat=M):
        prob = math.exp(sum(logp[z].item() for z in zs))
        r = logp[list(zs)][None]  # [1, M]
        a = log_lik[list(zs)][None]
        (g,) = torch.autograd.grad(
            iwae_loss(r, a, normalize=False, pathwise=False).loss, theta, retain_graph=True
        )
        with_base += prob * -g
        L = torch.logsumexp(a, 1) - math.log(M)
        (g2,) = torch.autograd.grad((L.detach() * r).sum(), theta, retain_graph=True)
        plain += prob * g2
    assert torch.allclose(with_base, plain, atol=1e-12), (with_base, plain)
    assert plain.abs().sum() > 1e-3


# --------------------------------------------------------------------------------------------------
# RLPR


def rlpr_inputs(B, M, T, seed):
    g = torch.Generator().manual_seed(seed)
    tok = -3 * torch.rand(B, M, T, generator=g, dtype=torch.float64)
    mask = torch.ones(B, M, T, dtype=torch.float64)
    mask[:, :, T - 1] = 0  # a padded position holding garbage
    tok[:, :, T - 1] = -math.inf
    base = -4 * torch.rand(B, T, generator=g, dtype=torch.float64)
    base_mask = torch.ones(B, T, dtype=torch.float64)
    base_mask[:, 0] = 0
    return tok, mask, base, base_mask


def y_star(B, T, span=(1, 3)):
    """The y* span of a teacher-forced answer [prefix | y* | end]: 1 on positions span[0]..span[1]-1."""
    target = torch.zeros(B, T, dtype=torch.float64)
    target[:, span[0] : span[1]] = 1
    return target


@pytest.mark.parametrize("B,M", [(1, 2), (3, 5)])
def test_rlpr_gradient_is_group_normalised_clipped_prob_reward_on_the_rationale(B, M):
    r, a = toy(B, M, seed=B + 2 * M)
    tok, mask, base, bmask = rlpr_inputs(B, M, 4, seed=M)
    target = y_star(B, 4)  # answer = [prefix | y*_1 y*_2 | end]: y* at positions 1, 2
    kw = dict(
        answer_token_logp=tok,
        answer_mask=mask,
        answer_target_mask=target,
        no_rationale_token_logp=base,
        no_rationale_mask=bmask,
    )
    out, gr, ga = grads_of(rlpr_loss, r, a, **kw)
    # reference: literal loops over the y* tokens alone (RLPR's ground_truth_mask)
    reward = torch.zeros(B, M, dtype=torch.float64)
    for b in range(B):
        on = [t for t in range(4) if bmask[b, t] and target[b, t]]
        b0 = sum(math.exp(base[b, t].item()) for t in on) / len(on)
        for m in range(M):
            on = [t for t in range(4) if mask[b, m, t] and target[b, t]]
            p = sum(math.exp(tok[b, m, t].item()) for t in on) / len(on)
            reward[b, m] = max(p - b0, 0.0)
    adv = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
    adv[reward.std(1) < 1e-6] = 0
    r2 = r.clone().requires_grad_(True)
    (-(adv * r2).sum() / (B * M)).backward()
    close(gr, r2.grad)
    assert ga.abs().sum() == 0  # no pathwise term
    assert torch.allclose(out.extras["reward"], reward)
    assert (out.extras["reward"] >= 0).all()


def test_rlpr_reward_below_the_no_rationale_baseline_is_clipped_to_zero():
    r, a = toy(1, 3, seed=0)
    tok = torch.log(torch.tensor([[[0.2, 0.2], [0.5, 0.5], [0.9, 0.9]]], dtype=torch.float64))
    base = torch.log(torch.tensor([[0.4, 0.4]], dtype=torch.float64))
    out = rlpr_loss(
        r, a, answer_token_logp=tok, answer_mask=torch.ones_like(tok),
        answer_target_mask=torch.ones_like(base),
        no_rationale_token_logp=base, no_rationale_mask=torch.ones_like(base),
    )  # fmt: skip
    assert torch.allclose(
        out.extras["reward"], torch.tensor([[0.0, 0.1, 0.5]], dtype=torch.float64)
    )


def test_rlpr_std_filter_zeroes_flat_groups():
    r, a = toy(2, 3, seed=0)
    tok, mask, base, bmask = rlpr_inputs(2, 3, 3, seed=1)
    tok[1] = -0.1  # group 1: every rationale gives the same reward
    out = rlpr_loss(r, a, answer_token_logp=tok, answer_mask=mask, no_rationale_token_logp=base,
                    no_rationale_mask=bmask, answer_target_mask=y_star(2, 3))  # fmt: skip
    assert out.rationale_grad[1].abs().sum() == 0 and out.rationale_grad[0].abs().sum() > 0


def test_rlpr_reward_is_the_y_star_span_alone_not_the_prefix_or_end_token():
    """Issue 22 item 1: y* = "42" after a "\n\n" prefix is 5 answer tokens, 2 of them y*. RLPR
    averages p over those 2; a near-certain end token or prefix must not enter the reward."""
    r, a = toy(1, 2, seed=0)
    p = torch.tensor([[[0.99, 0.99, 0.01, 0.02, 0.99], [0.99, 0.99, 0.03, 0.04, 0.99]]])
    tok = torch.log(p.double())
    base = torch.log(torch.tensor([[0.99, 0.99, 0.005, 0.005, 0.99]], dtype=torch.float64))
    target = torch.tensor([[0, 0, 1, 1, 0]], dtype=torch.float64)
    out = rlpr_loss(
        r, a, answer_token_logp=tok, answer_mask=torch.ones_like(tok), answer_target_mask=target,
        no_rationale_token_logp=base, no_rationale_mask=torch.ones_like(base),
    )  # fmt: skip
    want = torch.tensor([[0.015 - 0.005, 0.035 - 0.005]], dtype=torch.float64)
    assert torch.allclose(out.extras["reward"], want, atol=1e-12)
    assert out.stats["mean_token_prob"] == pytest.approx(0.025)
    # a target mask narrower than the answer tokens (one micro-batch's width) is padded with 0
    narrow = rlpr_loss(
        r, a, answer_token_logp=tok, answer_mask=torch.ones_like(tok),
        answer_target_mask=target[:, :4], no_rationale_token_logp=base,
        no_rationale_mask=torch.ones_like(base),
    )  # fmt: skip
    assert torch.equal(narrow.extras["reward"], out.extras["reward"])


def test_rlpr_normalises_with_eps_1e6_and_zeroes_groups_below_std_1e6():
    """Issue 22 item 6: RLPR's compute_grpo_outcome_advantage divides by std + 1e-6 (not 1e-4:
    cold-start rewards ~1e-5 apart would be damped ~10x) and zeroes groups with std < 1e-6."""
    r, a = toy(2, 2, seed=0)
    # group 0: mean probs 2e-5 and 4e-5 (std 1.4e-5); group 1: 1e-7 apart (std 7e-8 < 1e-6)
    p = torch.tensor([[2e-5, 4e-5], [1e-5, 1e-5 + 1e-7]], dtype=torch.float64)
    tok = torch.log(p)[:, :, None]
    base = torch.full((2, 1), -math.inf, dtype=torch.float64)
    one = torch.ones(2, 1, dtype=torch.float64)
    out = rlpr_loss(
        r, a, answer_token_logp=tok, answer_mask=torch.ones_like(tok), answer_target_mask=one,
        no_rationale_token_logp=base, no_rationale_mask=one,
    )  # fmt: skip
    std0 = p[0].std().item()
    want0 = (p[0] - p[0].mean()) / (std0 + 1e-6)
    assert torch.allclose(out.advantages[0], want0, rtol=1e-12)
    assert abs(out.advantages[0, 1].item()) > 0.65  # eps 1e-4 would give 0.088
    assert out.advantages[1].abs().sum() == 0
    assert out.stats["frac_filtered"] == 0.5


def test_rlpr_adaptive_threshold_zeroes_groups_below_it():
    r, a = toy(2, 3, seed=0)
    tok, mask, base, bmask = rlpr_inputs(2, 3, 3, seed=1)
    kw = dict(answer_token_logp=tok, answer_mask=mask, no_rationale_token_logp=base,
              no_rationale_mask=bmask, answer_target_mask=y_star(2, 3, (0, 2)))  # fmt: skip
    free = rlpr_loss(r, a, **kw)
    std = free.extras["reward_std"]
    cut = (std[0] + std[1]) / 2
    out = rlpr_loss(r, a, **kw, min_reward_std=cut.item())
    low = int(std.argmin())
    assert out.rationale_grad[low].abs().sum() == 0
    assert torch.equal(out.rationale_grad[1 - low], free.rationale_grad[1 - low])


# --------------------------------------------------------------------------------------------------
# RFT


def rft_inputs(B, M, T, seed):
    g = torch.Generator().manual_seed(seed)
    tok = -2 * torch.rand(B, M, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, M, T, generator=g) < 0.8).to(torch.float64)
    tok = torch.where(mask > 0, tok, torch.full_like(tok, -math.inf))
    return tok, mask


@pytest.mark.parametrize("group_mean", [True, False])
def test_rft_gradient_is_ml_on_accepted_samples(group_mean):
    B, M, T = 3, 4, 5
    tok, mask = rft_inputs(B, M, T, seed=2)
    rewards = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float64)
    t = tok.clone().requires_grad_(True)
    rft_loss(t, mask, rewards, group_mean=group_mean).loss.backward()
    want = torch.zeros(B, M, T, dtype=torch.float64)
    for b in range(B):
        n = sum(rewards[b] > 0).item()
        for m in range(M):
            if rewards[b, m] > 0:
                want[b, m] = -mask[b, m] / (B * (n if group_mean else M))
    close(t.grad, want)
    assert t.grad[1].abs().sum() == 0  # no sample accepted: zero gradient


def test_rft_with_nothing_accepted_has_exactly_zero_gradient_and_finite_loss():
    tok, mask = rft_inputs(2, 3, 4, seed=0)
    t = tok.clone().requires_grad_(True)
    out = rft_loss(t, mask, torch.zeros(2, 3, dtype=torch.float64))
    out.loss.backward()
    assert out.loss.item() == 0.0 and t.grad.abs().sum() == 0 and not out.advantages.any()


# --------------------------------------------------------------------------------------------------
# Extreme log-weights and the registry


@pytest.mark.parametrize("name", ["verifree", "loglik", "iwae"])
@pytest.mark.parametrize("low", [-1000.0, -5000.0])
def test_teacher_forced_peers_stay_finite_at_extreme_log_weights(name, low):
    r = torch.full((2, 4), -10.0, dtype=torch.float64)
    a = torch.tensor(
        [[low, low - 3, low + 2, low - 700], [low, low, low, low]], dtype=torch.float64
    )
    out, gr, ga = grads_of(get_estimator(name), r, a)
    assert torch.isfinite(out.loss) and torch.isfinite(gr).all() and torch.isfinite(ga).all()
    assert all(not math.isnan(v) for v in out.stats.values())
    if name == "iwae":  # differences of log-weights only: exact, non-zero signal at any scale
        ref_r = torch.tensor([[0.0, -3.0, 2.0, -700.0]], dtype=torch.float64)
        _, want, _ = grads_of(iwae_loss, r[:1], ref_r)
        assert torch.allclose(gr[:1], want / 2, rtol=1e-9) and gr[0].abs().sum() > 0


@pytest.mark.parametrize("low", [-1000.0, -5000.0])
def test_rlpr_and_rft_stay_finite_at_extreme_log_probs(low):
    r, a = toy(2, 3, seed=0)
    tok = torch.full((2, 3, 4), low, dtype=torch.float64)
    tok[0, 0] = -0.1
    ones = torch.ones_like(tok)
    out, gr, _ = grads_of(rlpr_loss, r, a, answer_token_logp=tok, answer_mask=ones,
                          answer_target_mask=ones[:, 0],
                          no_rationale_token_logp=tok[:, 0], no_rationale_mask=ones[:, 0])  # fmt: skip
    assert torch.isfinite(out.loss) and torch.isfinite(gr).all()
    t = tok.clone().requires_grad_(True)
    o2 = rft_loss(t, ones, torch.tensor([[1.0, 0, 0], [0, 0, 1]], dtype=torch.float64))
    o2.loss.backward()
    assert torch.isfinite(o2.loss) and torch.isfinite(t.grad).all()


def test_specs_declare_inputs_rollouts_and_options():
    rlpr = get_estimator_spec("rlpr")
    assert rlpr.needs_answer_tokens and rlpr.needs_no_rationale and not rlpr.sequence_only
    assert rlpr.needs_target_span and "answer_target_mask" not in rlpr.options
    assert (
        get_estimator_spec("rft").needs_sampled_rewards
        and get_estimator_spec("grpo").needs_sampled_rewards
    )
    assert not get_estimator_spec("verifree").needs_sampled_rewards
    assert (
        get_estimator_spec("iwae").min_rollouts == 2
        and get_estimator_spec("paft").min_rollouts == 1
    )
    garl = get_estimator_spec("garl")
    assert garl.required_rollouts({"baseline": "rloo"}) == 2
    assert garl.required_rollouts({"baseline": "none"}) == 1
    assert get_estimator_spec("rb_rloo").required_rollouts({"baseline": "none"}) == 2
    assert set(garl.options) == {"baseline", "pathwise", "normalize"}
    assert "answer_token_logp" not in rlpr.options and "min_reward_std" in rlpr.options
    assert {s for s in ("garl", "paft", "rb_rloo", "verifree", "loglik", "iwae")
            if get_estimator_spec(s).sequence_only} == {"garl", "paft", "rb_rloo", "verifree", "loglik", "iwae"}  # fmt: skip


def test_spec_bind_passes_q_only_to_estimators_that_use_it_and_only_their_options():
    r, a = toy(2, 4, seed=3)
    opts = {
        "baseline": "rloo",
        "pathwise": False,
        "normalize": True,
        "clip_eps": 0.2,
        "num_samples": None,
    }
    out = get_estimator_spec("garl").bind(0.5, opts)(r, a)
    want = garl_loss(r, a, 0.5, pathwise=False)
    assert torch.equal(out.rationale_grad, want.rationale_grad)
    assert get_estimator_spec("verifree").bind(0.5, opts)(r, a).loss.isfinite()  # q not passed


def test_registering_a_taken_name_raises_unless_override():
    with pytest.raises(ValueError, match="already registered"):
        register_estimator("garl")(garl_loss)
    assert get_estimator("garl") is garl_loss

    @register_estimator("peer_test_tmp", description="t")
    def first(rationale_logp, answer_logp, q):
        return garl_loss(rationale_logp, answer_logp, q)

    from tsallis_rl import estimators as est

    try:

        @register_estimator("peer_test_tmp", override=True, description="t2")
        def second(rationale_logp, answer_logp, q):
            return garl_loss(rationale_logp, answer_logp, q)

        assert get_estimator("peer_test_tmp") is second
    finally:
        est._REGISTRY.pop("peer_test_tmp", None)


def test_peers_are_exported_from_the_package():
    import tsallis_rl

    assert tsallis_rl.rb_rloo is tsallis_rl.rb_rloo_loss
    for name in ("verifree_loss", "loglik_loss", "iwae_loss", "rlpr_loss", "rft_loss"):
        assert callable(getattr(tsallis_rl, name))
