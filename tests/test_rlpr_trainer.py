"""RLPR's trainer-level settings (issue 22 items 1 and 6): the y* span reaches the estimator, and
the adaptive std filter (beta x EMA of past steps' mean group reward std) is config, applied from
`rlpr_filter_start` and kept across a resume."""

from __future__ import annotations

import dataclasses

import pytest

from tsallis_rl.config import ConfigError, TrainConfig
from tsallis_rl.suite import build_trainer

B, M = 2, 4


def _trainer(tmp_path, model_dir, **overrides):
    cfg = TrainConfig(
        model=str(model_dir), task="chainsum", estimator="rlpr", batch_size=B, num_rollouts=M,
        thinking_budget=8, answer_budget=3, val_size=3, test_size=3, train_size=6, eval_k=2,
        progress=False, out=str(tmp_path), threads=1, lr=1e-2,
    )  # fmt: skip
    return build_trainer(dataclasses.replace(cfg, **overrides).validate(), tmp_path)


def test_train_step_passes_the_y_star_span_of_each_example(tmp_path, tiny_model_dir, monkeypatch):
    import tsallis_rl.trainer as trainer_mod

    seen = {}
    real = trainer_mod.apply_gradient

    def spy(*args, **kwargs):
        seen.update(kwargs["data"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "apply_gradient", spy)
    tr = _trainer(tmp_path, tiny_model_dir)
    examples = tr.batch_examples(0)
    tr.train_step()
    mask = seen["answer_target_mask"]
    for i, ex in enumerate(examples):
        gold, span = tr.gold_ids(ex), tr.formatter.gold_target_mask(ex)
        assert len(span) == len(gold) and span[-1] == 0  # the end token is not y*
        assert mask[i, : len(span)].tolist() == [float(v) for v in span]
        assert sum(span) == len(tr.formatter.ids(ex.answer))


def test_std_filter_threshold_is_beta_times_the_ema_of_past_steps(tmp_path, tiny_model_dir):
    tr = _trainer(
        tmp_path, tiny_model_dir, rlpr_std_beta=0.5, rlpr_std_ema=0.9, rlpr_filter_start=1
    )
    assert tr.reward_std_threshold() == 0.0 and tr.reward_std_ema is None
    s0 = tr.train_step()
    assert s0["min_reward_std"] == 0.0
    first = tr.reward_std_ema
    assert first == pytest.approx(s0["reward_std"])  # the first step initialises the EMA
    tr.step += 1
    s1 = tr.train_step()
    assert s1["min_reward_std"] == pytest.approx(0.5 * first)
    assert tr.reward_std_ema == pytest.approx(0.1 * s1["reward_std"] + 0.9 * first)
    tr.step += 1
    tr.save_checkpoint()
    resumed = _trainer(tmp_path, tiny_model_dir, rlpr_std_beta=0.5, rlpr_std_ema=0.9,
                       rlpr_filter_start=1, resume=True)  # fmt: skip
    assert resumed.load_checkpoint() and resumed.reward_std_ema == tr.reward_std_ema


def test_std_filter_waits_for_its_start_step_and_beta_zero_turns_it_off(tmp_path, tiny_model_dir):
    tr = _trainer(tmp_path, tiny_model_dir, rlpr_filter_start=5)
    tr.reward_std_ema, tr.step = 0.2, 4
    assert tr.reward_std_threshold() == 0.0
    tr.step = 5
    assert tr.reward_std_threshold() == pytest.approx(0.5 * 0.2)  # RLPR's Qwen beta, the default
    off = _trainer(tmp_path / "off", tiny_model_dir, rlpr_std_beta=0.0, rlpr_filter_start=0)
    off.reward_std_ema = 0.2
    assert off.reward_std_threshold() == 0.0


def test_std_filter_options_are_refused_without_an_rlpr_run_and_checked():
    import argparse

    from tsallis_rl.config import add_arguments, from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(ConfigError, match="rlpr_std_beta.*no run uses it"):
        from_args(p.parse_args(["--estimator", "garl", "--rlpr-std-beta", "0.9"]))
    from_args(p.parse_args(["--estimator", "rlpr", "--rlpr-std-beta", "0.9"]))
    with pytest.raises(ConfigError, match="rlpr_std_ema"):
        TrainConfig(rlpr_std_ema=1.0).validate()
