"""bench/real_model.py's table on a hand-made finished run (no model is loaded): base rows, the
validation-selected and last-step rows of each method, EM/F1 by the official HotpotQA rules, and
the wall time added up over invocations that skip phases."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

DATA = str(Path(__file__).parent / "fixtures" / "tasks" / "hotpotqa_hf.jsonl")


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "real_model.py"
    spec = importlib.util.spec_from_file_location("real_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _finished(out: Path) -> None:
    """OUT as the experiment leaves it (only what the table reads)."""
    summary = {"p@1": 0.25, "maj_em": 0.0, "maj_f1": 0.1, "log_p_hat": -20.0, "seconds": 5.0}
    for regime in ("warm", "cold"):
        (out / f"base-{regime}").mkdir(parents=True)
        (out / f"base-{regime}" / "summary.json").write_text(json.dumps(summary))
        _jsonl(
            out / f"base-{regime}" / "records.jsonl",
            [{"gold": "Eta Theta", "answers": ["the Eta Theta", "Zeta"]}],
        )
    run = out / "train" / "garl_q0.75"
    run.mkdir(parents=True)
    final = {"best_step": 0, "test": summary, "wall_seconds": 60.0, "context_note": "gold only"}
    (run / "final.json").write_text(json.dumps(final))
    _jsonl(run / "test_records.jsonl", [{"gold": "Eta Theta", "answers": ["Eta Theta", "x"]}])
    _jsonl(
        run / "metrics.jsonl",
        [
            {"kind": "eval", "split": "val", "step": 0, "p@1": 0.0, "log_p_hat": -20.0},
            {"kind": "train", "step": 1, "mean_log_w_bar": -25.0, "seconds": 30.0},
            {"kind": "train", "step": 2, "mean_log_w_bar": -21.0, "seconds": 50.0},
            {"kind": "eval", "split": "val", "step": 2, "p@1": 0.0, "log_p_hat": -15.0},
        ],
    )
    last = out / "last" / "garl_q0.75"
    last.mkdir(parents=True)
    (last / "summary.json").write_text(json.dumps({**summary, "log_p_hat": -14.0, "step": 2}))
    _jsonl(last / "records.jsonl", [{"gold": "Eta Theta", "answers": ["Eta", "Eta Theta"]}])
    (out / "wall_seconds.txt").write_text("600\n")


def test_table_has_base_selected_and_last_rows_with_official_em_f1(tmp_path, capsys):
    bench = _bench()
    _finished(tmp_path)
    assert bench.main(["--table-only", "--out", str(tmp_path), "--data", DATA]) == 0
    rows = json.loads((tmp_path / "real_model.json").read_text())["rows"]
    names = [r["row"] for r in rows]
    assert names == [
        "base model, warm regime",
        "base model, cold regime",
        "garl_q0.75, selected step 0 (cold)",
        "garl_q0.75, last step 2 (cold)",
    ]
    # official rules: "the Eta Theta" normalises to "eta theta" (article dropped) = EM 1
    assert rows[0]["em"] == pytest.approx(0.5) and rows[0]["f1"] == pytest.approx(0.5)
    assert rows[2]["em"] == pytest.approx(0.5)
    # "Eta" vs "Eta Theta": precision 1, recall 1/2 -> F1 2/3; plus an exact sample
    assert rows[3]["f1"] == pytest.approx((2 / 3 + 1) / 2) and rows[3]["log_p_hat"] == -14.0
    text = (tmp_path / "real_model.md").read_text()
    assert (
        "training of garl_q0.75, selected step 0 (cold) (step: batch log P-hat), 40 s a step"
        in text
    )
    assert "1: -25.00, 2: -21.00" in text and "10.0 min" in text
    assert (tmp_path / "real_model.png").stat().st_size > 0


def test_a_later_invocation_that_skips_phases_adds_its_wall_time(tmp_path, monkeypatch):
    bench = _bench()
    _finished(tmp_path)
    monkeypatch.setattr(bench, "model_ref", lambda name: name)
    monkeypatch.setattr(bench, "evaluate_last", lambda *a, **k: None)
    flags = ["--out", str(tmp_path), "--data", DATA, "--skip-base", "--skip-train"]
    assert bench.main(flags) == 0
    assert float((tmp_path / "wall_seconds.txt").read_text()) == pytest.approx(600, abs=5)
