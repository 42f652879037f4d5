"""Bad input never costs work or files: every user mistake exits 2 with one line naming the culprit,
no traceback, before any model is loaded, and with no file created or changed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsallis_rl.cli import main


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root with a hash of its content (directories marked as such)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _no_model_work(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("model work started before the input was checked")

    monkeypatch.setattr("tsallis_rl.suite.load_model", boom)
    monkeypatch.setattr("tsallis_rl.models.loading.load_model", boom)
    monkeypatch.setattr("tsallis_rl.models.basemodel.ensure_base_model", boom)
    monkeypatch.setattr("tsallis_rl.models.basemodel.pretrain", boom)


def _files(tmp: Path) -> None:
    """Input files the cases refer to (created before the snapshot)."""
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "train_size.yaml").write_text("train_size: abc\n")
    (tmp / "q_end.yaml").write_text("q_schedule: linear\nq_end: abc\n")
    (tmp / "latin1.yaml").write_bytes("steps: 3\n# caf\xe9\n".encode("latin-1"))
    (tmp / "list.yaml").write_text("- steps\n- 3\n")
    (tmp / "unknown.yaml").write_text("learning_rate: 3\n")
    (tmp / "estimators_map.yaml").write_text("estimators: {garl: 0.5}\n")
    (tmp / "both.yaml").write_text("estimator: paft\nestimators: grpo,garl:0.5\n")
    (tmp / "broken.yaml").write_text("steps: [1, 2\n")
    (tmp / "dev.jsonl").write_text('{"question": "q?", "answer": "a"}\n')


CASES = [
    # (argv, what the message must name) -- issue 12 item 8 first
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--temperature", "nan"], "--temperature"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--eval-temperature", "-1"], "eval_temperature"),
    (["train", "--clip-eps", "-1"], "clip_eps"),
    (["train", "--clip-eps", "0"], "clip_eps"),
    (["train", "--max-grad-norm", "-1"], "max_grad_norm"),
    (["train", "--weight-decay", "-0.1"], "weight_decay"),
    (["train", "--lora-r", "0"], "lora_r"),
    (["train", "--device", "bogus"], "device"),
    (["train", "--device", "cuda:99"], "device"),
    (["train", "--model", "./no/such/model"], "model"),
    (["train", "--model", "/no/such/model"], "model"),
    (["train", "--model", "a_file"], "model"),
    (["train", "--out", "a_file"], "out"),
    (["train", "--out", "a_file/run"], "out"),
    (["train", "--config", "train_size.yaml"], "train_size.yaml: train_size"),
    (["train", "--config", "q_end.yaml"], "q_end.yaml: q_end"),
    (["train", "--config", "latin1.yaml"], "latin1.yaml:2: not UTF-8"),
    (["train", "--config", "list.yaml"], "list.yaml"),
    (["train", "--config", "unknown.yaml"], "learning_rate"),
    (["train", "--config", "estimators_map.yaml"], "estimators_map.yaml: estimators"),
    (["train", "--config", "both.yaml"], "both.yaml: estimator and estimators"),
    (["train", "--config", "broken.yaml"], "broken.yaml: not valid YAML"),
    (["train", "--config", "missing.yaml"], "missing.yaml"),
    # flags that cannot apply, or that are missing where needed
    (["train", "--estimator", "paft", "--estimators", "grpo"], "estimator and estimators"),
    (["train", "--estimators", "garl:0.5,grpo", "--q", "0.3"], "q = 0.3"),
    (["train", "--q-end", "0.5"], "q_end"),
    (["train", "--q-schedule", "step", "--q-end", "0.5"], "q_switch_step"),
    (["train", "--q-switch-step", "3"], "q_switch_step"),
    (["train", "--q-schedule", "step", "--q-end", "0", "--q-switch-step", "999"], "q_switch_step"),
    (["train", "--steps", "abc"], "--steps"),
    (["train", "--progress", "maybe"], "--progress"),
    (["train", "--task", "nope"], "nope"),
    (["train", "--task", "finqa"], "--data"),
    (["train", "--resume", "--overwrite"], "resume"),
    (["train", "--estimators", "garl:x"], "garl:x"),
    (["train", "--estimator", "grpo", "--q", "0.5"], "takes no q"),
    (["train", "--estimator", "garl", "--num-samples", "4"], "num_samples"),
    (["train", "--estimator", "paft", "--clip-eps", "0.3"], "clip_eps"),
    (["train", "--lora-r", "4"], "--lora"),
    # eval and data speak the same language and fail the same way
    (["eval", "--model", "./no/such/model"], "model"),
    (["eval", "--limit", "-1"], "limit"),
    (["eval", "--device", "bogus"], "device"),
    (["eval", "--temperature", "nan"], "--temperature"),
    (["eval", "--task", "jsonl", "--split", "all"], "--data"),
    (["data", "show", "--task", "finqa"], "--data"),
    (["data", "show", "--task", "jsonl", "--data", "missing.jsonl"], "missing.jsonl"),
    (["data", "stats", "--task", "jsonl", "--data", "dev.jsonl", "--tokenizer", "./nope"], "nope"),
    (["data", "show", "--task", "jsonl", "--data", "dev.jsonl", "--path", "dev.jsonl"], "--path"),
    (["data", "show", "--chat-template", "on"], "--tokenizer"),
]


@pytest.mark.parametrize("argv,culprit", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_exits_2_naming_the_culprit_without_traceback_or_writes(
    tmp_path, monkeypatch, capsys, argv, culprit
):
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default --out runs/default would land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_model_work(monkeypatch)
    before = _snapshot(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert culprit in err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert _snapshot(tmp_path) == before


def test_an_unloadable_hub_model_fails_in_seconds_naming_what_was_tried(tmp_path):
    """A real process, offline: no 49 s wait, no traceback, no run directory left behind."""
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "tsallis_rl.cli", "train", "--model", "no-such-org/no-such-model"]
        + ["--estimator", "garl", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no-such-org/no-such-model" in proc.stderr
    assert "local Hugging Face cache" in proc.stderr and "offline" in proc.stderr
    assert not (tmp_path / "run").exists()
    assert time.time() - t0 < 60
