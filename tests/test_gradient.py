"""tsallis_rl.gradient: every registered estimator gets its exact gradient through both paths.

The reference scores each rollout alone (no padding, no micro-batching), builds the estimator's
inputs by hand, and back-propagates the core estimator; the trainer's path (one forward with grad,
or the two-pass micro-batched one with fixed coefficients) must give the same parameter gradient.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tsallis_rl.config import TrainConfig
from tsallis_rl.estimators import get_estimator_spec, list_estimators
from tsallis_rl.gradient import (
    answer_token_logps,
    apply_gradient,
    estimator_inputs,
    no_rationale_rows,
    stack_rows,
    target_mask_rows,
)
from tsallis_rl.sequences import ANSWER, PAD, RATIONALE
from tsallis_rl.suite import build_trainer
from tsallis_rl.trainer import Trainer

B, M = 2, 4


def _trainer(tmp_path, model_dir, **overrides) -> Trainer:
    cfg = TrainConfig(
        model=str(model_dir), task="chainsum", batch_size=B, num_rollouts=M, thinking_budget=8,
        answer_budget=3, val_size=3, test_size=3, train_size=6, eval_k=2, progress=False,
        out=str(tmp_path), threads=1,
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, **overrides).validate()
    return build_trainer(cfg, tmp_path)


def _naive(model, rollouts):
    """Per rollout: (rationale sum, answer sum, answer token log-probs, completion token log-probs, mask)."""
    rows = []
    for r in rollouts:
        toks, regs = r.tokens_and_regions()
        lp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0].float(), -1)
        per_tok = torch.stack([lp[j - 1, toks[j]] for j in range(1, len(toks))])
        regs_t = torch.tensor(regs[1:])
        comp, comp_regs = per_tok[len(r.prompt) - 1 :], regs_t[len(r.prompt) - 1 :]
        rows.append(
            (
                (per_tok * (regs_t == RATIONALE)).sum(),
                (per_tok * (regs_t == ANSWER)).sum(),
                per_tok[regs_t == ANSWER],
                comp,
                (comp_regs > 0).float(),
            )
        )
    return rows


def _pad(rows, width):
    return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[0])) for r in rows])


def _grads(model):
    return torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
            for p in model.parameters()
        ]
    )


def _call(tr, spec, q):
    tr.resample_gen.manual_seed(5)
    return tr._estimator_call(q)


CASES = [("garl", 0.75), ("rb_rloo", 0.0), ("paft", 0.75), ("verifree", 0.0), ("loglik", 0.0),
         ("iwae", 0.0), ("rlpr", 0.0), ("grpo", 0.0), ("rft", 0.0)]  # fmt: skip


def test_cases_cover_every_registered_estimator():
    assert {name for name, _ in CASES} == set(list_estimators())


@pytest.mark.parametrize("estimator,q", CASES)
@pytest.mark.parametrize("micro_batch", [3, 64])
def test_both_gradient_paths_equal_the_core_estimator(
    tmp_path, tiny_model_dir, estimator, q, micro_batch
):
    tr = _trainer(tmp_path, tiny_model_dir, estimator=estimator, q=q, micro_batch=micro_batch)
    spec = tr.spec
    examples = tr.batch_examples(0)
    sampled = spec.needs_sampled_rewards
    rolls = tr._sample(
        [tr.prompt_ids(ex) for ex in examples for _ in range(M)],
        answer_budget=3 if sampled else 0, temperature=1.0, gen=torch.Generator().manual_seed(1),
    )  # fmt: skip
    if not sampled:
        rolls = [r.with_answer(tr.gold_ids(examples[i // M])) for i, r in enumerate(rolls)]
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float64) if sampled else None
    data = (
        stack_rows([tr._no_rationale[ex.id] for ex in examples])
        if spec.needs_no_rationale
        else None
    )
    if spec.needs_target_span:
        data["answer_target_mask"] = target_mask_rows([tr.target_mask(ex) for ex in examples])
    # by hand
    tr.model.zero_grad()
    rows = _naive(tr.model, rolls)
    fn = _call(tr, spec, q)
    if sampled:
        T = max(r[3].shape[0] for r in rows)
        out = fn(
            _pad([r[3] for r in rows], T).view(B, M, T),
            _pad([r[4] for r in rows], T).view(B, M, T),
            rewards,
        )
    else:
        rat = torch.stack([r[0] for r in rows]).view(B, M)
        ans = torch.stack([r[1] for r in rows]).view(B, M)
        kw = {}
        if spec.needs_answer_tokens:
            A = max(r[2].shape[0] for r in rows)
            kw["answer_token_logp"] = _pad([r[2] for r in rows], A).view(B, M, A)
            kw["answer_mask"] = _pad([torch.ones_like(r[2]) for r in rows], A).view(B, M, A)
        out = fn(rat, ans, **kw, **(data or {}))
    out.loss.backward()
    want = _grads(tr.model)
    assert want.abs().sum() > 0
    # the trainer's path
    tr.model.zero_grad()
    got_out = apply_gradient(
        tr.model, spec, rolls, B, M, _call(tr, spec, q), pad_id=tr.formatter.pad_id,
        micro_batch=micro_batch, rewards=rewards, data=data,
    )  # fmt: skip
    got = _grads(tr.model)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    if not sampled:
        assert got_out.stats["coef_underflow"] == 0.0


def test_answer_token_logps_left_aligns_each_rows_answer_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, 0.0], [-5.0, -6.0, -7.0, 0.0, 0.0]])
    regions = torch.tensor(
        [
            [RATIONALE, PAD, ANSWER, ANSWER, PAD],
            [RATIONALE, RATIONALE, ANSWER, PAD, PAD],
        ]
    )
    tok, mask = answer_token_logps(logp, regions)
    assert tok.tolist() == [[-3.0, -4.0], [-7.0, 0.0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_estimator_inputs_follow_the_spec(tiny_model_dir):
    logp = -torch.rand(B * M, 6)
    regions = torch.tensor([[RATIONALE, RATIONALE, PAD, ANSWER, ANSWER, PAD]] * (B * M))
    garl = estimator_inputs(get_estimator_spec("garl"), logp, regions, None, B, M)
    assert len(garl.args) == 2 and not garl.kwargs
    with pytest.raises(ValueError, match="no-rationale baseline"):
        estimator_inputs(get_estimator_spec("rlpr"), logp, regions, None, B, M)
    data = {"no_rationale_token_logp": torch.zeros(B, 2), "no_rationale_mask": torch.ones(B, 2)}
    with pytest.raises(ValueError, match="y\\* span"):
        estimator_inputs(get_estimator_spec("rlpr"), logp, regions, None, B, M, data)
    data["answer_target_mask"] = torch.tensor([[1.0, 0.0]] * B)
    rlpr = estimator_inputs(get_estimator_spec("rlpr"), logp, regions, None, B, M, data)
    assert rlpr.kwargs["answer_target_mask"].shape == (B, 2)
    assert rlpr.kwargs["answer_token_logp"].shape == (B, M, 2) and len(rlpr.differentiable()) == 3
    with pytest.raises(ValueError, match="rewards"):
        estimator_inputs(get_estimator_spec("rft"), logp, regions, None, B, M)


def test_no_rationale_baseline_scores_the_gold_answer_after_an_empty_rationale(
    tmp_path, tiny_model_dir
):
    tr = _trainer(tmp_path, tiny_model_dir, estimator="rlpr")
    ex = tr.splits["train"][0]
    gold = tr.gold_ids(ex)
    row = tr._no_rationale[ex.id]
    assert row.shape == (len(gold),)
    toks = tr.prompt_ids(ex) + tr.formatter.think_close + gold
    with torch.no_grad():
        lp = torch.log_softmax(tr.model(input_ids=torch.tensor([toks])).logits[0], -1)
    want = torch.stack([lp[j - 1, toks[j]] for j in range(len(toks) - len(gold), len(toks))])
    assert torch.allclose(row, want, atol=1e-5)


def test_rlpr_baseline_comes_from_the_starting_weights_across_resume(tmp_path, tiny_model_dir):
    tr = _trainer(tmp_path, tiny_model_dir, estimator="rlpr", lr=1e-2)
    start = {k: v.clone() for k, v in tr._no_rationale.items()}
    for _ in range(2):
        stats = tr.train_step()
        tr.step += 1
    assert "coef_underflow" in stats and "reward" in stats
    tr.save_checkpoint()
    trained = no_rationale_rows(
        tr.model, [tr.prompt_ids(ex) for ex in tr.splits["train"]],
        [tr.gold_ids(ex) for ex in tr.splits["train"]], tr.formatter.think_close, pad_id=tr.formatter.pad_id, micro_batch=8,
    )  # fmt: skip
    assert any(not torch.allclose(a, start[ex.id]) for a, ex in zip(trained, tr.splits["train"]))
    resumed = _trainer(tmp_path, tiny_model_dir, estimator="rlpr", lr=1e-2, resume=True)
    assert resumed.load_checkpoint() and resumed.step == 2
    assert set(resumed._no_rationale) == set(start)
    assert all(torch.equal(resumed._no_rationale[k], start[k]) for k in start)


@pytest.mark.parametrize("estimator", ["rft", "verifree", "loglik", "iwae"])
def test_train_step_runs_each_peer_estimator(tmp_path, tiny_model_dir, estimator):
    tr = _trainer(tmp_path, tiny_model_dir, estimator=estimator)
    stats = tr.train_step()
    assert all(v == v for v in stats.values())  # no NaN
    assert "q" not in stats


def test_coef_underflow_counts_coefficients_lost_in_the_working_dtype():
    from tsallis_rl.estimators import EstimatorOutput, coef_underflow

    out = EstimatorOutput(
        torch.zeros(()), {},
        rationale_grad=torch.tensor([[1e-50, 1e-3, 0.0]], dtype=torch.float64),
        answer_grad=torch.tensor([[1e-40, 1e-300, 0.0]], dtype=torch.float64),
    )  # fmt: skip
    assert coef_underflow(out, torch.float32) == pytest.approx(2 / 4)
    assert coef_underflow(out, torch.float64) == 0.0
    assert coef_underflow(out, torch.float16) == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"estimators": "iwae", "num_rollouts": 1}, "num_rollouts"),
        ({"estimators": "verifree", "num_rollouts": 1}, "num_rollouts"),
        ({"estimators": "rft", "answer_budget": 0, "eval_every": 0}, "answer_budget"),
        ({"estimators": "grpo", "num_rollouts": 1, "baseline": "none"}, "num_rollouts"),
    ],
)
def test_config_asks_the_spec_for_rollouts_and_answer_budget(overrides, field):
    from tsallis_rl.config import ConfigError

    cfg = dataclasses.replace(TrainConfig(task="chainsum"), **overrides)
    with pytest.raises(ConfigError, match=field):
        cfg.validate()
    ok = dataclasses.replace(
        TrainConfig(task="chainsum"), estimators="loglik", baseline="none", num_rollouts=1
    )
    ok.validate()  # no leave-one-out baseline: one rollout is enough
