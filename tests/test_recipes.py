"""Recipes: the paper's six settings as packaged data, each value marked as the paper's or ours."""

from __future__ import annotations

import pytest

from tsallis_rl.cli import main
from tsallis_rl.config import TrainConfig
from tsallis_rl.recipes import RecipeError, list_recipes, load_recipe

PAPER = {  # METHOD.md section 5
    "finqa": dict(thinking_budget=3968, sizes=(6145, 872, 1132)),
    "hotpotqa": dict(thinking_budget=2944, sizes=(9067, 342, 343)),
    "musique": dict(thinking_budget=1920, sizes=(9985, 579, 445)),
}
PAPER_KEYS = {  # the options the paper itself gives
    "model", "task", "regime", "train_size", "val_size", "test_size", "estimators",
    "num_rollouts", "num_samples", "thinking_budget", "answer_budget", "eval_k", "chat_template",
}  # fmt: skip


def test_the_six_paper_recipes_and_a_smoke_recipe_per_dataset_are_listed():
    names = set(list_recipes())
    for task in PAPER:
        assert {f"{task}-cold", f"{task}-warm", f"{task}-smoke"} <= names


@pytest.mark.parametrize("task", sorted(PAPER))
@pytest.mark.parametrize("regime", ["cold", "warm"])
def test_paper_recipe_holds_the_paper_values(task, regime):
    r = load_recipe(f"{task}-{regime}")
    o = r.options
    assert (o["model"], o["task"], o["regime"]) == ("Qwen/Qwen3-0.6B", task, regime)
    assert (o["num_rollouts"], o["num_samples"], o["answer_budget"], o["eval_k"]) == (
        32,
        32,
        128,
        16,
    )
    assert o["thinking_budget"] == PAPER[task]["thinking_budget"]
    assert (o["train_size"], o["val_size"], o["test_size"]) == PAPER[task]["sizes"]
    grid = {"grpo", "garl:0", "garl:0.25", "garl:0.5", "garl:0.75", "garl:1"}
    if regime == "warm":
        grid |= {"paft:0.25", "paft:0.75"}
    assert set(o["estimators"].split(",")) == grid


@pytest.mark.parametrize("name", list_recipes())
def test_every_value_not_from_the_paper_is_marked_and_the_options_validate(name):
    r = load_recipe(name)
    if not name.endswith("-smoke"):
        assert set(r.options) - PAPER_KEYS == set(r.not_given_by_paper)
    TrainConfig(**r.options).validate(r.source)
    assert r.description and "\n" not in r.description


def test_unknown_recipe_is_a_user_error_listing_the_known_ones(capsys):
    with pytest.raises(RecipeError, match="known: finqa-cold"):
        load_recipe("finqa-hot")
    assert main(["recipes", "finqa-hot"]) == 2
    assert "finqa-cold" in capsys.readouterr().err


def test_recipes_command_lists_names_with_descriptions_and_prints_a_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_recipes())
    assert any(line.startswith("finqa-cold ") and "Qwen3-0.6B" in line for line in lines)
    assert main(["recipes", "musique-warm"]) == 0
    assert "not_given_by_paper" in capsys.readouterr().out


def test_tiny_random_model_is_built_once_and_tokenizes_any_printable_text(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsallis_rl.tiny import ensure_tiny_model

    path = ensure_tiny_model("tiny:random", cache_dir=tmp_path)
    assert ensure_tiny_model("tiny:random", cache_dir=tmp_path) == path
    tok = AutoTokenizer.from_pretrained(path)
    text = 'Revenue was $1,940.0 (in "millions") - 56%?\n'
    assert tok.decode(tok(text)["input_ids"]) == text
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.max_position_embeddings >= 14000
    with pytest.raises(ValueError, match="tiny:random"):
        ensure_tiny_model("tiny:huge", cache_dir=tmp_path)
