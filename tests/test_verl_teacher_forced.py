"""algorithm.tsallis_weight=teacher_forced: the splice on verl batches, and the update's gradient.

Runs in .venv-verl (`make test-verl`); skipped where verl is not installed. What is pinned:
  - the splice of a verl rollout batch (left-padded prompts, right-padded responses) into
    [x, z, </think>, y*, end]: a sampled `</think>` (one or several tokens) closes z, a sampled end
    token is kept in z and `</think>` is forced, a row with neither is budget-forced; forced tokens
    are out of `response_mask`; position ids are verl's own for the new layout; the rollout's
    log-probs and rewards are dropped;
  - after verl's own `_balance_batch` reorders rows (unequal group sizes), every row keeps the
    per-token advantages it had, which equal the core's coefficients of its group;
  - the per-token advantages through verl's own `ppo_loss` (the actor's loss function) give the
    gradient of `garl_loss` (pathwise term included) / `paft_loss` on the same log-probs;
  - the trainer's `_update_actor` override against a mocked worker group: one log-prob pass over
    the spliced batch, log w from it, the spliced batch with those advantages handed to verl's
    update, and the advantage function refuses teacher_forced outside that trainer.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")
pytest.importorskip("cachetools")  # verl's ray_trainer imports it (the `verl` extra installs it)
OmegaConf = pytest.importorskip("omegaconf").OmegaConf

from verl import DataProto  # noqa: E402
from verl.trainer.ppo.ray_trainer import RayPPOTrainer  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils.model import compute_position_id_with_mask  # noqa: E402
from verl.workers.utils.losses import ppo_loss  # noqa: E402
from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding  # noqa: E402

from tsallis_rl.estimators import garl_loss, paft_loss  # noqa: E402
from tsallis_rl.integrations import verl as tv  # noqa: E402
from tsallis_rl.integrations import verl_splice as vs  # noqa: E402
from tsallis_rl.integrations import verl_trainer as vt  # noqa: E402

PAD, EOS = 0, 1
THINK = [7]
THINK2 = [7, 8]  # a two-token </think>


def rollout_batch(prompts, completions, uids, truths=None, extra=True) -> DataProto:
    """A verl rollout batch: left-padded prompts, right-padded completions, verl's position ids."""
    bs = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(len(c) for c in completions)
    prompt_ids = torch.full((bs, P), PAD)
    resp_ids = torch.full((bs, R), PAD)
    attn = torch.zeros(bs, P + R, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        prompt_ids[i, P - len(p) :] = torch.tensor(p)
        attn[i, P - len(p) : P] = 1
        if c:
            resp_ids[i, : len(c)] = torch.tensor(c)
        attn[i, P : P + len(c)] = 1
    tensors = {
        "prompts": prompt_ids,
        "responses": resp_ids,
        "input_ids": torch.cat([prompt_ids, resp_ids], 1),
        "attention_mask": attn,
        "position_ids": compute_position_id_with_mask(attn),
        "response_mask": attn[:, P:].clone(),
    }
    if extra:  # fields the splice must drop: they describe the sampled tokens
        tensors["rollout_log_probs"] = torch.randn(bs, R)
        tensors["token_level_scores"] = torch.zeros(bs, R)
        tensors["advantages"] = torch.zeros(bs, R)
    truths = truths or ["42"] * bs
    non = {
        "uid": np.array(uids, dtype=object),
        "reward_model": np.array([{"ground_truth": t} for t in truths], dtype=object),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non, meta_info={"temperature": 1.0})


# --------------------------------------------------------------------------------------------------
# The splice


def test_splice_closes_z_forces_think_end_and_appends_gold():
    prompts = [[20, 21], [22, 23, 24, 25], [26]]
    completions = [
        [5, 6, 7, 9, 9, EOS],  # sampled </think>, then a sampled answer (dropped)
        [5, EOS],  # end token before </think>: kept in z, </think> forced
        [5, 6, 5, 6],  # budget spent: </think> forced
    ]
    golds = [[30, 31, EOS], [32, EOS], [33, 34, 35, EOS]]
    batch = rollout_batch(prompts, completions, ["a", "a", "b"])
    s = vs.splice_teacher_forced(batch, golds, THINK, [EOS], PAD)
    resp = s.batch.batch["responses"]
    expect = [
        ([5, 6, 7], [], [30, 31, EOS]),
        ([5, EOS], [7], [32, EOS]),
        ([5, 6, 5, 6], [7], [33, 34, 35, EOS]),
    ]
    W = 9  # the longest row: 4 + 1 + 4
    assert resp.shape == (3, W)
    for i, (z, forced, gold) in enumerate(expect):
        n = len(z) + len(forced) + len(gold)
        assert resp[i, :n].tolist() == z + forced + gold
        assert (resp[i, n:] == PAD).all()
        assert s.rationale_mask[i].tolist() == [1] * len(z) + [0] * (W - len(z))
        answer = [0] * (len(z) + len(forced)) + [1] * len(gold) + [0] * (W - n)
        assert s.answer_mask[i].tolist() == answer
        # trained tokens: z and the gold answer; never the forced </think> or padding
        assert s.batch.batch["response_mask"][i].tolist() == [
            int(a or r) for a, r in zip(answer, s.rationale_mask[i].tolist())
        ]
    assert s.budget_forced.tolist() == [False, True, True]


def test_splice_handles_a_multi_token_think_end():
    completions = [[5, 7, 8, 9], [5, 7, 5, 8, EOS], [7]]  # whole marker; split marker; half marker
    batch = rollout_batch([[20]] * 3, completions, ["a"] * 3)
    s = vs.splice_teacher_forced(batch, [[30, EOS]] * 3, THINK2, [EOS], PAD)
    resp = s.batch.batch["responses"]
    assert resp[0, :5].tolist() == [5, 7, 8, 30, EOS]  # z ends with both marker tokens
    assert s.rationale_mask[0, :3].tolist() == [1, 1, 1] and not s.budget_forced[0]
    assert resp[1, :9].tolist() == [5, 7, 5, 8, EOS, 7, 8, 30, EOS]  # EOS kept, marker forced
    assert s.rationale_mask[1].sum() == 5 and s.batch.batch["response_mask"][1, 5:7].sum() == 0
    assert resp[2, :5].tolist() == [7, 7, 8, 30, EOS] and s.budget_forced[2]


def test_splice_keeps_left_padded_prompts_and_rebuilds_verl_position_ids():
    prompts = [[20], [21, 22, 23, 24, 25], [26, 27]]
    completions = [[5, 7, 9], [5, 5, 5, 5, 5, 5, 5], []]  # an empty completion too
    batch = rollout_batch(prompts, completions, ["a", "b", "b"])
    # the helper's layout is verl's: rebuilding the unspliced batch's positions changes nothing
    attn = batch.batch["attention_mask"]
    assert torch.equal(compute_position_id_with_mask(attn), batch.batch["position_ids"])
    s = vs.splice_teacher_forced(batch, [[30, 31, EOS]] * 3, THINK, [EOS], PAD)
    td = s.batch.batch
    P = td["prompts"].shape[1]
    assert torch.equal(td["prompts"], batch.batch["prompts"])
    assert torch.equal(td["input_ids"], torch.cat([td["prompts"], td["responses"]], 1))
    assert torch.equal(td["attention_mask"][:, :P], attn[:, :P])
    for i in range(3):
        real = td["attention_mask"][i].bool()
        n = int(real.sum())
        assert td["position_ids"][i, real].tolist() == list(range(n))  # contiguous from 0
        # response attention: right-padded, exactly z + forced + gold
        r = td["attention_mask"][i, P:]
        k = int(r.sum())
        assert r[:k].all() and not r[k:].any()
    assert sorted(td.keys()) == sorted(
        ["prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask"]
    )  # rollout log-probs, rewards and advantages are dropped
    assert s.batch.meta_info["global_token_num"] == td["attention_mask"].sum(-1).tolist()
    assert list(s.batch.non_tensor_batch["uid"]) == ["a", "b", "b"]


def test_gold_answers_come_from_reward_model_ground_truth():
    batch = rollout_batch([[20]] * 2, [[5]] * 2, ["a", "a"], truths=["7", "x y"])
    golds = vs.gold_answers(batch.non_tensor_batch, lambda t: [ord(c) for c in t])
    assert golds == [[ord("7")], [ord("x"), 32, ord("y")]]
    with pytest.raises(ValueError, match="reward_model.ground_truth"):
        vs.gold_answers({"uid": np.array(["a"])}, lambda t: [])
    bad = {"reward_model": np.array([{"style": "rule"}], dtype=object)}
    with pytest.raises(ValueError, match="row 0: reward_model.ground_truth"):
        vs.gold_answers(bad, lambda t: [])


def test_teacher_forced_tokens_build_gold_like_the_project(tmp_path):
    from tsallis_rl.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    t = vt.TeacherForcedTokens.build(tok, tv.read_config({"tsallis_weight": "teacher_forced"}))
    assert t.think_close == tok("</think>", add_special_tokens=False)["input_ids"]
    assert len(t.think_close) == 1 and t.answer_prefix == ""  # no chat template: no prefix
    assert t.gold("42") == [*tok("42", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    t2 = vt.TeacherForcedTokens.build(
        tok, tv.read_config({"tsallis_answer_prefix": "A: ", "tsallis_think_end": "#"})
    )
    assert t2.gold("1")[:3] == tok("A: ", add_special_tokens=False)["input_ids"]
    assert t2.think_close == tok("#", add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------------
# Advantages: per group, whatever the row order


def _random_rollouts(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    uids, prompts, completions = [], [], []
    for k, M in enumerate(sizes):
        plen = int(torch.randint(1, 5, (1,), generator=g))
        prompt = torch.randint(20, 28, (plen,), generator=g).tolist()
        for _ in range(M):
            n = int(torch.randint(1, 7, (1,), generator=g))
            comp = torch.randint(2, 7, (n,), generator=g).tolist()
            if torch.rand(1, generator=g) < 0.5:
                comp += THINK + torch.randint(2, 7, (2,), generator=g).tolist()
            uids.append(f"u{k}")
            prompts.append(prompt)
            completions.append(comp)
    golds = [[30 + (i % 3), 31, EOS] for i in range(len(uids))]
    return rollout_batch(prompts, completions, uids), golds


def _balance(batch: DataProto) -> None:
    """verl's own RayPPOTrainer._balance_batch (2 data-parallel ranks) on a driver-less stand-in."""
    fake = SimpleNamespace(_get_dp_size=lambda wg, role: 2, actor_rollout_wg=None)
    RayPPOTrainer._balance_batch(fake, batch, metrics={})


def test_advantages_survive_balance_batch_with_unequal_groups():
    batch, golds = _random_rollouts([2, 5, 3, 4], seed=1)
    row_id = torch.arange(len(batch))
    batch.batch["row_id"] = row_id.clone()
    log_w = -torch.rand(len(batch), generator=torch.Generator().manual_seed(2)).double() * 30
    cfg = tv.read_config({"tsallis_q": 0.75, "tsallis_weight": "teacher_forced"})

    def per_token(b, golds, log_w):
        s = vs.splice_teacher_forced(b, golds, THINK, [EOS], PAD)
        rat, ans = tv.sequence_coefficients(log_w, b.non_tensor_batch["uid"], "garl", cfg)
        return vs.token_advantages(rat, ans, s.rationale_mask, s.answer_mask), rat, ans, s

    before, rat0, ans0, s0 = per_token(batch, golds, log_w)
    _balance(batch)
    order = batch.batch["row_id"]
    assert not torch.equal(order, row_id)  # verl did reorder
    after, _, _, s1 = per_token(batch, [golds[i] for i in order], log_w[order])
    for new_pos, old_pos in enumerate(order.tolist()):
        a, b = after[new_pos], before[old_pos]
        n = int(s1.batch.batch["attention_mask"][new_pos].sum())
        assert n == int(s0.batch.batch["attention_mask"][old_pos].sum())
        k = int(s1.rationale_mask[new_pos].sum() + s1.answer_mask[new_pos].sum())
        assert torch.equal(a[a != 0], b[b != 0]) and k > 0
    # and each row's values are the core's coefficients of its own group (M x the derivative)
    uids = np.asarray(batch.non_tensor_batch["uid"])
    for u in set(uids.tolist()):
        rows = np.flatnonzero(np.asarray(uids) == u)
        lw = log_w[order][rows][None]
        out = garl_loss(torch.zeros_like(lw), lw, 0.75)
        M = len(rows)
        rat, ans = tv.sequence_coefficients(log_w[order], uids, "garl", cfg)
        torch.testing.assert_close(rat[rows], -out.rationale_grad[0] * M, rtol=1e-12, atol=0)
        torch.testing.assert_close(ans[rows], -out.answer_grad[0] * M, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------------
# The gradient through verl's own ppo_loss equals the core estimator's


def actor_loss_config():
    return OmegaConf.create(
        {
            "clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0,
            "loss_agg_mode": tv.LOSS_AGG_MODE, "loss_scale_factor": None, "entropy_coeff": 0.0,
            "use_kl_loss": False, "policy_loss": {"loss_mode": "vanilla"}, "global_batch_info": {},
        }
    )  # fmt: skip


def _model_logp(td, params):
    """Per-position log p(next token) over each row's real tokens, flat [total tokens] (verl's
    no-padding layout: position j scores token j+1; the last position of a row is a dummy 0)."""
    ids, attn = td["input_ids"], td["attention_mask"]
    flat = []
    for i in range(ids.shape[0]):
        toks = ids[i, attn[i].bool()]
        logits = params[i, : len(toks)]
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, toks[1:, None])[:, 0]
        flat.append(torch.cat([lp, lp.new_zeros(1)]))
    return torch.cat(flat)


def _spliced_toy(sizes, seed):
    batch, golds = _random_rollouts(sizes, seed=seed)
    s = vs.splice_teacher_forced(batch, golds, THINK, [EOS], PAD)
    td = s.batch.batch
    T = td["input_ids"].shape[1]
    g = torch.Generator().manual_seed(seed + 1)
    params = torch.randn(len(batch), T, 40, generator=g, dtype=torch.float64, requires_grad=True)
    return s, params


def _groups(uids):
    return torch.as_tensor(
        np.stack([np.flatnonzero(uids == u) for u in dict.fromkeys(uids.tolist())])
    )


def _verl_and_core_grads(estimator, q, sizes, seed, **core_kw):
    s, params = _spliced_toy(sizes, seed)
    uids = np.asarray(s.batch.non_tensor_batch["uid"])
    td = s.batch.to_tensordict()
    flat = _model_logp(s.batch.batch, params)
    resp_lp = no_padding_2_padding(flat, left_right_2_no_padding(td.clone()))  # [bs, R'] with grad
    log_w = vs.answer_log_weights(resp_lp.detach(), s.answer_mask)
    cfg = tv.read_config({"tsallis_q": q, "tsallis_num_samples": core_kw.get("num_samples")})
    gen = torch.Generator().manual_seed(5)
    rat, ans = tv.sequence_coefficients(log_w, uids, estimator, cfg, gen)
    td["old_log_probs"] = resp_lp.detach().float()
    td["advantages"] = vs.token_advantages(rat, ans, s.rationale_mask, s.answer_mask)
    data = left_right_2_no_padding(td)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=len(uids))
    loss, _ = ppo_loss(actor_loss_config(), {"log_probs": flat}, data)
    (g_verl,) = torch.autograd.grad(loss, params, retain_graph=True)

    idx = _groups(uids)
    z = (resp_lp * s.rationale_mask).sum(-1)[idx]
    y = (resp_lp * s.answer_mask).sum(-1)[idx]
    if estimator == "garl":
        out = garl_loss(z, y, q)
    else:
        out = paft_loss(z, y, q, generator=torch.Generator().manual_seed(5), **core_kw)
    (g_core,) = torch.autograd.grad(out.loss, params)
    return g_verl, g_core, out


@pytest.mark.parametrize("q", [0.0, 0.75, 1.0])
def test_garl_gradient_through_verl_ppo_loss_equals_core_with_pathwise_term(q):
    g_verl, g_core, out = _verl_and_core_grads("garl", q, [4, 4, 4], seed=int(10 * q))
    assert out.answer_grad.abs().max() > 0  # pathwise term present
    scale = g_core.abs().max()  # w = p(y*|x, z) is small here (~1e-5): compare relative to it
    assert scale > 0
    torch.testing.assert_close(g_verl / scale, g_core / scale, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q", [0.25, 1.0])
def test_paft_gradient_through_verl_ppo_loss_equals_core(q):
    g_verl, g_core, _ = _verl_and_core_grads("paft", q, [5, 5], seed=3, num_samples=7)
    scale = g_core.abs().max()
    assert scale > 0
    torch.testing.assert_close(g_verl / scale, g_core / scale, rtol=1e-5, atol=1e-7)


def test_without_the_answer_advantage_the_gradient_misses_the_pathwise_term():
    # the test above can fail: dropping the y* advantages leaves a different gradient
    s, params = _spliced_toy([4, 4], seed=9)
    uids = np.asarray(s.batch.non_tensor_batch["uid"])
    td = s.batch.to_tensordict()
    flat = _model_logp(s.batch.batch, params)
    resp_lp = no_padding_2_padding(flat, left_right_2_no_padding(td.clone()))
    log_w = vs.answer_log_weights(resp_lp.detach(), s.answer_mask)
    rat, ans = tv.sequence_coefficients(log_w, uids, "garl", tv.read_config({"tsallis_q": 0.75}))
    td["old_log_probs"] = resp_lp.detach().float()
    td["advantages"] = vs.token_advantages(rat, 0 * ans, s.rationale_mask, s.answer_mask)
    data = left_right_2_no_padding(td)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=len(uids))
    loss, _ = ppo_loss(actor_loss_config(), {"log_probs": flat}, data)
    (g_verl,) = torch.autograd.grad(loss, params, retain_graph=True)
    idx = _groups(uids)
    z = (resp_lp * s.rationale_mask).sum(-1)[idx]
    y = (resp_lp * s.answer_mask).sum(-1)[idx]
    (g_core,) = torch.autograd.grad(garl_loss(z, y, 0.75).loss, params)
    scale = g_core.abs().max()
    assert not torch.allclose(g_verl / scale, g_core / scale, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The trainer's _update_actor against a mocked worker group


class FakeActorWorkerGroup:
    """compute_log_prob / update_actor of verl's actor worker group, on a fixed toy 'model'."""

    def __init__(self, params):
        self.params = params
        self.calls = []

    def compute_log_prob(self, data):
        self.calls.append(("compute_log_prob", data))
        ids, offsets = data["input_ids"].values(), data["input_ids"].offsets()
        flat = []
        for k in range(len(offsets) - 1):
            toks = ids[offsets[k] : offsets[k + 1]]
            lp = torch.log_softmax(self.params[toks[:-1]], -1).gather(-1, toks[1:, None])[:, 0]
            flat.append(torch.cat([lp, lp.new_zeros(1)]).float())
        lp = torch.nested.nested_tensor_from_jagged(torch.cat(flat), offsets=offsets)
        return tu.get_tensordict({"log_probs": lp, "entropy": lp}, {"metrics": {"mfu": 0.0}})

    def update_actor(self, data):
        self.calls.append(("update_actor", data))
        return tu.get_tensordict({}, {"metrics": {"mfu": 0.0, "pg_loss": 0.5}})


def trainer_config(**over):
    base = {
        "trainer": {"use_v1": False},
        "data": {"train_batch_size": 3},
        "algorithm": {
            "adv_estimator": "garl", "tsallis_weight": "teacher_forced", "tsallis_q": 0.75,
            "rollout_correction": {"rollout_is": None, "rollout_rs": None, "bypass_mode": False},
        },
        "actor_rollout_ref": {
            "actor": {
                "strategy": "fsdp", "ppo_epochs": 1, "ppo_mini_batch_size": 3,
                "loss_agg_mode": tv.LOSS_AGG_MODE, "policy_loss": {"loss_mode": "vanilla"},
                "use_kl_loss": False, "entropy_coeff": 0, "calculate_entropy": False,
                "calculate_sum_pi_squared": False, "loss_scale_factor": None,
                "data_loader_seed": 42, "shuffle": False, "fsdp_config": {"dtype": "float32"},
            },
            "rollout": {"n": 4, "temperature": 1.0, "multi_turn": {"enable": False}},
        },
    }  # fmt: skip
    cfg = OmegaConf.create(base)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def fake_trainer(params, **over):
    from tsallis_rl.models.tiny import build_char_tokenizer

    trainer = object.__new__(vt.TeacherForcedRayPPOTrainer)  # no Ray, no workers, no data
    trainer.config = trainer_config(**over)
    trainer.tokenizer = build_char_tokenizer()
    trainer._setup_teacher_forced()
    trainer.actor_rollout_wg = FakeActorWorkerGroup(params)
    return trainer


def _char_batch(tok, sizes=(4, 4, 4), seed=0):
    """Rollout rows in the char tokenizer's ids (so the trainer's own gold ids line up)."""
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD, EOS)  # the helper pads with PAD
    g = torch.Generator().manual_seed(seed)
    think, eos = tok.convert_tokens_to_ids("</think>"), tok.eos_token_id
    letters = tok("abcdefgh", add_special_tokens=False)["input_ids"]
    prompts, comps, uids, truths = [], [], [], []
    for k, M in enumerate(sizes):
        for m in range(M):
            n = int(torch.randint(1, 6, (1,), generator=g))
            comp = [letters[int(j)] for j in torch.randint(0, 8, (n,), generator=g)]
            if m % 3 == 0:
                comp += [think] + letters[:2] + [eos]
            elif m % 3 == 1:
                comp += [eos]
            prompts.append(letters[: 1 + k])
            comps.append(comp)
            uids.append(f"p{k}")
            truths.append(str(10 + k))
    return rollout_batch(prompts, comps, uids, truths)


def test_update_actor_override_trains_the_spliced_batch_with_core_advantages():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(100, 100, generator=g)
    trainer = fake_trainer(params)
    tok = trainer.tokenizer
    batch = _char_batch(tok)
    out = trainer._update_actor(batch)
    kinds = [k for k, _ in trainer.actor_rollout_wg.calls]
    assert kinds == ["compute_log_prob", "update_actor"]  # one log-prob pass, one update
    sent = trainer.actor_rollout_wg.calls[1][1]
    # what verl's update received: the spliced rows, ratio-1 old log-probs, our advantages,
    # one mini-batch of all rows and one epoch
    tokens = trainer.tsallis_tokens
    golds = vs.gold_answers(batch.non_tensor_batch, tokens.gold)
    s = vs.splice_teacher_forced(batch, golds, tokens.think_close, tokens.eos_ids, tokens.pad_id)
    assert torch.equal(sent["prompts"], s.batch.batch["prompts"])
    assert torch.equal(sent["responses"], s.batch.batch["responses"])
    assert torch.equal(sent["response_mask"], s.batch.batch["response_mask"])
    assert tu.get(sent, "epochs") == 1 and tu.get(sent, "global_batch_size") == 12
    # log w from the log-prob pass, and the core's GARL coefficients laid over the tokens
    old = sent["old_log_probs"]
    log_w = vs.answer_log_weights(old, s.answer_mask)
    uids = np.asarray(batch.non_tensor_batch["uid"])
    idx = _groups(uids)
    core = garl_loss(torch.zeros_like(log_w[idx]), log_w[idx], 0.75)
    expected = torch.zeros(12, old.shape[1], dtype=torch.float64)
    for gi, rows in enumerate(idx.tolist()):
        for m, i in enumerate(rows):
            expected[i] += -core.rationale_grad[gi, m] * 12 * s.rationale_mask[i]
            expected[i] += -core.answer_grad[gi, m] * 12 * s.answer_mask[i]
    torch.testing.assert_close(sent["advantages"].double(), expected, rtol=1e-6, atol=1e-9)
    assert (sent["advantages"][s.answer_mask.bool()] > 0).all()  # pathwise weights are positive
    # log w itself: the fake model's log p(y*|x, z) summed over the gold tokens of row 0
    row = s.batch.batch["input_ids"][0][s.batch.batch["attention_mask"][0].bool()]
    n_ans = int(s.answer_mask[0].sum())
    lp = torch.log_softmax(params[row[:-1]], -1).gather(-1, row[1:, None])[:, 0]
    torch.testing.assert_close(log_w[0], lp[-n_ans:].double().sum(), rtol=1e-5, atol=1e-5)
    # verl's metrics see the rationale advantage on the sampled batch; ours are added
    rat = torch.zeros(12, dtype=torch.float64)
    for gi, rows in enumerate(idx.tolist()):
        rat[rows] = -core.rationale_grad[gi] * 12
    shown = (rat[:, None] * batch.batch["response_mask"]).float()
    torch.testing.assert_close(batch.batch["advantages"], shown)
    metrics = out.meta_info["metrics"]
    assert metrics["actor/pg_loss"] == 0.5 and "tsallis/answer_logp" in metrics
    assert metrics["tsallis/frac_budget_forced"] == pytest.approx(s.budget_forced.double().mean().item())  # fmt: skip


def test_advantage_function_refuses_teacher_forced_outside_the_trainer(monkeypatch):
    monkeypatch.setattr(tv, "_TEACHER_FORCED_TRAINER", [])
    cfg = OmegaConf.create({"adv_estimator": "garl", "tsallis_weight": "teacher_forced"})
    with pytest.raises(ValueError, match="tsallis_rl.integrations.verl_trainer"):
        tv.compute_garl_outcome_advantage(
            torch.zeros(2, 3), torch.ones(2, 3), np.array(["a", "a"], dtype=object), cfg
        )
    tv.mark_teacher_forced_trainer("test")
    adv, ret = tv.compute_paft_outcome_advantage(
        torch.ones(2, 3), torch.ones(2, 3), np.array(["a", "a"], dtype=object), cfg
    )
    assert torch.count_nonzero(adv) == 0 and adv.shape == (2, 3)  # the trainer fills them in
