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


# -- issue 25 --------------------------------------------------------------------------------------


def test_a_bad_number_is_named_in_plain_words_and_an_empty_seed_item_is_refused(capsys):
    from tsallis_rl.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--q", "0.7.5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "expected a number, got '0.7.5'" in err and "finite_float" not in err
    with pytest.raises(ConfigError, match="empty item"):
        _cfg("--seeds", "0,,1")
    with pytest.raises(ConfigError, match="empty item"):
        _cfg("--seeds", "0,1,")
    assert _cfg("--seeds", "0,1").seed_list() == [0, 1]


def test_local_paths_are_recorded_absolute_so_a_run_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    cfg = _cfg("--data", "data", "--model", "./model", "--estimator", "garl")
    assert cfg.data == str(tmp_path / "data") and cfg.model == str(tmp_path / "model")
    assert _cfg("--model", "tiny:random", "--estimator", "garl").model == "tiny:random"
    assert _cfg("--model", "Qwen/Qwen3-0.6B", "--estimator", "garl").model == "Qwen/Qwen3-0.6B"


def test_the_flag_generator_makes_list_and_mapping_flags_that_refuse_typos():
    from tsallis_rl.config import add_field_flags
    from tsallis_rl.escape_study import EscapeStudyConfig

    parser = argparse.ArgumentParser()
    add_field_flags(parser, EscapeStudyConfig, {"q": "q", "seeds": "seeds", "lr": "lr"})
    args = parser.parse_args(["--q", "0.5,1", "--seeds", "0,2", "--lr", "sgd=0.1,adam=1e-3"])
    assert (args.q, args.seeds, args.lr) == ([0.5, 1.0], [0, 2], {"sgd": 0.1, "adam": 1e-3})
    for bad in (["--seeds", "0,,1"], ["--q", "0.5,x"], ["--lr", "sgd"], ["--q", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
