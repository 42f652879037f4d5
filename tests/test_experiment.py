"""Model location and the checks before a run starts: clear, fast failures with nothing on disk."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from tsallis_rl.cli import main
from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import ConfigError, ModelError
from tsallis_rl.experiment import check_lengths, locate_model, tokenizer_source
from tsallis_rl.tasks import get_task


def test_an_unknown_hub_name_offline_fails_at_once_saying_what_was_tried(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    t0 = time.time()
    with pytest.raises(ModelError) as err:
        locate_model("no-such-org/no-such-model")
    msg = str(err.value)
    assert "no-such-org/no-such-model" in msg and "local Hugging Face cache" in msg
    assert "offline" in msg and "Fix:" in msg
    assert time.time() - t0 < 10


def test_an_unreachable_hub_is_probed_briefly_not_waited_on(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    t0 = time.time()
    with pytest.raises(ModelError, match="unreachable"):
        locate_model("no-such-org/no-such-model")
    assert time.time() - t0 < 10


def test_a_directory_without_config_json_is_refused(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        locate_model(str(tmp_path))


def _checkpoint(run: Path, model_dir: Path) -> Path:
    """RUN/<tag>/checkpoints/step-000002 holding weights only, like the trainer writes."""
    ckpt = run / "garl_q0.75" / "checkpoints" / "step-000002"
    ckpt.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, ckpt / f.name)
    return ckpt


def test_a_checkpoint_folder_takes_its_tokenizer_from_its_run(tmp_path, tiny_model_dir):
    ckpt = _checkpoint(tmp_path / "run", tiny_model_dir)
    with pytest.raises(ModelError, match="best"):
        tokenizer_source(str(ckpt))  # no best/, no run config: refuse with a pointer
    (ckpt.parents[1] / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir)}))
    assert tokenizer_source(str(ckpt)) == str(tiny_model_dir)  # the run's base model
    shutil.copytree(tiny_model_dir, ckpt.parents[1] / "best")
    assert tokenizer_source(str(ckpt)) == str(ckpt.parents[1] / "best")
    assert tokenizer_source(str(tiny_model_dir)) == str(tiny_model_dir)


def test_eval_of_a_checkpoint_folder_prints_a_labelled_result(tmp_path, tiny_model_dir, capsys):
    ckpt = _checkpoint(tmp_path / "run", tiny_model_dir)
    (ckpt.parents[1] / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir)}))
    flags = ["eval", "--model", str(ckpt), "--k", "2", "--limit", "2", "--progress", "false"]
    flags += ["--thinking-budget", "4", "--answer-budget", "2"]
    assert main(flags) == 0
    out = capsys.readouterr().out
    assert f"model {ckpt}" in out and "task chainsum" in out and "split test" in out
    assert "regime cold" in out and "k 2" in out and "m@2 (majority of 2)" in out
    assert main([*flags, "--json"]) == 0
    assert '"m@2"' in capsys.readouterr().out


def _short_model(tmp_path: Path) -> Path:
    from tsallis_rl.tasks.chainsum import ALPHABET
    from tsallis_rl.tiny import save_tiny_model

    return save_tiny_model(
        tmp_path / "short", ALPHABET, hidden_size=16, num_layers=1, num_heads=2, max_positions=40
    )


def test_prompts_that_cannot_fit_the_model_are_refused_with_the_numbers(tmp_path):
    model = _short_model(tmp_path)
    task = get_task("chainsum")
    splits = {"val": task.load(n=20)}
    check_lengths(TrainConfig(thinking_budget=8, answer_budget=2), task, splits, str(model))
    with pytest.raises(ConfigError) as err:
        check_lengths(TrainConfig(thinking_budget=30), task, splits, str(model))
    msg = str(err.value)
    assert "thinking_budget 30" in msg and "at most 40" in msg and "--thinking-budget" in msg


def test_train_refuses_a_model_too_short_for_its_prompts_before_the_run_dir(tmp_path, capsys):
    model = _short_model(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--model", str(model), "--estimator", "garl", "--thinking-budget", "64"]
    assert main([*argv, "--out", str(out), "--progress", "false"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    assert not out.exists()


def test_parallel_runs_show_one_combined_progress_line(tmp_path, capsys):
    import json
    from concurrent.futures import Future

    from tsallis_rl.experiment import _combined_progress

    futures = {}
    for tag, done in (("garl_q0.75", 3), ("grpo", 1)):
        (tmp_path / tag).mkdir()
        rows = [{"kind": "train", "step": s} for s in range(1, done + 1)] + [{"kind": "eval"}]
        (tmp_path / tag / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        futures[tag] = Future()
        futures[tag].set_result({})
    _combined_progress(tmp_path, {"garl_q0.75": 5, "grpo": 5}, futures, progress=True)
    err = capsys.readouterr().err
    assert "2 runs" in err and "4/10" in err and "garl_q0.75 3/5  grpo 1/5" in err
    _combined_progress(tmp_path, {"garl_q0.75": 5, "grpo": 5}, futures, progress=False)
    assert capsys.readouterr().err == ""
