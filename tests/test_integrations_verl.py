"""tsallis_rl.integrations.verl: GARL/PAFT as verl advantage estimators, checked against the core.

Runs in .venv-verl (`make test-verl`); skipped where verl is not installed. What is pinned:
  - the registered estimators return, per row, M times the core's coefficient of that row's group,
    whatever the row order and group sizes (the core is called here on each group alone);
  - PAFT's per-row advantages are the core's resampling counts (summing to K per group) times the
    attenuation;
  - through verl's own get_policy_loss_fn("vanilla") at ratio 1 with loss_agg_mode
    "seq-mean-token-sum", the gradient on the token log-probs equals the gradient of the core
    estimator's loss (garl_loss / paft_loss, pathwise off: w is a reward) on the same toy log-probs;
  - config errors name the `algorithm.tsallis_*` key.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
OmegaConf = pytest.importorskip("omegaconf").OmegaConf

from tsallis_rl.estimators import garl_coefficients, garl_loss, paft_loss  # noqa: E402
from tsallis_rl.integrations import verl as tv  # noqa: E402

QS = [0.0, 0.25, 0.75, 1.0]


def algo(**kw):
    return OmegaConf.create({"adv_estimator": "garl", **kw})


def actor_config(loss_agg_mode="seq-mean-token-sum"):
    return OmegaConf.create(
        {
            "clip_ratio": 0.2,
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.2,
            "clip_ratio_c": 3.0,
            "loss_agg_mode": loss_agg_mode,
            "global_batch_info": {},
        }
    )


def random_batch(sizes, L=7, seed=0, binary=True):
    """Flat verl rows for groups of the given sizes, shuffled; rewards at each row's last token."""
    g = torch.Generator().manual_seed(seed)
    uids = np.array([f"uid-{k}" for k, M in enumerate(sizes) for _ in range(M)], dtype=object)
    perm = torch.randperm(len(uids), generator=g).numpy()
    uids = uids[perm]
    bs = len(uids)
    if binary:
        score = (torch.rand(bs, generator=g) < 0.4).float()
    else:
        score = torch.rand(bs, generator=g) ** 3
    lengths = torch.randint(2, L + 1, (bs,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(bs, L)
    rewards[torch.arange(bs), lengths - 1] = score
    return rewards, mask, uids, score


def test_registered_with_verl():
    assert core_algos.get_adv_estimator_fn("garl") is tv.compute_garl_outcome_advantage
    assert core_algos.get_adv_estimator_fn("paft") is tv.compute_paft_outcome_advantage
    tv.register()  # idempotent: a second registration of the same functions is fine
    assert core_algos.get_adv_estimator_fn("garl") is tv.compute_garl_outcome_advantage


def test_external_modules_env_var_registers_on_import_verl():
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "print(get_adv_estimator_fn('garl').__module__, get_adv_estimator_fn('paft').__name__)\n"
    )
    env = {
        **os.environ,
        "VERL_USE_EXTERNAL_MODULES": "tsallis_rl.integrations.verl",
        "VERL_USE_EXTERNAL_PLUGINS": "none",  # only the env var path
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tsallis_rl.integrations.verl compute_paft_outcome_advantage" in out.stdout


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("sizes", [[4, 4, 4], [2, 5, 3, 8], [6], [3, 1 + 1, 7]])
@pytest.mark.parametrize("binary", [True, False])
def test_garl_advantages_equal_core_coefficients_per_group(q, sizes, binary):
    rewards, mask, uids, score = random_batch(sizes, seed=len(sizes) + int(10 * q), binary=binary)
    fn = core_algos.get_adv_estimator_fn("garl")
    adv, ret = fn(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=algo(tsallis_q=q)
    )
    assert adv.shape == rewards.shape and torch.equal(adv, ret)
    assert torch.equal(adv, adv[:, :1] * mask)  # one value per row, broadcast over its tokens
    for uid in set(uids.tolist()):
        rows = np.flatnonzero(uids == uid)
        log_w = torch.log(score[rows].double())[None, :]
        c, _, _ = garl_coefficients(log_w, q)
        expected = (c[0] * len(rows)).float()
        torch.testing.assert_close(adv[rows, 0], expected, rtol=1e-6, atol=1e-7)


def test_garl_advantage_is_amplified_advantage_of_the_paper():
    # group of 4 with one success: c = w/w_bar^q - w_loo^(1-q); A = c / M^q (paper Fig. 3 signal)
    q, M = 0.75, 4
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    adv, _ = tv.compute_garl_outcome_advantage(
        rewards, torch.ones(4, 2), np.array(["x"] * 4, dtype=object), algo(tsallis_q=q)
    )
    w_bar = 0.25
    c_hit = 1 / w_bar**q - 0.0
    c_miss = 0.0 - (1 / 3) ** (1 - q)
    torch.testing.assert_close(adv[:, 0].double(), torch.tensor([c_hit, c_miss, c_miss, c_miss], dtype=torch.float64) / M**q, rtol=1e-6, atol=1e-7)  # fmt: skip
    assert math.isclose(adv.max().item(), 1.0, rel_tol=1e-6)  # w/w_bar^q/M^q <= 1


def test_all_zero_group_gets_zero_advantage():
    rewards = torch.zeros(6, 3)
    for name in ("garl", "paft"):
        adv, _ = core_algos.get_adv_estimator_fn(name)(
            token_level_rewards=rewards,
            response_mask=torch.ones(6, 3),
            index=np.array(list("aabbcc"), dtype=object),
            config=algo(tsallis_q=0.5),
        )
        assert torch.count_nonzero(adv) == 0


@pytest.mark.parametrize("q", [0.0, 0.75, 1.0])
@pytest.mark.parametrize("K", [None, 5, 32])
def test_paft_counts_sum_to_K_and_match_core(q, K):
    sizes = [4, 4, 6, 2, 6]
    rewards, mask, uids, score = random_batch(sizes, seed=3, binary=False)
    cfg = {"tsallis_q": q, "tsallis_seed": 1234}
    if K is not None:
        cfg["tsallis_num_samples"] = K
    tv._GENERATORS.clear()
    adv, _ = tv.compute_paft_outcome_advantage(rewards, mask, uids, algo(**cfg))
    a = adv[:, 0].double()
    assert (a >= 0).all()
    for uid in set(uids.tolist()):
        rows = np.flatnonzero(uids == uid)
        M = len(rows)
        k = M if K is None else K
        w_bar = score[rows].double().mean()
        atten = w_bar ** (1 - q)
        counts = a[rows] * (M**q) * k / (M * atten)  # A = M n w_bar^(1-q) / (M^q K)
        torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)
        assert counts.round().sum().item() == k
    # the same seed draws the same counts as the core's paft_loss on the same [G, M] stack
    gen = torch.Generator().manual_seed(99)
    tv._GENERATORS.clear()
    adv2, _ = tv.compute_paft_outcome_advantage(
        rewards, mask, uids, algo(tsallis_q=q, tsallis_seed=99, tsallis_num_samples=K)
    )
    # first group size met in the batch is drawn first; rebuild the call order to compare exactly
    sizes_in_order = list(
        dict.fromkeys(int((uids == u).sum()) for u in dict.fromkeys(uids.tolist()))
    )
    for M in sizes_in_order:
        rows = [np.flatnonzero(uids == u) for u in dict.fromkeys(uids.tolist()) if (uids == u).sum() == M]  # fmt: skip
        lw = torch.log(score[np.stack(rows)].double())
        out = paft_loss(torch.zeros_like(lw), lw, q, num_samples=K, generator=gen)
        expected = (-out.rationale_grad * lw.shape[0] * M).reshape(-1)
        torch.testing.assert_close(adv2[np.concatenate(rows), 0].double(), expected, rtol=1e-6, atol=1e-7)  # fmt: skip


def _toy(sizes, seed):
    """Token log-probs with grad (via logits), mask, uids and [0, 1] scores for shuffled groups."""
    rewards, mask, uids, score = random_batch(sizes, seed=seed, binary=False)
    g = torch.Generator().manual_seed(seed + 100)
    logits = torch.randn(*mask.shape, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, mask.shape, generator=g)
    return rewards, mask, uids, score, logits, tokens


def _token_logp(logits, tokens):
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None])[..., 0]


def _verl_grad(name, rewards, mask, uids, logits, tokens, cfg):
    adv, _ = core_algos.get_adv_estimator_fn(name)(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=cfg
    )
    logp = _token_logp(logits, tokens)
    policy_loss = core_algos.get_policy_loss_fn("vanilla")
    loss, _ = policy_loss(
        old_log_prob=logp.detach(),
        log_prob=logp,
        advantages=adv.double(),
        response_mask=mask.double(),
        loss_agg_mode=tv.LOSS_AGG_MODE,
        config=actor_config(),
    )
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def _core_grad_garl(mask, uids, score, logits, tokens, q):
    logp = _token_logp(logits, tokens)
    seq = (logp * mask.double()).sum(-1)
    order = [np.flatnonzero(uids == u) for u in dict.fromkeys(uids.tolist())]
    idx = torch.as_tensor(np.stack(order))  # [G, M]
    loss = garl_loss(seq[idx], torch.log(score[idx].double()), q, pathwise=False).loss
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


@pytest.mark.parametrize("q", QS)
def test_garl_gradient_through_verl_vanilla_loss_equals_core(q):
    rewards, mask, uids, score, logits, tokens = _toy([5, 5, 5, 5], seed=int(q * 8))
    g_verl = _verl_grad("garl", rewards, mask, uids, logits, tokens, algo(tsallis_q=q))
    g_core = _core_grad_garl(mask, uids, score, logits, tokens, q)
    assert g_core.abs().max() > 1e-4
    torch.testing.assert_close(g_verl, g_core, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q", [0.25, 1.0])
def test_paft_gradient_through_verl_vanilla_loss_equals_core(q):
    rewards, mask, uids, score, logits, tokens = _toy([6, 6, 6], seed=5)
    tv._GENERATORS.clear()
    cfg = algo(tsallis_q=q, tsallis_seed=7, tsallis_num_samples=8)
    g_verl = _verl_grad("paft", rewards, mask, uids, logits, tokens, cfg)
    logp = _token_logp(logits, tokens)
    seq = (logp * mask.double()).sum(-1)
    idx = torch.as_tensor(
        np.stack([np.flatnonzero(uids == u) for u in dict.fromkeys(uids.tolist())])
    )
    log_w = torch.log(score[idx].double())
    gen = torch.Generator().manual_seed(7)
    out = paft_loss(seq[idx], log_w, q, num_samples=8, generator=gen)
    (g_core,) = torch.autograd.grad(out.loss, logits)
    assert g_core.abs().max() > 1e-4
    torch.testing.assert_close(g_verl, g_core, rtol=1e-5, atol=1e-7)


def test_token_mean_aggregation_is_not_exact():
    # why the recipe sets seq-mean-token-sum: verl's default token-mean weights rows by length
    rewards, mask, uids, score, logits, tokens = _toy([4, 4], seed=11)
    adv, _ = tv.compute_garl_outcome_advantage(rewards, mask, uids, algo(tsallis_q=0.5))
    logp = _token_logp(logits, tokens)
    loss, _ = core_algos.get_policy_loss_fn("vanilla")(
        old_log_prob=logp.detach(), log_prob=logp, advantages=adv.double(),
        response_mask=mask.double(), loss_agg_mode="token-mean", config=actor_config("token-mean"),
    )  # fmt: skip
    (g_tok,) = torch.autograd.grad(loss, logits)
    g_core = _core_grad_garl(mask, uids, score, logits, tokens, 0.5)
    assert not torch.allclose(g_tok, g_core, rtol=1e-3, atol=1e-6)


def test_log_reward_weights_keep_underflowing_weights():
    # log w = -800 underflows any float; as log_reward the group still gets its (scale-free) signal
    lw = torch.tensor([-800.0, -801.0, -805.0, -900.0])
    rewards = torch.zeros(4, 2)
    rewards[:, -1] = lw
    adv, _ = tv.compute_garl_outcome_advantage(
        rewards, torch.ones(4, 2), np.array(["g"] * 4, dtype=object),
        algo(tsallis_q=1.0, tsallis_weight="log_reward"),
    )  # fmt: skip
    c, _, _ = garl_coefficients(lw.double()[None], 1.0)
    torch.testing.assert_close(adv[:, 0].double(), c[0] * 4, rtol=1e-5, atol=1e-7)
    assert adv[0, 0] > 0.1


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"tsallis_q": 1.5}, "algorithm.tsallis_q"),
        ({"tsallis_q": "high"}, "algorithm.tsallis_q"),
        ({"tsallis_q": True}, "algorithm.tsallis_q"),
        ({"tsallis_num_samples": 0}, "algorithm.tsallis_num_samples"),
        ({"tsallis_num_samples": 2.5}, "algorithm.tsallis_num_samples"),
        ({"tsallis_baseline": "mean"}, "algorithm.tsallis_baseline"),
        ({"tsallis_normalize": "yes"}, "algorithm.tsallis_normalize"),
        ({"tsallis_weight": "likelihood"}, "algorithm.tsallis_weight"),
        ({"tsallis_seed": "x"}, "algorithm.tsallis_seed"),
        ({"tsallis_qq": 0.5}, "algorithm.tsallis_qq"),
    ],
)
def test_bad_config_values_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        tv.compute_garl_outcome_advantage(
            torch.zeros(2, 2), torch.ones(2, 2), np.array(["a", "a"], dtype=object), algo(**cfg)
        )


def test_defaults_and_config_sources():
    assert tv.read_config(None) == tv.TsallisVerlConfig(q=0.75)
    assert tv.read_config(algo()).q == 0.75
    assert tv.read_config({"tsallis_q": 0, "tsallis_num_samples": 4}).num_samples == 4
    from verl.trainer.config import AlgoConfig

    assert tv.read_config(AlgoConfig(adv_estimator="garl")).q == 0.75


def test_bad_rewards_and_singletons_raise_clear_errors():
    mask = torch.ones(2, 2)
    uids = np.array(["a", "a"], dtype=object)
    with pytest.raises(ValueError, match=r"\[0, 1\].*use_kl_in_reward"):
        tv.compute_garl_outcome_advantage(torch.tensor([[0.0, 2.0], [0, 0]]), mask, uids, algo())
    with pytest.raises(ValueError, match="NaN"):
        tv.compute_garl_outcome_advantage(torch.tensor([[0.0, math.nan], [0, 0]]), mask, uids, algo())  # fmt: skip
    with pytest.raises(ValueError, match="rollout.n >= 2"):
        tv.compute_garl_outcome_advantage(torch.ones(2, 2) / 2, mask, np.array(["a", "b"], dtype=object), algo())  # fmt: skip
    with pytest.raises(ValueError, match="uid"):
        tv.compute_garl_outcome_advantage(torch.zeros(2, 2), mask, None, algo())
    # a float32 sum a hair above 1 is clamped, not rejected
    adv, _ = tv.compute_garl_outcome_advantage(
        torch.tensor([[0.5, 0.5000001], [0, 0]]), mask, uids, algo()
    )
    assert torch.isfinite(adv).all()


def test_recipe_overrides_compose_against_verls_config(tmp_path):
    """examples/verl/run_garl_qwen3_0.6b.sh: every override exists in verl's config and selects us."""
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass
    from verl_launch import recorded_launch

    overrides = recorded_launch(tmp_path)[2:]  # after `-m <module>`
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert core_algos.get_adv_estimator_fn(cfg.algorithm.adv_estimator) is (
        tv.compute_garl_outcome_advantage
    )
    assert tv.read_config(cfg.algorithm).q == 0.75
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.loss_agg_mode == tv.LOSS_AGG_MODE and actor.policy_loss.loss_mode == "vanilla"
    assert not actor.use_kl_loss and actor.entropy_coeff == 0 and not cfg.algorithm.use_kl_in_reward
    assert cfg.actor_rollout_ref.rollout.n == 32
    assert Path(cfg.reward.custom_reward_function.path).is_file()
    assert Path(cfg.data.train_files).is_file()


# --------------------------------------------------------------------------------------------------
# compute_score feeds verl's validation metrics (maj@N needs "pred")


def test_exported_reward_gives_verl_maj_at_16_and_best_at_16_is_a_bootstrap(tmp_path):
    """16 answers per prompt scored by the exported reward_fn.py, then verl's own
    process_validation_metrics: maj@16 appears (it needs "pred"), follows the majority vote, and
    best@16 is a bootstrap mean, not "any of the 16 is correct" (the paper's p@16)."""
    import importlib.util

    from verl.trainer.ppo.metric_utils import process_validation_metrics

    from tsallis_rl.cli import main

    fixture = Path(__file__).parent / "fixtures" / "verl" / "qa.jsonl"
    out = tmp_path / "verl"
    argv = ["export", "verl", "--task", "jsonl", "--data", str(fixture), "--out", str(out)]
    assert main([*argv, "--val-size", "2", "--test-size", "2"]) == 0
    spec = importlib.util.spec_from_file_location("exported_reward_fn", out / "reward_fn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    answers = {  # uid -> (gold, 16 sampled answers)
        "one_right": ("Paris", ["Paris"] + ["Lyon"] * 15),
        "majority_right": ("Paris", ["Paris"] * 9 + ["Lyon"] * 7),
        "majority_wrong": ("Paris", ["Paris"] * 7 + ["Lyon"] * 9),
    }
    sources, uids, infos = [], [], {"score": [], "pred": []}
    for uid, (gold, preds) in answers.items():
        for p in preds:
            res = module.compute_score(uid, f"<think>hm</think>{p}", gold, {"task": "jsonl"})
            sources.append(uid)  # one data source per case: verl averages metrics per source
            uids.append(uid)
            for key in infos:
                infos[key].append(res[key])
    metrics = process_validation_metrics(sources, uids, infos)
    score = {uid: metrics[uid]["score"] for uid in answers}
    assert score["majority_right"]["maj@16/mean"] > 0.5 > score["majority_wrong"]["maj@16/mean"]
    # one correct answer in 16: the paper's p@16 is 1; verl's best@16 resamples 16 of the 16 with
    # replacement, so its mean is about 1 - (15/16)**16 = 0.64
    assert abs(score["one_right"]["best@16/mean"] - (1 - (15 / 16) ** 16)) < 0.05
    assert score["one_right"]["mean@16"] == 1 / 16
