"""Models (tsallis_rl.models): locating them fails fast offline and says what was tried; a
checkpoint folder finds its tokenizer; saved weights load strictly or name the checkpoint."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from tsallis_rl.cli import main
from tsallis_rl.errors import ModelError
from tsallis_rl.models.loading import load_weights, locate_model, tokenizer_source


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


def test_missing_and_unexpected_weights_are_errors_naming_the_checkpoint(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gone = next(k for k in state if "layers.1" in k)
    partial = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(ModelError, match=f"ckpt-x.*missing {gone}"):
        load_weights(model, partial, Path("ckpt-x"))
    with pytest.raises(ModelError, match="unexpected extra.weight"):
        load_weights(model, {**state, "extra.weight": torch.zeros(1)}, Path("ckpt-x"))
    tied = {k: v for k, v in state.items() if k != "lm_head.weight"}  # saved once when tied
    if model.config.tie_word_embeddings:
        load_weights(model, tied, Path("ckpt-x"))


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
