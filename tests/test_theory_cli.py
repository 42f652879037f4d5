"""`tsallis-rl theory` writes report.md, PNGs and results.json, and refuses non-empty folders."""

from __future__ import annotations

import json

from tsallis_rl.cli import main


def test_theory_all_quick_writes_report_pngs_and_json(tmp_path, capsys):
    out = tmp_path / "theory"
    rc = main(["theory", "all", "--out", str(out), "--quick", "--no-progress"])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "config.yaml"} <= names
    assert {"escape.png", "noise.png", "escort.png", "bias.png", "variance.png"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    data = json.loads((out / "results.json").read_text())
    assert set(data["results"]) == {"escape", "noise", "escort", "bias"}
    sig = data["results"]["escape"]["models"]["sigmoid"]
    assert any(abs(r["fit"]["slope"] - 0.5) < 0.05 for r in sig if r["q"] == 0.5)
    report = (out / "report.md").read_text()
    for title in ("Escape", "memorisation", "Escort", "bias"):
        assert title in report
    assert (out / "escape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_theory_refuses_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc = main(["theory", "escort", "--out", str(out), "--quick", "--no-progress"])
    assert rc == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "report.md").exists()
    rc = main(["theory", "escort", "--out", str(out), "--quick", "--no-progress", "--overwrite"])
    assert rc == 0
    assert (out / "report.md").exists() and (out / "notes.txt").read_text() == "mine"


def test_theory_config_yaml_and_bad_fields(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("escort_sizes: [2]\nescort_q: [0.5]\n")
    out = tmp_path / "o"
    assert main(["theory", "escort", "--out", str(out), "--config", str(cfg), "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["escort_q"] == [0.5]
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    rc = main(["theory", "escort", "--out", str(tmp_path / "o2"), "--config", str(bad)])
    assert rc == 2 and "unknown field" in capsys.readouterr().err
