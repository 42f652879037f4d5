"""Label noise (`?noise=EPS`): seeded, same answer form, never wrong-by-accident, train split only,
recorded in the run directory; a bad value is a one-line status-2 error before anything is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsallis_rl.errors import ConfigError
from tsallis_rl.tasks import get_task
from tsallis_rl.tasks.noise import clean_example, is_noisy, noise_records

SIZES = dict(train_size=200, val_size=30, test_size=40)


def chainsum_splits(name: str, seed: int = 0):
    return get_task(name).splits(seed=seed, **SIZES)


def test_noise_option_is_read_from_the_name_or_the_options_and_leaves_other_options():
    assert get_task("chainsum?noise=0.2").noise == 0.2
    task = get_task("chainsum?dial=3&noise=0.4")
    assert task.noise == 0.4 and task.dial == 3
    assert get_task("chainsum", noise=0.1).noise == 0.1
    assert get_task("chainsum").noise == 0.0


@pytest.mark.parametrize("value", ["1", "1.0", "-0.1", "abc", "nan", "true", "2e3", ""])
def test_a_bad_noise_value_is_a_config_error_naming_the_option(value):
    with pytest.raises(ConfigError, match="noise"):
        get_task(f"chainsum?noise={value}")


def test_round_eps_n_training_examples_are_corrupted_and_val_test_are_identical_to_clean():
    clean = chainsum_splits("chainsum")
    noisy = chainsum_splits("chainsum?noise=0.3")
    assert noisy["val"] == clean["val"] and noisy["test"] == clean["test"]
    assert not any(is_noisy(ex) for split in ("val", "test") for ex in noisy[split])
    bad = [ex for ex in noisy["train"] if is_noisy(ex)]
    assert len(bad) == round(0.3 * 200)
    for c, n in zip(clean["train"], noisy["train"]):  # the others are untouched
        assert (n == c) if not is_noisy(n) else (clean_example(n) == c and n.answer != c.answer)


def test_corruption_is_seeded_by_the_run_seed_and_eps_and_fixed_for_the_run():
    a = chainsum_splits("chainsum?noise=0.2", seed=0)["train"]
    b = chainsum_splits("chainsum?noise=0.2", seed=0)["train"]
    assert a == b  # same run seed: the same examples and wrong answers
    c = get_task("chainsum?noise=0.2")
    c_train = c.splits(seed=0, **SIZES)["train"]
    assert [ex.id for ex in c_train if is_noisy(ex)] == [ex.id for ex in a if is_noisy(ex)]
    other = chainsum_splits("chainsum?noise=0.2", seed=1)["train"]
    assert {e.id for e in other if is_noisy(e)} != {e.id for e in a if is_noisy(e)}
    more = chainsum_splits("chainsum?noise=0.25", seed=0)["train"]
    assert {e.id for e in more if is_noisy(e)} != {e.id for e in a if is_noisy(e)}


@pytest.mark.parametrize("name", ["chainsum", "chainsum?dial=3", "chainsum?answer_form=warm",
                                  "chainsum?dial=4", "chainsum?num_operands=3&low=0&high=4"])  # fmt: skip
def test_chainsum_wrong_answer_is_another_sum_of_as_many_digits_in_the_same_form(name):
    task = get_task(f"{name}&noise=0.5" if "?" in name else f"{name}?noise=0.5")
    train = task.splits(seed=3, **SIZES)["train"]
    bad = [ex for ex in train if is_noisy(ex)]
    assert bad
    for ex in bad:
        true = ex.meta["sum"]
        wrong = [s for s in range(0, 100) if task.render_answer(s) == ex.answer]
        assert len(wrong) == 1, ex.answer  # the answer is a rendered sum
        assert wrong[0] != true and len(str(wrong[0])) == len(str(true))
        assert not task.exact_match(
            ex.meta["noise"]["clean"], ex
        )  # the clean sum is no longer rewarded
        assert task.exact_match(ex.answer, ex)


def write_qa(path: Path) -> Path:
    rows = [
        *({"question": f"yes or no {i}?", "answer": "yes" if i % 2 else "no"} for i in range(10)),
        *({"question": f"how many {i}?", "answer": str(10 + i)} for i in range(10)),
        *({"question": f"who {i}?", "answer": f"Person number {i}"} for i in range(10)),
        {"question": "who else?", "answer": "Person number 1 junior"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_qa_wrong_answer_is_another_training_answer_of_the_same_kind_never_matching(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl")
    task = get_task("jsonl?noise=0.6")
    parts = task.splits(data, val_size=0.1, test_size=0.1, seed=0)
    clean = get_task("jsonl").splits(data, val_size=0.1, test_size=0.1, seed=0)
    assert parts["val"] == clean["val"] and parts["test"] == clean["test"]
    train_answers = {clean_example(ex).answer for ex in parts["train"]}
    bad = [ex for ex in parts["train"] if is_noisy(ex)]
    assert len(bad) == round(0.6 * len(parts["train"]))
    for ex in bad:
        truth = clean_example(ex)
        assert task.answer_kind(ex.answer) == task.answer_kind(truth.answer)
        assert not task.exact_match(ex.answer, truth) and not task.substring_match(ex.answer, truth)
        if task.answer_kind(ex.answer) != "yesno":
            assert ex.answer in train_answers  # another training example's answer
    kinds = {task.answer_kind(clean_example(ex).answer) for ex in bad}
    assert kinds == {"yesno", "number", "span"}


def test_answer_kinds():
    task = get_task("jsonl")
    assert [task.answer_kind(a) for a in ("Yes", "no.", "1,200", "$3.5", "12%", "Paris")] == [
        "yesno", "yesno", "number", "number", "number", "span",
    ]  # fmt: skip


def test_the_run_records_the_corrupted_examples_with_clean_and_noisy_answers(
    tmp_path, tiny_model_dir
):
    from tsallis_rl.config import TrainConfig
    from tsallis_rl.suite import build_trainer

    cfg = TrainConfig(model=str(tiny_model_dir), task="chainsum?noise=0.25", train_size=16,
                      val_size=2, test_size=0, threads=1, progress=False,
                      out=str(tmp_path / "run")).validate()  # fmt: skip
    trainer = build_trainer(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "noise.jsonl").read_text().splitlines()]
    assert rows == noise_records(trainer.splits["train"]) and len(rows) == 4
    for r in rows:
        ex = trainer.splits["train"][r["index"]]
        assert ex.id == r["id"] and ex.answer == r["noisy"] != r["clean"]
    clean = build_trainer(TrainConfig(**{**cfg.to_dict(), "task": "chainsum"}), tmp_path / "clean")
    assert not (tmp_path / "clean" / "noise.jsonl").exists() and clean.task.noise == 0.0


def test_a_plain_train_run_counts_its_corrupted_answers_in_final_json(tmp_path, tiny_model_dir):
    from tsallis_rl.cli import main

    argv = ["train", "--model", str(tiny_model_dir), "--task", "chainsum?noise=0.25",
            "--estimators", "garl:1", "--steps", "1", "--train-size", "16", "--val-size", "2",
            "--test-size", "0", "--eval-k", "2", "--batch-size", "2", "--num-rollouts", "2",
            "--thinking-budget", "4", "--answer-budget", "4", "--threads", "1",
            "--progress", "false", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    final = json.loads((tmp_path / "out" / "garl_q1" / "final.json").read_text())
    assert final["noise"] == 0.25 and final["noisy_train"] == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--task", "chainsum?noise=1.5", "--steps", "1"],
        ["train", "--task", "chainsum?dial=3&noise=-0.2", "--steps", "1"],
        ["study", "noise", "--noise", "0,1"],
        ["study", "noise", "--noise", "0.2,-1"],
    ],
)
def test_a_bad_noise_value_exits_2_in_one_line_before_anything_is_built(
    tmp_path, capsys, monkeypatch, argv
):
    import tsallis_rl.models.basemodel as basemodel
    import tsallis_rl.suite as suite
    from tsallis_rl.cli import main

    monkeypatch.setattr(basemodel, "ensure_base_model", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(suite, "load_model", lambda *a, **k: pytest.fail("loaded"))
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "noise" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
