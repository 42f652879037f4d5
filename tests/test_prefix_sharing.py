"""Prompt sharing (issue 20): one pass over each group's prompt gives today's log-probs and gradient.

The reference is the pass with one full sequence per rollout (`share_prompt=False`). Models are
float64 with a dtype-preserving RMSNorm: transformers' RMSNorm computes in float32 whatever the
model dtype, which would make any two summation orders differ at ~1e-7 and hide a real error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import yaml

import tsallis_rl.rollout as rollout_mod
import tsallis_rl.trainer as trainer_mod
from tsallis_rl.config import TrainConfig, add_arguments, from_args
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.gradient import apply_gradient, no_rationale_rows, stack_rows
from tsallis_rl.models.tiny import build_tiny_causal_lm
from tsallis_rl.rollout import (
    Rollout,
    SamplingSettings,
    can_share_prompt,
    micro_batch_slices,
    prompt_groups,
    sample,
    token_logps,
)
from tsallis_rl.suite import build_trainer

VOCAB, EOS, CLOSE = 50, 1, (3, 4)
TOL = 1e-10


def _rmsnorm_in_dtype(self, x: torch.Tensor) -> torch.Tensor:
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def exact_model(arch: str = "qwen3", seed: int = 0) -> torch.nn.Module:
    """A tiny float64 model whose every op runs in float64."""
    model = build_tiny_causal_lm(
        VOCAB, arch=arch, hidden_size=32, num_layers=2, num_heads=4, seed=seed
    ).double()
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.forward = types.MethodType(_rmsnorm_in_dtype, m)
    return model


def rollouts() -> list[Rollout]:
    """Groups of 3, 2 and 4 rows; prompts of 5, 2 and 3 tokens; budget-forced rows, a sampled end
    token kept in z, an empty rationale, sampled answers after a forced prefix, two temperatures."""
    a, b, c = [5, 6, 7, 8, 9], [11, 12], [13, 14, 15]
    return [
        Rollout(a, [20, 21, 3, 4], [], [22, 23, EOS]),
        Rollout(a, [24, 25, 26], list(CLOSE), [22, 23, EOS]),  # budget-forced
        Rollout(a, [27, EOS], list(CLOSE), [22, 23, EOS]),  # a sampled end token, then forced
        Rollout(b, [], list(CLOSE), [30, EOS], temperature=0.7),
        Rollout(b, [28, 29, 30, 31, 32, 33], list(CLOSE), [30, EOS], temperature=0.7),
        Rollout(c, [34, 3, 4], [], [36, EOS], [35]),  # sampled answer after a forced prefix
        Rollout(c, [37], list(CLOSE), [38], [35]),
        Rollout(c, [39, 40, 3, 4], [], [36, 41, EOS], [35]),
        Rollout(c, [42, 43, 44, 45], list(CLOSE), [EOS], [35]),
    ]


def _grads(model) -> torch.Tensor:
    return torch.cat(
        [p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None]
    )


def _scored(model, rolls, *, share: bool, micro_batch: int, pad_id: int = 0):
    model.zero_grad(set_to_none=True)
    logp, regions = token_logps(
        model, rolls, pad_id=pad_id, micro_batch=micro_batch, share_prompt=share
    )
    weights = torch.linspace(-1.0, 2.0, logp.numel(), dtype=logp.dtype).view_as(logp)
    (logp * weights).sum().backward()
    return logp.detach(), regions, _grads(model)


@pytest.fixture
def shared_calls(monkeypatch):
    """How many micro-batches took the shared path (so a test cannot pass by falling back)."""
    calls = []
    real = rollout_mod._shared_hidden

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(rollout_mod, "_shared_hidden", spy)
    return calls


def _variant(model, variant: str):
    if variant == "lora":
        peft = pytest.importorskip("peft")
        config = peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        model = peft.get_peft_model(model, config)
        model.double()
    elif variant == "checkpointing":
        model.gradient_checkpointing_enable()  # non-reentrant: transformers' default
        model.train()
    return model


@pytest.mark.parametrize("variant", ["full", "lora", "checkpointing"])
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_shared_scoring_equals_one_pass_per_row(arch, variant, shared_calls):
    model = _variant(exact_model(arch), variant)
    assert can_share_prompt(model)
    rolls = rollouts()
    # 9 rows in one micro-batch; micro-batches of whole groups (4); groups cut (2: prompt again)
    for micro_batch, pad_id in [(len(rolls), 0), (4, 0), (2, 0), (2, EOS)]:
        want_lp, want_reg, want_g = _scored(model, rolls, share=False, micro_batch=micro_batch)
        n_shared = len(shared_calls)
        got_lp, got_reg, got_g = _scored(
            model, rolls, share=True, micro_batch=micro_batch, pad_id=pad_id
        )
        assert len(shared_calls) > n_shared and all(shared_calls)
        assert torch.equal(got_reg, want_reg)
        assert got_lp.dtype == torch.float64
        torch.testing.assert_close(got_lp, want_lp, atol=TOL, rtol=0)
        assert want_g.abs().max() > 1e-3
        torch.testing.assert_close(got_g, want_g, atol=TOL, rtol=0)


def test_prompt_groups_are_runs_of_equal_prompts():
    assert prompt_groups([[1], [1], [2, 3], [1], [1]]) == [0, 0, 1, 2, 2]


def _bounds(slices: list[slice]) -> list[tuple[int, int]]:
    return [(s.start, s.stop) for s in slices]


def test_micro_batches_hold_whole_groups_and_cut_only_groups_larger_than_one():
    rolls = rollouts()  # groups of 3, 2 and 4 rows
    assert _bounds(micro_batch_slices(rolls, 4, False)) == [(0, 4), (4, 8), (8, 9)]  # as today
    assert _bounds(micro_batch_slices(rolls, 4, True)) == [(0, 3), (3, 5), (5, 9)]
    assert _bounds(micro_batch_slices(rolls, 5, True)) == [(0, 5), (5, 9)]
    assert _bounds(micro_batch_slices(rolls, 2, True)) == [(0, 2), (2, 3), (3, 5), (5, 7), (7, 9)]
    assert _bounds(micro_batch_slices(rolls, 9, True)) == [(0, 9)]


def test_reentrant_checkpointing_falls_back_to_one_pass_per_row(shared_calls):
    """Reentrant checkpointing runs layers without grad: cached keys would lose their gradient."""
    model = exact_model()
    model.gradient_checkpointing_enable({"use_reentrant": True})
    model.train()
    assert not can_share_prompt(model)
    got = _scored(model, rollouts(), share=True, micro_batch=16)
    want = _scored(model, rollouts(), share=False, micro_batch=16)
    assert not shared_calls
    torch.testing.assert_close(got[2], want[2], atol=TOL, rtol=0)


def test_a_model_that_ignores_the_cache_falls_back_with_a_warning(monkeypatch):
    model = exact_model()
    monkeypatch.setattr(rollout_mod._RecordLayer, "update", lambda self, k, v, *a, **kw: (k, v))
    with pytest.warns(UserWarning, match="did not use the prompt cache"):
        got = _scored(model, rollouts(), share=True, micro_batch=16)
    want = _scored(model, rollouts(), share=False, micro_batch=16)
    torch.testing.assert_close(got[2], want[2], atol=TOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# Every path of the gradient plumbing, for GARL, PAFT, GRPO and a peer estimator (RLPR)

B, M = 2, 3


def _group_rollouts(sampled: bool) -> list[Rollout]:
    """B = 2 prompts (4 and 2 tokens) x M = 3 rollouts; sampled answers for reward estimators."""
    prompts = [[5, 6, 7, 8], [11, 12]]
    rats = [[20, 21, 3, 4], [24, 25], [26, EOS], [27, 3, 4], [], [28, 29, 30]]
    out = []
    for i, z in enumerate(rats):
        forced = [] if z[-2:] == list(CLOSE) else list(CLOSE)
        answer = [31 + i % 2, EOS] if sampled else [35, 36 + i // M, EOS]
        out.append(Rollout(prompts[i // M], z, forced, answer, [35] if sampled else []))
    return out


CASES = [("garl", 0.75), ("paft", 0.75), ("grpo", 0.0), ("rlpr", 0.0)]


@pytest.mark.parametrize("name, q", CASES)
@pytest.mark.parametrize("micro_batch", [B * M, 4, 2])  # one pass / whole groups / groups cut
def test_apply_gradient_shared_equals_unshared(name, q, micro_batch, shared_calls):
    spec = get_estimator_spec(name)
    model = exact_model()
    sampled = spec.inputs == "sampled_reward"
    rolls = _group_rollouts(sampled)
    rewards = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def run(share: bool):
        data = None
        if spec.needs_no_rationale:
            prompts, golds = [rolls[0].prompt, rolls[M].prompt], [[35, 36, EOS], [35, 37, EOS]]
            rows = no_rationale_rows(
                model, prompts, golds, list(CLOSE), pad_id=0, micro_batch=2, share_prompt=share
            )
            data = stack_rows(rows)
            data["answer_target_mask"] = torch.tensor([[0.0, 1.0, 0.0]] * 2)
        call = spec.bind(q, {"generator": torch.Generator().manual_seed(7)})
        model.zero_grad(set_to_none=True)
        out = apply_gradient(
            model, spec, rolls, B, M, call, pad_id=0, micro_batch=micro_batch,
            rewards=rewards if sampled else None, data=data, share_prompt=share,
        )  # fmt: skip
        return out.loss.detach(), _grads(model)

    want_loss, want = run(False)
    got_loss, got = run(True)
    assert shared_calls and all(shared_calls)
    assert want.abs().max() > 1e-4
    torch.testing.assert_close(got_loss, want_loss, atol=TOL, rtol=0)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# Sampling: a shared prefill draws today's tokens


@pytest.mark.parametrize("sampler", ["loop", "generate"])
@pytest.mark.parametrize("streams", ["one generator", "group seeds"])
def test_shared_prefill_draws_the_same_tokens(sampler, streams):
    model = exact_model().eval()
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[11, 12]] * 3 + [[13, 14, 15]] * 3
    s = SamplingSettings(
        think_close=CLOSE, eos_ids=(EOS,), pad_id=0, thinking_budget=6, answer_budget=3,
        answer_prefix=(35,), temperature=1.0, sampler=sampler,
    )  # fmt: skip
    prefills = []
    hook = model.model.register_forward_pre_hook(
        lambda m, args, kw: prefills.append(kw["input_ids"].shape[0]), with_kwargs=True
    )

    def draw(share: bool):
        prefills.clear()
        kw = {"group_seeds": [3, 4, 5]} if streams == "group seeds" else {}
        gen = torch.Generator().manual_seed(11)
        rolls = sample(
            model, prompts, dataclasses.replace(s, share_prompt=share), generator=gen, **kw
        )
        return rolls, prefills[0]

    want, rows_today = draw(False)
    got, rows_shared = draw(True)
    hook.remove()
    assert (rows_today, rows_shared) == (9, 3)  # one prefill row per distinct prompt
    assert got == want
    assert len({tuple(r.rationale) for r in got}) > 3  # the draws differ between rollouts


# --------------------------------------------------------------------------------------------------
# DDP: two gloo processes, each with its share of the groups, equal one process

WORKER = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import test_prefix_sharing as t
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.suite import build_trainer
from tsallis_rl.gradient import apply_gradient
dist.init_process_group("gloo")
rank = dist.get_rank()
model = t.exact_model()
ddp = torch.nn.parallel.DistributedDataParallel(model)
spec = get_estimator_spec("garl")
rolls = t._group_rollouts(False)[rank * t.M : (rank + 1) * t.M]
apply_gradient(ddp, spec, rolls, 1, t.M, spec.bind(0.75, {}), pad_id=0,
               micro_batch=int(sys.argv[3]), skip_zero=False, share_prompt=True)
if rank == 0:
    torch.save(t._grads(model), sys.argv[2])
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("micro_batch", [3, 2])
def test_two_gloo_processes_with_shared_prompts_equal_one_process(tmp_path, micro_batch):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    torchrun = Path(sys.executable).parent / "torchrun"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    out = tmp_path / "grads.pt"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
         str(Path(__file__).parent), str(out), str(micro_batch)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = exact_model()
    spec = get_estimator_spec("garl")
    apply_gradient(
        model, spec, _group_rollouts(False), B, M, spec.bind(0.75, {}), pad_id=0,
        micro_batch=B * M, share_prompt=False,
    )  # fmt: skip
    torch.testing.assert_close(torch.load(out, weights_only=True), _grads(model), atol=TOL, rtol=0)


# --------------------------------------------------------------------------------------------------
# The option: a config field like every other, and the run's config says which pass ran


def test_share_prompt_is_on_by_default_and_a_flag_turns_it_off():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])).share_prompt is True
    assert from_args(parser.parse_args(["--share-prompt", "false"])).share_prompt is False


def _small_cfg(tmp_path, model_dir, **kw) -> TrainConfig:
    return TrainConfig(
        model=str(model_dir), task="chainsum", batch_size=2, num_rollouts=2, thinking_budget=4,
        answer_budget=2, val_size=0, test_size=2, train_size=4, eval_k=2, steps=1, progress=False,
        out=str(tmp_path), threads=1, **kw,
    ).validate()  # fmt: skip


def test_a_model_that_cannot_share_is_recorded_as_share_prompt_false(
    tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr(trainer_mod, "can_share_prompt", lambda model: False)
    with pytest.warns(UserWarning, match="cannot be shared"):
        tr = build_trainer(_small_cfg(tmp_path, tiny_model_dir), tmp_path)
    tr.fit()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["share_prompt"] is False


def test_a_training_step_shares_prompts_by_default(tmp_path, tiny_model_dir, shared_calls):
    tr = build_trainer(_small_cfg(tmp_path, tiny_model_dir), tmp_path)
    tr.fit()
    assert shared_calls and all(shared_calls)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["share_prompt"] is True


def test_evaluation_scores_the_gold_answer_the_same_with_shared_prompts(
    tmp_path, tiny_model_dir, shared_calls
):
    cfg = dataclasses.replace(_small_cfg(tmp_path, tiny_model_dir), val_size=3, eval_k=3)
    results = {}
    for share in (False, True):
        tr = build_trainer(dataclasses.replace(cfg, share_prompt=share), tmp_path / str(share))
        results[share] = tr.evaluate("val").summary
    assert shared_calls and all(shared_calls)  # the k samples of an example shared its prompt
    assert results[True]["log_p_hat"] == pytest.approx(results[False]["log_p_hat"], abs=1e-5)
    assert {k: v for k, v in results[True].items() if k != "log_p_hat"} == {
        k: v for k, v in results[False].items() if k != "log_p_hat"
    }  # the same samples (shared prefill) and so the same answers
