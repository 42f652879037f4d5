"""`tsallis-rl data stats|show`: counts, skipped rows, percentiles, rendered prompts and targets."""

from __future__ import annotations

import json
from pathlib import Path

from tsallis_rl.cli import main
from tsallis_rl.tiny import build_char_tokenizer

FIX = Path(__file__).parent / "fixtures" / "tasks"


def test_stats_counts_and_reports_skipped_rows(capsys):
    rc = main(
        [
            "data",
            "stats",
            "--task",
            "jsonl",
            "--path",
            str(FIX / "bad_rows.jsonl"),
            "--skip-invalid",
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped_invalid"] == 3
    st = report["splits"]["all"]
    assert st["examples"] == 2 and st["empty_context"] == 2
    assert set(st["prompt_chars"]) == {"min", "p50", "p90", "p99", "max"}


def test_stats_with_a_tokenizer_counts_tokens(tmp_path, capsys):
    tok_dir = tmp_path / "tok"
    build_char_tokenizer().save_pretrained(tok_dir)
    path = str(FIX / "user.jsonl")
    assert (
        main(
            [
                "data",
                "stats",
                "--task",
                "jsonl",
                "--path",
                path,
                "--tokenizer",
                str(tok_dir),
                "--json",
            ]
        )
        == 0
    )
    st = json.loads(capsys.readouterr().out)["splits"]["all"]
    assert st["prompt_tokens"]["max"] >= st["prompt_chars"]["max"]  # character-level + <think>
    assert st["target_tokens"]["min"] == 1


def test_malformed_file_is_an_error_naming_the_line(capsys):
    rc = main(["data", "stats", "--task", "jsonl", "--path", str(FIX / "bad_rows.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad_rows.jsonl, line 2, field 'answer'" in err


def test_show_prints_what_the_model_sees(capsys):
    path = str(FIX / "finqa_official.json")
    assert (
        main(["data", "show", "--task", "finqa", "--path", path, "--regime", "cold", "-n", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "revenue | $ 1,200 | $ 1,000" in out and "--- target y* ---\n0.2" in out
    assert "Answer format" not in out and out.count("--- prompt ---") == 1
    assert main(["data", "show", "--task", "finqa", "--path", path, "-n", "5", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["target"] for s in shown] == ["0.2", "yes"]
    assert all("Answer format" in s["prompt"] and s["prompt"].endswith("<think>") for s in shown)


def test_directory_and_missing_path(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "dev.jsonl").write_text('{"question": "q2", "answer": "b"}\n')
    assert main(["data", "stats", "--task", "jsonl", "--path", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: v["examples"] for k, v in report["splits"].items()} == {"train": 1, "val": 1}
    assert main(["data", "stats", "--task", "jsonl"]) == 2
    assert "needs --path" in capsys.readouterr().err
    assert main(["data", "show", "--task", "jsonl", "--path", str(tmp_path / "nope.jsonl")]) == 2
