"""`tsallis-rl export verl`: verl-format parquet + a compute_score that agrees with the task's matching.

Runs in the main .venv (pandas reads the parquet back) and in .venv-verl, where verl's own
RLHFDataset and reward-function loader read the same files. Data: tests/fixtures/verl/qa.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from tsallis_rl.cli import main  # noqa: E402
from tsallis_rl.tasks import get_task  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "verl" / "qa.jsonl"
COLUMNS = {"data_source", "prompt", "ability", "reward_model", "extra_info"}


def export(tmp_path: Path, regime: str = "warm", *extra: str) -> Path:
    out = tmp_path / f"verl_{regime}"
    argv = ["export", "verl", "--task", "jsonl", "--data", str(FIXTURE), "--regime", regime]
    rc = main([*argv, "--out", str(out), "--val-size", "2", "--test-size", "2", *extra])
    assert rc == 0
    return out


def load_reward_fn(out: Path):
    spec = importlib.util.spec_from_file_location("exported_reward_fn", out / "reward_fn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


@pytest.mark.parametrize("regime", ["warm", "cold"])
def test_export_writes_verl_parquet_with_the_tasks_prompts_and_targets(tmp_path, regime):
    out = export(tmp_path, regime)
    task = get_task("jsonl")
    examples = {ex.id: ex for ex in task.load(FIXTURE)}
    seen = []
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        df = pd.read_parquet(out / f"{split}.parquet")
        assert set(df.columns) == COLUMNS and len(df) == n
        for i, row in enumerate(df.itertuples()):
            info = row.extra_info
            ex = examples[info["id"]]
            assert row.data_source == "jsonl" and row.ability == "reasoning"
            assert list(row.prompt) == [{"role": "user", "content": task.build_prompt(ex, regime)}]
            assert row.reward_model == {"style": "rule", "ground_truth": task.target(ex)}
            assert (info["split"], info["index"], info["task"], info["regime"]) == (
                split,
                i,
                "jsonl",
                regime,
            )
            assert json.loads(info["example"])["aliases"] == ex.aliases
            seen.append(ex.id)
    assert sorted(seen) == sorted(examples)  # every example once, splits disjoint
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["counts"] == {"train": 6, "val": 2, "test": 2}
    assert manifest["regime"] == regime and manifest["task"] == "jsonl"


def test_cold_prompts_carry_no_instructions(tmp_path):
    out = export(tmp_path, "cold")
    task = get_task("jsonl")
    for split in ("train", "val", "test"):
        for prompt in pd.read_parquet(out / f"{split}.parquet")["prompt"]:
            text = prompt[0]["content"]
            assert not any(instr in text for instr in task.instruction_texts())


def completions(gold: str, aliases: list[str]) -> list[str]:
    """Gold, alias and perturbed completions, with and without a thinking block."""
    outs = [
        f"<think>let me think</think>{gold}",
        f"<think>x</think>\n  {gold}  \n",
        gold,
        f"<think>x</think>The answer is {gold}.",
        f"<think>x</think>{gold}{gold}",
        f"<think>x</think>{gold[:-1]}",
        f"<think>x</think>not {gold} maybe",
        f"{gold}<think>x</think>something else",
        "<think>never closed",
        "",
    ]
    outs += [f"<think>y</think>{a}" for a in aliases]
    return outs


def test_compute_score_agrees_with_task_matching(tmp_path):
    out = export(tmp_path, "warm")
    compute_score = load_reward_fn(out)
    task = get_task("jsonl")
    n_exact = n_sub = 0
    for split in ("train", "val", "test"):
        for row in pd.read_parquet(out / f"{split}.parquet").itertuples():
            info = dict(row.extra_info)
            ex = next(e for e in task.load(FIXTURE) if e.id == info["id"])
            gt = row.reward_model["ground_truth"]
            for sol in completions(ex.answer, ex.aliases):
                pred = task.extract_answer(sol)
                exact, sub = task.exact_match(pred, ex), task.substring_match(pred, ex)
                got = compute_score(row.data_source, sol, gt, info)
                assert got == {
                    "score": float(exact),
                    "exact_match": float(exact),
                    "substring_match": float(sub),
                    "pred": task.normalize(pred),
                }, (sol, ex)
                sub_score = compute_score(row.data_source, sol, gt, info, match="substring")
                assert sub_score["score"] == float(sub)
                n_exact += exact
                n_sub += sub
    assert 0 < n_exact < n_sub  # the perturbations exercise both outcomes of both matches


def test_compute_score_without_extra_info_uses_ground_truth(tmp_path):
    out = export(tmp_path, "warm")
    compute_score = load_reward_fn(out)
    assert compute_score("jsonl", "<think>a</think>Paris", "Paris")["score"] == 1.0
    assert compute_score("jsonl", "<think>a</think>Lyon", "Paris", {})["score"] == 0.0
    with pytest.raises(ValueError, match="match"):
        compute_score("jsonl", "Paris", "Paris", match="fuzzy")


def test_export_errors_are_reported_without_traceback(tmp_path, capsys):
    base = ["export", "verl", "--out", str(tmp_path / "x")]
    assert main([*base, "--task", "nosuchtask", "--data", str(FIXTURE)]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main([*base, "--task", "jsonl"]) == 2
    assert "--data" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q?", "answer": "a"}\n{"question": "", "answer": "b"}\n')
    assert main([*base, "--task", "jsonl", "--data", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--task", "jsonl", "--data", str(FIXTURE), "--regime", "tepid"])
    with pytest.raises(SystemExit):
        main([*base, "--task", "jsonl", "--data", str(FIXTURE), "--val-size", "-1"])


def test_verl_reads_the_export(tmp_path):
    """verl's own RLHFDataset tokenizes the prompts, and its loader finds compute_score."""
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.import_utils import load_extern_object

    from tsallis_rl.models.tiny import build_char_tokenizer

    out = export(tmp_path, "cold")
    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<think>{% endif %}"
    )
    cfg = OmegaConf.create(
        {
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,
            "cache_dir": str(tmp_path / "cache"),
            "truncation": "error",
        }
    )
    ds = RLHFDataset(str(out / "train.parquet"), tok, cfg)
    assert len(ds) == 6
    item = ds[0]
    assert item["data_source"] == "jsonl"
    assert item["reward_model"]["ground_truth"]
    fn = load_extern_object(module_path=str(out / "reward_fn.py"), object_name="compute_score")
    gt = item["reward_model"]["ground_truth"]
    assert fn("jsonl", f"<think>z</think>{gt}", gt, dict(item["extra_info"]))["score"] == 1.0


def test_an_out_path_that_looks_like_code_is_never_executed_by_the_reward_fn(tmp_path):
    """The --out path (user text) stays out of reward_fn.py: a path that would close its docstring
    and run a statement is inert, and the module reads its settings from export.json instead."""
    payload = 'x"""\n__import__("pathlib").Path(__file__).with_name("PWNED").touch()\n"""'
    out = tmp_path / payload
    argv = ["export", "verl", "--task", "jsonl", "--data", str(FIXTURE), "--out", str(out)]
    assert main([*argv, "--val-size", "2", "--test-size", "2"]) == 0
    source = (out / "reward_fn.py").read_text()
    assert payload not in source and str(tmp_path) not in source
    spec = importlib.util.spec_from_file_location("exported_reward_fn_inert", out / "reward_fn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not (out / "PWNED").exists()
    assert module.SETTINGS["task"] == "jsonl" and module.SETTINGS["regime"] == "cold"  # the default


def test_re_export_needs_overwrite_and_then_replaces_the_whole_folder(tmp_path, capsys):
    """The one --out policy: an export folder is replaced only with --overwrite, and then whole
    (no split file of the earlier export is left behind); a folder export did not write is
    never written into."""
    out = export(tmp_path, "warm")
    assert (out / "test.parquet").exists()
    argv = ["export", "verl", "--task", "jsonl", "--data", str(FIXTURE), "--out", str(out)]
    assert main([*argv, "--val-size", "2", "--test-size", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--val-size", "2", "--test-size", "0", "--overwrite"]) == 0
    assert not (out / "test.parquet").exists()  # its rows are in train.parquet now
    assert len(pd.read_parquet(out / "train.parquet")) == 8
    assert json.loads((out / "export.json").read_text())["counts"]["test"] == 0
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temp
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    argv[-1] = str(mine)
    assert main([*argv, "--overwrite"]) == 2
    assert "not a tsallis-rl run directory" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_generated_task_exports_without_file_options(tmp_path):
    """chainsum's splits take no skip_invalid: only the options a task accepts are passed."""
    out = tmp_path / "chainsum"
    assert main(["export", "verl", "--task", "chainsum", "--out", str(out)]) == 0
    counts = json.loads((out / "export.json").read_text())["counts"]
    assert counts["train"] > 0 and len(pd.read_parquet(out / "train.parquet")) == counts["train"]
