"""Matching: the evaluation match is never stricter than the training reward (over the shipped data
and hand-written fixtures), FinQA's answer form and lower-precision rule, and the match modes."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tsallis_rl.config import ConfigError, TrainConfig
from tsallis_rl.metrics import (
    MATCH_MODES,
    MATCHERS,
    contains_number,
    get_match_mode,
    normalize_answer,
    resolve_match,
    score_samples,
)
from tsallis_rl.tasks import Example, Task, get_task
from tsallis_rl.tasks.finqa import answer_format, canonical_answer

FIX = Path(__file__).parent / "fixtures" / "tasks"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

SOURCES = [
    ("finqa", SHARED / "finqa" / "dev_200.json"),
    ("finqa", SHARED / "finqa" / "train_100.json"),
    ("finqa", SHARED / "finqa" / "test_500_simplified.json"),
    ("hotpotqa", SHARED / "hotpotqa" / "train_300.jsonl"),
    ("hotpotqa", SHARED / "hotpotqa" / "dev_300.jsonl"),
    ("hotpotqa", SHARED / "hotpotqa" / "test_500.jsonl"),
    ("musique", SHARED / "musique" / "dev_200_with_paragraphs.jsonl"),
    ("musique", SHARED / "musique" / "dev_2417_labels_only.json"),
    ("finqa", FIX / "finqa_answers.json"),
    ("finqa", FIX / "finqa_official.json"),
    ("finqa", FIX / "finqa_simplified.json"),
    ("hotpotqa", FIX / "hotpotqa_hf.jsonl"),
    ("musique", FIX / "musique.jsonl"),
    ("jsonl", FIX / "user.jsonl"),
    ("jsonl", FIX / "qa_answers.jsonl"),
]
TRICKY_QA = ["U.S.", "The Beatles", "the", "...", "Don't Stop!", "1,000", "No", "A. B. Smith"]


def numeric_variants(y: str, decimals: int) -> set[str]:
    """Ways to write the number y* that a lenient reader would accept."""
    out = {y, f" {y} ", f"{y}.", f"${y}", f"+{y}", f"{y}0" if "." in y else f"{y}.0"}
    out.add(f"{y}00" if "." in y else f"{y}.00")
    d = Decimal(y)
    if abs(d) >= 1000:
        out |= {f"{d:,}", f"{d:,}".replace(",", " ")}  # thousands separators
    if y.startswith("-"):
        out.add(f"-${y[1:]}")
    if y.startswith(("0.", "-0.")):
        out.add(y.replace("0.", ".", 1))
    places = len(y.partition(".")[2])
    out.add(y + ("" if "." in y else ".") + "0" * (decimals - places) + "4")  # rounds to y*
    return out


def text_variants(y: str) -> set[str]:
    """Case, article, punctuation and white-space variants of a text answer."""
    return {
        y,
        y.upper(),
        y.lower(),
        y.title(),
        f"the {y}",
        f"The {y}.",
        f"{y}!",
        f'"{y}"',
        f"  {y}  ",
        " ".join(y.split()).replace(" ", "  "),
        y.replace(".", ""),
        y.replace(",", ""),
    }


def variants(task, ex: Example) -> set[str]:
    out: set[str] = set()
    for gold in [ex.answer, *ex.aliases]:
        out |= text_variants(gold)
        try:
            Decimal(gold.replace(",", ""))
        except ArithmeticError:
            continue
        out |= numeric_variants(gold.replace(",", ""), getattr(task, "decimals", 5))
    return out


def qa_examples(task_name: str) -> list[Example]:
    return [Example(id=f"t{i}", question="q?", answer=a) for i, a in enumerate(TRICKY_QA)]


def check_never_stricter(task, examples: list[Example], sentences: bool = True) -> int:
    """Assert that every reward-accepted variant is accepted by evaluation (and, with
    `sentences`, the default evaluation finds it inside a sentence); return how many."""
    default, paper = MATCH_MODES["default"], MATCH_MODES["paper"]
    accepted = 0
    for ex in examples:
        assert default.reward_correct(task, task.target(ex), ex), (ex.id, ex.answer)
        for v in variants(task, ex):
            for mode in (default, paper):
                if mode.reward_correct(task, v, ex):
                    accepted += 1
                    assert mode.eval_correct(task, v, ex), (mode.name, ex.id, ex.answer, v)
                    # inside a sentence too, unless SQuAD normalisation erases the gold ("A")
                    # or the number has spaces for thousands separators ("1 940")
                    numeric_spaces = " " in v.strip() and any(c.isdigit() for c in v)
                    if (
                        sentences
                        and mode is default
                        and task.eval_match == "substring"
                        and normalize_answer(ex.answer)
                        and not numeric_spaces
                    ):
                        sentence = f"So the answer is {v}."
                        assert mode.eval_correct(task, sentence, ex), (ex.answer, sentence)
    return accepted


@pytest.mark.parametrize("task_name, path", SOURCES, ids=lambda x: getattr(x, "name", x))
def test_evaluation_accepts_every_answer_the_reward_accepts(task_name, path):
    if not path.exists():
        pytest.skip(f"{path} not present")
    task = get_task(task_name)
    examples = task.load(path)
    accepted = check_never_stricter(task, examples)
    assert accepted >= 3 * len(examples)  # the variants are not all rejected by the reward


@pytest.mark.parametrize("task_name", ["hotpotqa", "musique", "jsonl"])
def test_evaluation_accepts_every_answer_the_reward_accepts_for_tricky_text_golds(task_name):
    task = get_task(task_name)
    assert check_never_stricter(task, qa_examples(task_name)) > 0


def test_evaluation_accepts_every_answer_the_reward_accepts_for_chainsum():
    task = get_task("chainsum")
    assert check_never_stricter(task, task.load(n=50)) > 0


def finqa_example(value: float | str, decimals: int = 5) -> Example:
    return Example(id="x", question="q?", answer=canonical_answer(value, decimals), context="c")


@pytest.mark.parametrize(
    "pred, gold, evaluated, rewarded",
    [
        ("0.5620", 0.562, True, True),  # trailing zero
        ("1940.0", 1940, True, True),  # a decimal point on an integer
        ("0.562", 0.56197, True, False),  # lower precision, 3 significant digits
        ("0.6", 0.56197, False, False),  # lower precision, 1 significant digit
        ("0.56", 0.56197, False, False),  # 2 significant digits are not enough
        ("1940", 94, False, False),  # not part of a longer number
        ("94.5", 94, False, False),
    ],
)
def test_finqa_pairs(pred, gold, evaluated, rewarded):
    task, ex = get_task("finqa"), finqa_example(gold)
    assert task.substring_match(pred, ex) is evaluated
    assert task.substring_match(f"The result is {pred}.", ex) is evaluated
    assert task.exact_match(pred, ex) is rewarded


def test_contains_number_lower_precision_rule_needs_min_significant():
    assert not contains_number("0.562", "0.56197")  # off unless asked for
    assert contains_number("0.562", "0.56197", min_significant=3)
    assert contains_number("1.000", "0.99996", min_significant=3)  # rounds up across a digit
    assert not contains_number("1", "0.99996", min_significant=3)
    assert contains_number("0.561974", "0.56197", decimals=5)
    assert not contains_number("0.561974", "0.56197")


@pytest.mark.parametrize("decimals", [0, 1, 2, 5])
def test_finqa_warm_prompt_states_the_form_the_reward_checks(decimals):
    task = get_task("finqa", decimals=decimals)
    path = SHARED / "finqa" / "dev_200.json"
    examples = task.load(path if path.exists() else FIX / "finqa_answers.json")
    fmt = answer_format(decimals)
    assert "at most" not in fmt
    for ex in examples:
        prompt = task.build_prompt(ex, "warm")
        assert fmt in prompt
        y = task.target(ex)
        if y in ("yes", "no"):
            continue
        whole, _, frac = y.lstrip("-").partition(".")
        assert whole.isdigit() and len(frac) <= decimals and not frac.endswith("0")
    # every example form the prompt shows is itself a canonical y*, accepted verbatim
    shown = fmt.split("(e.g. ")[1].split(")")[0].split(", ")
    for form in shown:
        assert task.exact_match(form, Example(id="e", question="q", answer=form))
        assert canonical_answer(float(form), decimals) == form


def test_paper_mode_uses_the_literal_definitions():
    finqa, ex = get_task("finqa"), finqa_example(0.56197)
    paper = get_match_mode("paper")
    assert paper.reward_correct(finqa, "0.56197", ex)
    assert not paper.reward_correct(finqa, "0.561970", ex)  # literal: no numeric reading
    assert paper.eval_correct(finqa, "x0.56197y", ex)  # literal substring
    assert not paper.eval_correct(finqa, "0.562", ex)
    chain = get_task("chainsum")
    ex = Example(id="c", question="1 1", answer="02")
    # the caveat: the literal substring rule credits '102' for '02'; the default does not
    assert paper.eval_correct(chain, "102", ex)
    assert not get_match_mode("default").eval_correct(chain, "102", ex)


def test_score_samples_records_which_matching_produced_its_numbers():
    task = get_task("finqa")
    examples = [finqa_example(0.56197)]
    samples = [["0.562", "0.56197", "7"]]
    summary, _ = score_samples(task, examples, samples)
    assert summary["match"] == "default"
    assert (summary["reward_match"], summary["eval_match"]) == ("exact", "substring")
    assert summary["p@1"] == pytest.approx(2 / 3)
    paper, _ = score_samples(task, examples, samples, match="paper")
    assert (paper["reward_match"], paper["eval_match"]) == ("literal_exact", "literal_substring")
    assert paper["p@1"] == pytest.approx(1 / 3)
    legacy, _ = score_samples(task, examples, samples, match="exact")
    assert (legacy["match"], legacy["eval_match"], legacy["p@1"]) == ("exact", "exact", 1 / 3)
    chain, _ = score_samples(get_task("chainsum"), [Example("c", "1 1", "02")], [["102"]])
    assert chain["eval_match"] == "exact" and chain["p@1"] == 0.0
    with pytest.raises(ValueError, match="unknown match"):
        score_samples(task, examples, samples, match="nope")


def test_match_modes_and_the_config_choices_agree():
    field = TrainConfig.__dataclass_fields__["match"]
    assert tuple(field.metadata["choices"]) == tuple(MATCH_MODES)
    assert TrainConfig().match == "default"
    for mode in MATCH_MODES.values():
        assert mode.reward in MATCHERS and (mode.evaluation is None or mode.evaluation in MATCHERS)
    assert resolve_match(get_task("hotpotqa"), "paper") == ("literal_exact", "literal_substring")
    with pytest.raises(ConfigError, match="match"):
        TrainConfig(match="bogus").validate()


def test_a_task_that_loosens_its_reward_keeps_evaluation_at_least_as_loose():
    class CaseFree(Task):
        name = "casefree"

        def exact_match(self, pred: str, ex: Example) -> bool:
            return pred.strip().lower() == ex.answer.lower()

    task, ex = CaseFree(), Example(id="p", question="q?", answer="Paris")
    assert task.exact_match("PARIS", ex)
    assert check_never_stricter(task, [ex], sentences=False) > 0


def test_paper_mode_scores_against_the_gold_string_alone_not_its_aliases():
    """Issue 22 item 4: the paper (section 7.1) matches the gold answer string; MuSiQue's aliases
    count in the default mode only."""
    task = get_task("musique")
    ex = Example(id="m", question="q", answer="Mu County", aliases=["Mu"])
    paper, default = get_match_mode("paper"), get_match_mode("default")
    assert paper.reward_correct(task, "Mu County", ex) and paper.eval_correct(
        task, "in Mu County", ex
    )
    assert not paper.reward_correct(task, "Mu", ex)
    assert not paper.eval_correct(task, "Mu", ex)
    assert default.reward_correct(task, "Mu", ex)  # the alias still counts there
