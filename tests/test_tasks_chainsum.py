"""Chain-sum task: the difficulty dial, options in the task name, file-task keywords."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tsallis_rl.tasks import get_task
from tsallis_rl.tasks.base import THINK_CLOSE, THINK_OPEN
from tsallis_rl.tasks.chainsum import DIAL_FORMS, ChainSumTask, answer_for_dial


def test_dial_renders_each_answer_form():
    assert [answer_for_dial(20, d) for d in range(len(DIAL_FORMS))][0] == "A:20"
    task = get_task("chainsum?dial=0")
    ex = task.splits(train_size=1, val_size=1, test_size=1)["val"][0]
    assert ex.answer == f"A:{ex.meta['sum']}"
    assert task.build_prompt(ex, "cold") == " ".join(map(str, ex.meta["operands"]))


def test_task_name_options_reach_the_constructor():
    task = get_task("chainsum?dial=2&num_operands=5")
    assert isinstance(task, ChainSumTask) and task.dial == 2 and task.spec.num_operands == 5
    assert task.name == "chainsum?dial=2"


@pytest.mark.parametrize(
    "name", ["chainsum?dial=99", "chainsum?dial=x", "chainsum?colour=3", "chainsum?dial"]
)
def test_bad_task_name_options_are_value_errors(name):
    with pytest.raises(ValueError, match="chainsum"):
        get_task(name)


def test_default_chainsum_is_unchanged_by_the_dial():
    ex = ChainSumTask().splits(train_size=1, val_size=1, test_size=1)["val"][0]
    assert ex.answer == str(ex.meta["sum"])[::-1]


def test_splits_take_the_file_tasks_keywords():
    """`export verl` passes skip_invalid to every task (issue 15 item 3)."""
    a = ChainSumTask().splits(None, val_size=3, test_size=4, seed=1, skip_invalid=True)
    b = ChainSumTask().splits(val_size=3, test_size=4, seed=1)
    assert [e.answer for e in a["val"]] == [e.answer for e in b["val"]]
    assert (len(a["val"]), len(a["test"])) == (3, 4)


def test_export_verl_runs_on_chainsum(tmp_path: Path):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from tsallis_rl.commands.export import export_verl

    manifest = export_verl("chainsum", None, "cold", tmp_path / "v", val_size=2, test_size=2)
    assert (tmp_path / "v" / "train.parquet").exists() and manifest["task"] == "chainsum"


@pytest.fixture(scope="module")
def small_base_model(tmp_path_factory) -> Path:
    """A 2-layer base model pretrained briefly on warm chain sums (the real recipe, scaled down)."""
    from tsallis_rl.models.basemodel import BaseModelConfig, pretrain

    cfg = BaseModelConfig(
        hidden_size=48,
        num_layers=2,
        num_heads=2,
        intermediate_size=96,
        steps=200,
        batch_size=32,
        threads=1,
    )
    out = tmp_path_factory.mktemp("base") / "model"
    pretrain(cfg, out, progress=False)
    return out


def gold_chain_answer_log_p(model, tok, task: ChainSumTask, n: int = 16) -> float:
    """Mean log p(y* <eos> | cold prompt, gold rationale): the answer's teacher-forced log P."""
    examples = task.splits(train_size=1, val_size=n, test_size=0, seed=3)["val"]
    total = 0.0
    for ex in examples:
        head = f"{task.build_prompt(ex, 'cold')}{THINK_OPEN}{ex.meta['rationale']}{THINK_CLOSE}"
        h = tok(head, add_special_tokens=False)["input_ids"]
        a = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([h + a])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        pos = torch.arange(len(h) - 1, len(h) + len(a) - 1)
        total += float(logp[pos, ids[0, len(h) :]].sum())
    return total / len(examples)


def test_dial_lowers_the_answer_log_p_monotonically_on_a_pretrained_model(small_base_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_base_model)
    model = AutoModelForCausalLM.from_pretrained(small_base_model).eval()
    lps = [
        gold_chain_answer_log_p(model, tok, ChainSumTask(dial=d)) for d in range(len(DIAL_FORMS))
    ]
    assert all(a > b for a, b in zip(lps, lps[1:])), lps
    assert lps[0] - lps[-1] > 5.0, lps  # several nats between the warm and the coldest form
