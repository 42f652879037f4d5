"""`tsallis-rl data stats|show`: counts, skipped rows, percentiles, rendered prompts and targets."""

from __future__ import annotations

import json
from pathlib import Path

from tsallis_rl.cli import main
from tsallis_rl.models.tiny import build_char_tokenizer
from tsallis_rl.tasks import get_task

FIX = Path(__file__).parent / "fixtures" / "tasks"


def test_stats_counts_and_reports_skipped_rows(capsys):
    rc = main(
        [
            "data",
            "stats",
            "--task",
            "jsonl",
            "--data",
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
                "--data",
                path,
                "--tokenizer",
                str(tok_dir),
                "--json",
            ]
        )
        == 0
    )
    st = json.loads(capsys.readouterr().out)["splits"]["all"]
    # characters of the rendered prompt; character-level tokens, but <think> is one token
    assert st["prompt_tokens"]["max"] == st["prompt_chars"]["max"] - len("<think>") + 1
    assert st["target_tokens"]["min"] == 1


def test_malformed_file_is_an_error_naming_the_line(capsys):
    rc = main(["data", "stats", "--task", "jsonl", "--data", str(FIX / "bad_rows.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad_rows.jsonl, line 2, field 'answer'" in err


def test_show_prints_what_the_model_sees(capsys):
    path = str(FIX / "finqa_official.json")
    assert (
        main(["data", "show", "--task", "finqa", "--data", path, "--regime", "cold", "-n", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "revenue | $ 1,200 | $ 1,000" in out and "--- target y* ---\n0.2" in out
    assert "Answer format" not in out and out.count("--- prompt ---") == 1
    warm = ["data", "show", "--task", "finqa", "--data", path, "--regime", "warm", "-n", "5"]
    assert main([*warm, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["target"] for s in shown] == ["0.2", "yes"]
    assert all("Answer format" in s["prompt"] and s["prompt"].endswith("<think>") for s in shown)


def test_directory_and_missing_path(tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    (tmp_path / "dev.jsonl").write_text('{"question": "q2", "answer": "b"}\n')
    assert main(["data", "stats", "--task", "jsonl", "--data", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {k: v["examples"] for k, v in report["splits"].items()} == {"train": 1, "val": 1}
    assert main(["data", "stats", "--task", "jsonl"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["data", "show", "--task", "jsonl", "--data", str(tmp_path / "nope.jsonl")]) == 2


def test_show_renders_the_prompt_the_trainer_builds_for_the_same_flags(tmp_path, capsys):
    from tsallis_rl.config import TrainConfig
    from tsallis_rl.prompts import PromptFormatter
    from tsallis_rl.tasks import get_task

    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}U:{{ m['content'] }}{% endfor %}A:"
    tok.save_pretrained(tmp_path / "tok")
    task = get_task("chainsum")
    train = task.splits(None)["train"]
    for extra, cfg in (
        ([], TrainConfig()),  # defaults agree: cold regime, the model's chat template
        (["--regime", "warm"], TrainConfig(regime="warm")),
        (["--chat-template", "off"], TrainConfig(chat_template="off")),
    ):
        argv = ["data", "show", "--split", "train", "-n", "2", "--json", *extra]
        assert main([*argv, "--tokenizer", str(tmp_path / "tok")]) == 0
        shown = json.loads(capsys.readouterr().out)
        fmt = PromptFormatter.build(tok, task, cfg)
        assert [s["prompt"] for s in shown] == [fmt.prompt_text(ex) for ex in train[:2]]
    assert main(["data", "show", "--split", "train", "-n", "1", "--json"]) == 0
    (plain,) = json.loads(capsys.readouterr().out)  # no tokenizer: as the default base model
    assert plain["prompt"] == task.build_prompt(train[0], "cold") + "<think>"


def test_path_is_a_deprecated_alias_of_data(capsys):
    path = str(FIX / "user.jsonl")
    assert main(["data", "stats", "--task", "jsonl", "--path", path, "--json"]) == 0
    captured = capsys.readouterr()
    assert "--path is deprecated; use --data" in captured.err
    assert json.loads(captured.out)["data"] == path


GOLD_TASK = "hotpotqa?context=gold"


def test_show_and_stats_say_what_a_context_variant_dropped(capsys):
    data = str(FIX / "hotpotqa_hf.jsonl")
    assert main(["data", "show", "--task", GOLD_TASK, "--data", data, "-n", "1"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[0]
    assert head.startswith(f"task {GOLD_TASK}, context variant: context=gold")
    assert "distractor paragraphs are dropped" in head
    assert main(["data", "stats", "--task", GOLD_TASK, "--data", data]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("context variant: context=gold")
    assert out.count("context variant") == 1  # one line, not one per split
    assert main(["data", "stats", "--task", GOLD_TASK, "--data", data, "--json"]) == 0
    assert "distractor" in json.loads(capsys.readouterr().out)["context_note"]
    assert main(["data", "show", "--task", GOLD_TASK, "--data", data, "--json"]) == 0
    assert all("distractor" in item["context_note"] for item in json.loads(capsys.readouterr().out))


def test_the_full_context_says_nothing_was_dropped(capsys):
    data = str(FIX / "hotpotqa_hf.jsonl")
    assert main(["data", "show", "--task", "hotpotqa", "--data", data, "-n", "1"]) == 0
    assert "context variant" not in capsys.readouterr().out
    assert main(["data", "stats", "--task", "hotpotqa", "--data", data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["context_note"] == ""


def test_the_run_records_what_its_context_variant_dropped(tmp_path):
    """final.json carries task.context_note (config.yaml has the task string, this says what
    the string means)."""
    import string

    from tsallis_rl.models.tiny import save_tiny_model

    model_dir = save_tiny_model(
        tmp_path / "m", string.printable, hidden_size=16, num_layers=1, num_heads=2,
        max_positions=2048,
    )  # fmt: skip
    row = json.loads((FIX / "hotpotqa_hf.jsonl").read_text())
    data = tmp_path / "hotpot.jsonl"
    data.write_text("".join(json.dumps({**row, "id": f"{row['id']}-{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "run"
    flags = ["--task", GOLD_TASK, "--data", str(data), "--estimators", "garl:0.75"]
    flags += ["--steps", "0", "--val-size", "0", "--test-size", "0", "--threads", "1"]
    flags += ["--progress", "false", "--model", str(model_dir), "--out", str(out)]
    assert main(["train", *flags]) == 0
    final = json.loads((out / "garl_q0.75" / "final.json").read_text())
    assert final["context_note"] == get_task(GOLD_TASK).context_note != ""
