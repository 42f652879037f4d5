"""`tsallis-rl theory` writes report.md, PNGs and results.json, and refuses non-empty folders."""

from __future__ import annotations

import json

from tsallis_rl.cli import main


def test_theory_all_quick_writes_report_pngs_and_json(tmp_path, capsys):
    out = tmp_path / "theory"
    rc = main(["theory", "all", "--out", str(out), "--quick", "--progress", "false"])
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


def test_theory_never_writes_into_a_folder_it_did_not_make_and_overwrites_its_own(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # someone else's folder: refused, even with --overwrite
        rc = main(["theory", "escort", "--out", str(out), "--quick", "--progress", "false", *extra])
        assert rc == 2
        assert "not a tsallis-rl run directory" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    ours = tmp_path / "ours"
    assert main(["theory", "escort", "--out", str(ours), "--quick", "--progress", "false"]) == 0
    assert main(["theory", "escort", "--out", str(ours), "--quick", "--progress", "false"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (ours / "stale.txt").write_text("from before")
    rc = main(
        ["theory", "escort", "--out", str(ours), "--quick", "--progress", "false", "--overwrite"]
    )
    assert rc == 0 and (ours / "report.md").exists() and not (ours / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "ours"]  # old copy removed


def test_theory_config_yaml_and_bad_fields(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("escort_sizes: [2]\nescort_q: [0.5]\n")
    out = tmp_path / "o"
    assert (
        main(["theory", "escort", "--out", str(out), "--config", str(cfg), "--progress", "false"])
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["escort_q"] == [0.5]
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    rc = main(["theory", "escort", "--out", str(tmp_path / "o2"), "--config", str(bad)])
    assert rc == 2 and "unknown key" in capsys.readouterr().err


def test_study_counts_its_runs_in_words():
    from tsallis_rl.commands.study import count

    assert (count(1, "run"), count(4, "run")) == ("1 run", "4 runs")


def test_study_never_resumes_into_a_folder_another_command_wrote(tmp_path, capsys):
    theory = tmp_path / "theory"
    assert main(["theory", "escort", "--out", str(theory), "--quick", "--progress", "false"]) == 0
    before = sorted(p.name for p in theory.iterdir())
    argv = ["study", "escape", "--q", "1", "--dial", "1", "--steps", "1", "--out", str(theory)]
    for extra in (["--resume"], ["--overwrite"]):
        assert main([*argv, *extra]) == 2
        assert "tsallis-rl theory" in capsys.readouterr().err
    assert sorted(p.name for p in theory.iterdir()) == before
    assert main([*argv, "--resume", "--out", str(tmp_path / "nothere")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
