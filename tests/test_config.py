"""TrainConfig: which runs a command line asks for, flag types from annotations, run names."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from tsallis_rl.config import (
    DEFAULT_SUITE,
    ConfigError,
    TrainConfig,
    add_arguments,
    field_type,
    from_args,
)


def _cfg(*flags: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(list(flags)))


SUITE = [("grpo", None), ("garl", 0.0), ("garl", 0.75), ("garl", 1.0), ("paft", 0.75)]


def test_default_suite_is_an_explicit_choice_that_estimator_and_q_replace(tmp_path):
    assert _cfg().runs() == SUITE and _cfg().estimators == DEFAULT_SUITE
    assert _cfg("--model", "x").runs() == SUITE  # no silent switch on model/task/data
    assert _cfg("--estimator", "paft", "--q", "0.5").runs() == [("paft", 0.5)]
    assert _cfg("--q", "0.5").runs() == [("garl", 0.5)]
    assert _cfg("--estimator", "grpo").runs() == [("grpo", 0.75)]
    assert _cfg("--estimators", "grpo,garl").runs() == [("grpo", None), ("garl", None)]
    suite = tmp_path / "suite.yaml"
    suite.write_text("estimators: [grpo, 'garl:0.5']\n")  # a YAML list is a list of runs
    assert _cfg("--config", str(suite)).runs() == [("grpo", None), ("garl", 0.5)]
    assert _cfg("--config", str(suite), "--estimator", "paft").runs() == [("paft", 0.75)]
    single = tmp_path / "single.yaml"
    single.write_text("estimator: paft\nq: 0.25\n")
    assert _cfg("--config", str(single)).runs() == [("paft", 0.25)]


def test_a_runs_saved_config_yaml_loads_back_to_the_same_runs(tmp_path):
    for flags in ((), ("--estimator", "paft", "--q", "0.5"), ("--estimator", "garl")):
        cfg = _cfg(*flags)
        saved = tmp_path / "config.yaml"
        saved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        assert _cfg("--config", str(saved)).runs() == cfg.runs()


def test_a_q_that_no_run_would_use_is_refused():
    with pytest.raises(ConfigError, match="no run of estimators"):
        _cfg("--estimators", "garl:0.5,grpo", "--q", "0.3")
    assert _cfg("--estimators", "garl,grpo", "--q", "0.3").for_run("garl", None).q == 0.3


def test_flag_types_come_from_the_annotations_not_from_field_names():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        want = field_type(f.name)
        action = actions[f.name]
        if want is bool:
            assert action.type("yes") is True
        else:
            assert type(action.type("1")) is want, f.name
    assert field_type("train_size") is int and field_type("q_end") is float
    assert field_type("q_switch_step") is int and field_type("estimators") is str


@pytest.mark.parametrize(
    "field,value", [("lr", float("nan")), ("temperature", float("inf")), ("q_end", float("nan"))]
)
def test_non_finite_numbers_are_refused_by_validate(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(
            TrainConfig(q_schedule="linear", q_end=0.5), **{field: value}
        ).validate()


def test_step_schedule_requires_its_switch_step_and_it_applies_only_there():
    with pytest.raises(ConfigError, match="q_switch_step"):
        _cfg("--q-schedule", "step", "--q-end", "0")
    cfg = _cfg("--q-schedule", "step", "--q-end", "0", "--q-switch-step", "5", "--steps", "10")
    assert cfg.q_switch_step == 5
    with pytest.raises(ConfigError, match="q_switch_step"):
        _cfg("--q-schedule", "linear", "--q-end", "0", "--q-switch-step", "5")
    with pytest.raises(ConfigError, match="q_end"):
        _cfg("--q-end", "0.5")
