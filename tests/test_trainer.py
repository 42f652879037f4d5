"""The trainer's plumbing: gradients equal the core estimators', training moves log P, GRPO stalls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsallis_rl.config import TrainConfig
from tsallis_rl.estimators import garl_loss, get_estimator_spec, grpo_loss, paft_loss
from tsallis_rl.rollout import ANSWER, RATIONALE
from tsallis_rl.suite import make_splits
from tsallis_rl.tasks import get_task
from tsallis_rl.trainer import Trainer, apply_gradient, q_at


def _trainer(tmp_path, model_dir, **overrides) -> Trainer:
    cfg = TrainConfig(
        model=str(model_dir),
        task="chainsum",
        batch_size=2,
        num_rollouts=4,
        thinking_budget=8,
        answer_budget=3,
        val_size=3,
        test_size=3,
        train_size=20,
        eval_k=2,
        progress=False,
        out=str(tmp_path),
        threads=1,
    )
    cfg = dataclasses.replace(cfg, **overrides).validate()
    task = get_task("chainsum")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return Trainer(
        cfg,
        model=model,
        tokenizer=tok,
        task=task,
        splits=make_splits(task, cfg),
        run_dir=tmp_path,
        device=torch.device("cpu"),
    )


def _naive_logps(model, rollouts):
    """Per-rollout rationale / answer log-probs and token log-probs, one unpadded sequence at a time."""
    rat, ans, toks_lp = [], [], []
    for r in rollouts:
        toks, regs = r.tokens_and_regions()
        lp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0].float(), -1)
        per_tok = torch.stack([lp[j - 1, toks[j]] for j in range(1, len(toks))])
        regs_t = torch.tensor(regs[1:])
        rat.append((per_tok * (regs_t == RATIONALE)).sum())
        ans.append((per_tok * (regs_t == ANSWER)).sum())
        toks_lp.append((per_tok[len(r.prompt) - 1 :], regs_t[len(r.prompt) - 1 :]))
    return torch.stack(rat), torch.stack(ans), toks_lp


def _grads(model):
    return torch.cat(
        [
            p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
            for p in model.parameters()
        ]
    )


@pytest.mark.parametrize(
    "estimator,q", [("garl", 0.75), ("garl", 0.0), ("garl", 1.0), ("paft", 0.75), ("rb_rloo", 0.0)]
)
@pytest.mark.parametrize("micro_batch", [3, 64])
def test_trainer_gradient_equals_core_estimator_gradient(
    tmp_path, tiny_model_dir, estimator, q, micro_batch
):
    tr = _trainer(tmp_path, tiny_model_dir, estimator=estimator, q=q, micro_batch=micro_batch)
    B, M = 2, 4
    examples = tr.batch_examples(0)
    rolls = tr._sample(
        [tr.prompt_ids(ex) for ex in examples for _ in range(M)],
        answer_budget=0,
        temperature=1.0,
        gen=torch.Generator().manual_seed(1),
    )
    rolls = [r.with_answer(tr.gold_ids(examples[i // M])) for i, r in enumerate(rolls)]
    # by hand: independent unpadded forwards, then the core estimator
    tr.model.zero_grad()
    rat, ans, _ = _naive_logps(tr.model, rolls)
    fns = {
        "garl": lambda r, a: garl_loss(r, a, q),
        "rb_rloo": lambda r, a: garl_loss(r, a, 0.0),
        "paft": lambda r, a: paft_loss(r, a, q, generator=torch.Generator().manual_seed(5)),
    }
    fns[estimator](rat.view(B, M), ans.view(B, M)).loss.backward()
    want = _grads(tr.model)
    assert want.abs().sum() > 0
    # the trainer's path (single pass or two-pass micro-batched)
    tr.model.zero_grad()
    tr.resample_gen.manual_seed(5)
    apply_gradient(
        tr.model,
        tr.spec,
        rolls,
        B,
        M,
        tr._estimator_call(q),
        pad_id=tr.formatter.pad_id,
        micro_batch=micro_batch,
    )
    got = _grads(tr.model)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("micro_batch", [3, 64])
def test_trainer_grpo_gradient_equals_core_grpo_loss(tmp_path, tiny_model_dir, micro_batch):
    tr = _trainer(tmp_path, tiny_model_dir, estimator="grpo", micro_batch=micro_batch)
    B, M = 2, 4
    examples = tr.batch_examples(0)
    rolls = tr._sample(
        [tr.prompt_ids(ex) for ex in examples for _ in range(M)],
        answer_budget=3,
        temperature=1.0,
        gen=torch.Generator().manual_seed(2),
    )
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    tr.model.zero_grad()
    _, _, toks = _naive_logps(tr.model, rolls)
    T = max(t.shape[0] for t, _ in toks)
    logp = torch.stack([torch.nn.functional.pad(t, (0, T - t.shape[0])) for t, _ in toks]).view(
        B, M, T
    )
    mask = torch.stack(
        [torch.nn.functional.pad((g > 0).float(), (0, T - g.shape[0])) for _, g in toks]
    ).view(B, M, T)
    grpo_loss(logp, mask, rewards).loss.backward()
    want = _grads(tr.model)
    tr.model.zero_grad()
    apply_gradient(
        tr.model,
        tr.spec,
        rolls,
        B,
        M,
        tr._estimator_call(0.0),
        pad_id=tr.formatter.pad_id,
        micro_batch=micro_batch,
        rewards=rewards,
    )
    got = _grads(tr.model)
    assert want.abs().sum() > 0
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_grpo_on_all_fail_batch_has_zero_gradient_while_garl_does_not(tmp_path, tiny_model_dir):
    grpo = _trainer(tmp_path / "g", tiny_model_dir, estimator="grpo")
    before = [p.detach().clone() for p in grpo.model.parameters()]
    stats = grpo.train_step()  # a random model never writes the reversed-sum answer
    assert stats["reward"] == 0.0 and stats["frac_reward_zero_std"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, grpo.model.parameters()))
    garl = _trainer(tmp_path / "q", tiny_model_dir, estimator="garl", q=0.75)
    before = [p.detach().clone() for p in garl.model.parameters()]
    garl.train_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, garl.model.parameters()))


@pytest.mark.parametrize("estimator,q", [("garl", 1.0), ("garl", 0.75), ("paft", 1.0)])
def test_training_raises_log_p_hat_on_a_fixed_batch(tmp_path, tiny_model_dir, estimator, q):
    tr = _trainer(
        tmp_path, tiny_model_dir, estimator=estimator, q=q, lr=3e-3, train_size=2, batch_size=2
    )
    ex = tr.splits["train"][:2]
    probe_gen = torch.Generator().manual_seed(0)
    probe = tr._sample(
        [tr.prompt_ids(e) for e in ex for _ in range(8)],
        answer_budget=0,
        temperature=1.0,
        gen=probe_gen,
    )
    probe = [r.with_answer(tr.gold_ids(ex[i // 8])) for i, r in enumerate(probe)]

    def mean_log_p():
        with torch.no_grad():
            _, ans, _ = _naive_logps(tr.model, probe)
        return ans.mean().item()

    start = mean_log_p()
    for _ in range(8):
        tr.train_step()
    assert mean_log_p() > start + 1.0


def test_q_schedules():
    base = TrainConfig(steps=11, q=1.0, q_end=0.0)
    assert [q_at(dataclasses.replace(base, q_schedule="constant"), s) for s in (0, 10)] == [
        1.0,
        1.0,
    ]
    step = dataclasses.replace(base, q_schedule="step", q_switch_step=5)
    assert [q_at(step, s) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.0, 0.0]
    lin = dataclasses.replace(base, q_schedule="linear")
    assert q_at(lin, 0) == 1.0 and q_at(lin, 5) == pytest.approx(0.5) and q_at(lin, 10) == 0.0
    cos = dataclasses.replace(base, q_schedule="cosine")
    assert (
        q_at(cos, 0) == pytest.approx(1.0)
        and q_at(cos, 5) == pytest.approx(0.5)
        and q_at(cos, 10) == pytest.approx(0.0)
    )


def test_estimators_used_by_trainer_come_from_the_registry():
    assert get_estimator_spec("garl").inputs == "teacher_forced"
    assert get_estimator_spec("grpo").inputs == "sampled_reward"


@pytest.mark.parametrize("metric", ["m@k", "p@1", "log_p_hat"])
def test_the_tested_checkpoint_is_the_first_best_on_the_chosen_validation_metric(
    tmp_path, tiny_model_dir, metric
):
    import json

    trainer = _trainer(
        tmp_path, tiny_model_dir, steps=3, eval_every=1, select_metric=metric, lr=3e-3
    )
    final = trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    key = "m@2" if metric == "m@k" else metric
    evals = [(r["step"], r[key]) for r in rows if r.get("kind") == "eval" and r["split"] == "val"]
    assert [s for s, _ in evals] == [0, 1, 2, 3]
    top = max(v for _, v in evals)
    assert final["best_step"] == next(s for s, v in evals if v == top)
    if metric == "log_p_hat":  # a continuous score: the steps' values differ, so it truly chose
        assert len({v for _, v in evals}) == len(evals)
