"""Matching and aggregation: p@1, p@k and m@k from k sampled answers per example.

p@1 = mean single-sample accuracy; p@k = any of the k samples correct; m@k = the majority answer is
correct. Majority is over the task's normalised answers; ties go to the answer that appeared first
among the samples (deterministic, and independent of hash order). Empty answers never win a vote
unless every sample is empty.

Also the benchmarks' own answer metrics, re-implemented from the official rules (see
`../shared/data/SOURCES.md`):
  - `hotpotqa_em_f1(pred, gold)`: `hotpot_evaluate_v1.py` (EM and token F1; F1 = 0 when either
    normalised side is yes/no/noanswer and they differ; note EM("", "") = 1 while F1("", "") = 0).
  - `musique_em_f1(pred, answers)`: MuSiQue `evaluate_v1.0.py` (SQuAD EM/F1, maximum over
    [answer] + aliases; F1 = 1 when both sides normalise to nothing, 0 when only one does).
  - `finqa_numeric_match(pred, gold)`: answer-level numeric comparison for FinQA (not an official
    metric; the rules are in its docstring).

Match modes (`MATCH_MODES`, `get_match_mode(name)`, `--match`): a named pair of matchers, one the
training reward and one the evaluation, applied to the extracted answer.
  - "default": reward = the task's `exact_match`; evaluation = the task's `eval_match` matcher
    (its relaxed `substring_match`, or `exact_match` for chain-sum). Every task's relaxed match
    accepts every answer its exact match accepts, so evaluation is never stricter than training.
  - "paper": the paper's literal definitions, no normalisation, against the gold string y* alone
    (aliases count only in "default"): reward = 1[answer == y*], evaluation = "y* is a substring
    of the answer". Caveat: for chain-sum (short numbers) this
    credits "102" for "02", which is why the default evaluates chain-sum by exact match.
`score_samples` records the mode and both matcher names in its summary.
Per-example records are written as JSON Lines by `io.write_jsonl`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tsallis_rl.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Official EM / F1 (HotpotQA, MuSiQue)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD / HotpotQA / MuSiQue normalisation: lower-case, drop ASCII punctuation, drop the
    words a/an/the, collapse white space (in that order, as the official scripts do)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    common = Counter(pred_toks) & Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def hotpotqa_em_f1(pred: str, gold: str) -> tuple[float, float]:
    """HotpotQA answer EM and F1 for one prediction (`hotpot_evaluate_v1.py` semantics)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    em = float(p == g)
    special = ("yes", "no", "noanswer")
    if (p in special or g in special) and p != g:
        return em, 0.0
    return em, _token_f1(p.split(), g.split())


def squad_em_f1(pred: str, gold: str) -> tuple[float, float]:
    """SQuAD v2 `compute_exact` / `compute_f1` (what MuSiQue's evaluator calls per answer)."""
    p, g = normalize_answer(pred), normalize_answer(gold)
    pt, gt = p.split(), g.split()
    if not pt or not gt:
        return float(p == g), float(pt == gt)
    return float(p == g), _token_f1(pt, gt)


def musique_em_f1(pred: str, answers: Sequence[str]) -> tuple[float, float]:
    """MuSiQue answer EM and F1: each the maximum over the gold `[answer] + answer_aliases`."""
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("musique_em_f1 needs at least one gold answer")
    scores = [squad_em_f1(pred, a) for a in answers]
    return max(s[0] for s in scores), max(s[1] for s in scores)


# --------------------------------------------------------------------------------------------
# FinQA numbers

_NUM = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def parse_number(text: str) -> tuple[float, int, bool] | None:
    """The last number in `text` as (value, decimals written, followed by %), or None.

    Commas, `$` and spaces around are ignored; "(12.5)" is not read as negative."""
    matches = list(_NUM.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    raw = m.group(0).replace(",", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    mant = raw.split("e")[0].split("E")[0]
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    percent = text[m.end() :].lstrip().startswith("%")
    return value, decimals, percent


def finqa_numeric_match(
    pred: str,
    gold: float | str,
    *,
    rel_tol: float = 1e-3,
    percent: bool = True,
) -> bool:
    """Answer-level FinQA match (not official; FinQA's official metric is execution accuracy).

    - yes/no golds: the prediction, lower-cased and stripped of punctuation, equals it.
    - numbers: the last number in `pred` is compared with `gold`, and it matches when either
      (a) both rounded to the smaller number of decimals (that of `pred` as written, at most 5,
          the precision of `exe_ans`) are equal, provided `pred` keeps at least 2 significant
          digits of gold (so "0" never matches 0.3), or
      (b) |pred - gold| <= rel_tol * |gold| (rel_tol=0 turns this off).
      With `percent`, pred/100 and pred*100 are tried too (a "56.2" or "56.2%" for gold 0.56197,
      and "0.562" for gold 56.2); a written `%` always tries pred/100.
    """
    if isinstance(gold, str):
        g = gold.strip().lower()
        if g in ("yes", "no"):
            return pred.strip().lower().strip(string.punctuation + " ") == g
        parsed_gold = parse_number(gold)
        if parsed_gold is None:
            return False
        gold = parsed_gold[0]
    got = parse_number(pred)
    if got is None:
        return False
    value, decimals, has_pct = got
    candidates = [(value, decimals)]
    if percent or has_pct:
        candidates.append((value / 100, decimals + 2))
    if percent:
        candidates.append((value * 100, max(decimals - 2, 0)))
    for v, d in candidates:
        d = min(d, 5)
        if round(v, d) == round(gold, d) and _significant(gold, d) >= 2:
            return True
        if rel_tol > 0 and abs(v - gold) <= rel_tol * abs(gold):
            return True
    return False


def _significant(x: float, decimals: int) -> int:
    """How many significant digits of x survive rounding to `decimals` places."""
    if x == 0:
        return 99
    lead = math.floor(math.log10(abs(x)))  # position of the leading digit
    return lead + decimals + 1


# --------------------------------------------------------------------------------------------
# Aggregation


def majority_answer(answers: Sequence[str], normalize: Callable[[str], str] = str.strip) -> str:
    """The most frequent normalised answer; ties broken by first appearance. Returns the raw sample."""
    if not answers:
        return ""
    keys = [normalize(a) for a in answers]
    counts = Counter(k for k in keys if k)
    if not counts:
        return answers[0]
    best = max(counts.values())
    for a, k in zip(answers, keys):
        if k and counts[k] == best:
            return a
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Match modes: which matcher is the training reward and which the evaluation

#: (task, predicted answer, example) -> correct
Matcher = Callable[[Any, str, Any], bool]


def _gold(task: Any, ex: Any) -> str:
    """The gold answer string y* alone (the task's teacher-forced target; aliases are not y*)."""
    target = getattr(task, "target", None)
    return (target(ex) if callable(target) else ex.answer).strip()


def literal_exact(task: Any, pred: str, ex: Any) -> bool:
    """The paper's reward read literally: R = 1[y-hat = y*] against the gold string alone (no
    aliases: MuSiQue's stay in the default mode), only the surrounding white space stripped."""
    gold = _gold(task, ex)
    return bool(gold) and pred.strip() == gold


def literal_substring(task: Any, pred: str, ex: Any) -> bool:
    """The paper's evaluation read literally: the gold string y* (no alias) is a substring of y-hat."""
    gold = _gold(task, ex)
    return bool(gold) and gold in pred


MATCHERS: dict[str, Matcher] = {
    "exact": lambda task, pred, ex: bool(task.exact_match(pred, ex)),
    "substring": lambda task, pred, ex: bool(task.substring_match(pred, ex)),
    "literal_exact": literal_exact,
    "literal_substring": literal_substring,
}


@dataclass(frozen=True)
class MatchMode:
    """A named pair of matchers (keys of MATCHERS): the training reward and the evaluation.
    `evaluation=None` means the task's own choice, its `eval_match` attribute (default
    "substring"; chain-sum says "exact")."""

    name: str
    description: str
    reward: str
    evaluation: str | None = None

    def reward_name(self, task: Any) -> str:
        return self.reward

    def eval_name(self, task: Any) -> str:
        return self.evaluation or getattr(task, "eval_match", "substring")

    def reward_correct(self, task: Any, pred: str, ex: Any) -> bool:
        """The training reward (1 = correct) of one extracted answer."""
        return MATCHERS[self.reward_name(task)](task, pred, ex)

    def eval_correct(self, task: Any, pred: str, ex: Any) -> bool:
        """Whether one extracted answer counts as correct in evaluation (p@1, p@k, m@k)."""
        return MATCHERS[self.eval_name(task)](task, pred, ex)


MATCH_MODES: dict[str, MatchMode] = {}


def register_match_mode(mode: MatchMode) -> MatchMode:
    """Add a match mode (its matchers must be in MATCHERS)."""
    for name in (mode.reward, mode.evaluation):
        if name is not None and name not in MATCHERS:
            raise ValueError(f"match mode {mode.name!r}: unknown matcher {name!r}")
    MATCH_MODES[mode.name] = mode
    return mode


register_match_mode(
    MatchMode(
        "default",
        "the project's: reward = the task's exact match (normalised as the task documents); "
        "evaluation = the task's relaxed match, which accepts every answer the reward accepts",
        reward="exact",
    )
)
register_match_mode(
    MatchMode(
        "paper",
        "the paper's literal definitions: reward = 1[answer == y*]; evaluation = y* is a "
        "substring of the answer (for chain-sum this credits '102' for '02')",
        reward="literal_exact",
        evaluation="literal_substring",
    )
)


def get_match_mode(name: str) -> MatchMode:
    if name not in MATCH_MODES:
        raise ConfigError(f"unknown match mode {name!r}; known: {', '.join(sorted(MATCH_MODES))}")
    return MATCH_MODES[name]


def resolve_match(task: Any, match: str) -> tuple[str, str]:
    """(reward matcher, evaluation matcher) names for a match mode, or for a bare matcher name
    (then the evaluation uses it, and the reward is the default mode's)."""
    if match in MATCH_MODES:
        mode = MATCH_MODES[match]
        return mode.reward_name(task), mode.eval_name(task)
    if match in MATCHERS:
        return MATCH_MODES["default"].reward_name(task), match
    known = ", ".join([*sorted(MATCH_MODES), *sorted(MATCHERS)])
    raise ConfigError(f"unknown match {match!r}; known: {known}")


# --------------------------------------------------------------------------------------------
# Aggregation of k samples


def score_samples(
    task: Any,
    examples: Sequence[Any],
    samples: Sequence[Sequence[str]],
    *,
    match: str = "default",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Aggregate k sampled answers per example into p@1 / p@k / m@k (+ the task's official metric).

    samples[i]: the k extracted answers for examples[i]. match: a match mode of MATCH_MODES
    ("default", "paper": its evaluation matcher decides) or a matcher name of MATCHERS
    ("substring", "exact", ...). Returns (summary, per-example records); the summary says which
    matching produced its numbers: "match" (as given), "eval_match" and "reward_match" (matcher
    names). Every other summary value is a float.
    """
    if len(samples) != len(examples):
        raise ValueError(f"got {len(samples)} sample lists for {len(examples)} examples")
    reward_name, eval_name = resolve_match(task, match)
    matcher = MATCHERS[eval_name]
    records: list[dict[str, Any]] = []
    totals: dict[str, float] = {}
    k = 0
    for ex, answers in zip(examples, samples):
        k = max(k, len(answers))
        correct = [bool(matcher(task, a, ex)) for a in answers]
        voted = majority_answer(list(answers), task.normalize)
        rec: dict[str, Any] = {
            "id": ex.id,
            "gold": ex.answer,
            "answers": list(answers),
            "correct": correct,
            "majority": voted,
            "p@1": sum(correct) / max(len(correct), 1),
            "p@k": float(any(correct)),
            "m@k": float(bool(answers) and matcher(task, voted, ex)),
        }
        official = task.official_metrics(voted, ex) if answers else {}
        for name, value in official.items():
            rec[f"maj_{name}"] = float(value)
        records.append(rec)
        for key in ("p@1", "p@k", "m@k", *(f"maj_{n}" for n in official)):
            totals[key] = totals.get(key, 0.0) + rec[key]
    n = max(len(records), 1)
    summary: dict[str, Any] = {
        key.replace("@k", f"@{k}"): value / n for key, value in totals.items()
    }
    summary["n"] = float(len(records))
    summary.update(match=match, eval_match=eval_name, reward_match=reward_name)
    return summary, records


def contains_words(
    pred: str, gold: str, normalize: Callable[[str], str] = normalize_answer
) -> bool:
    """The relaxed substring match of the paper for text answers: normalised `gold` occurs in
    normalised `pred` on word boundaries ("no" is in "no it is not", not in "nobody").
    An empty normalised gold never matches."""
    g, p = normalize(gold), normalize(pred)
    return bool(g) and f" {g} " in f" {p} "


_DECIMAL_TOKEN = re.compile(r"(?<![\d.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?!\d)")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_CURRENCY = re.compile(r"(?<![\d.])([-+]?)\$\s*(?=[\d.])")
_ROUNDINGS = (ROUND_HALF_UP, ROUND_HALF_EVEN)


def contains_number(
    pred: str, gold: str, *, decimals: int | None = None, min_significant: int | None = None
) -> bool:
    """The relaxed match for numeric answers: some number written in `pred` (thousands commas
    and a `$` allowed) equals the number `gold` in value ("94" is in "= 94." and "94.0", not in "1940" or
    "94.5"; "1940" is in "1,940"). A gold that is a word (yes/no) is matched as a whole word,
    any other non-numeric gold as literal text not inside a longer number.

    - decimals: gold is a value rounded to this many places, so a number written with more
      decimals matches when it rounds to gold ("0.561974" for "0.56197" at 5).
    - min_significant: a number written with fewer decimals than gold matches when gold rounds
      to it (half-up or half-even) keeping at least this many significant digits ("0.562" for
      "0.56197" at 3; "0.6" does not).
    """
    g = gold.strip()
    if not g:
        return False
    if g.isalpha():
        return re.search(r"\b" + re.escape(g) + r"\b", pred, flags=re.IGNORECASE) is not None
    text = _CURRENCY.sub(r"\1", _THOUSANDS_COMMA.sub("", pred))
    target = _decimal(g.replace(",", ""))
    if target is None or not _DECIMAL_TOKEN.fullmatch(g.replace(",", "")):
        pattern = r"(?<![\d.])" + re.escape(g) + r"(?!\d|\.\d)"
        return re.search(pattern, pred.replace(",", "")) is not None
    gold_places = max(-target.as_tuple().exponent, 0)  # type: ignore[operator]
    for m in _DECIMAL_TOKEN.finditer(text):
        value = _decimal(m.group(0))
        if value is None:
            continue
        if value == target:
            return True
        written = len(m.group(0).partition(".")[2])
        if decimals is not None and written > decimals and _rounds_to(value, decimals, target):
            return True
        if (
            min_significant is not None
            and written < gold_places
            and target != 0
            and target.adjusted() + 1 + written >= min_significant
            and _rounds_to(target, written, value)
        ):
            return True
    return False


def _decimal(text: str) -> Decimal | None:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _rounds_to(value: Decimal, places: int, target: Decimal) -> bool:
    """Whether `value` rounded to `places` decimals (half-up or half-even) equals `target`."""
    quantum = Decimal(1).scaleb(-places)
    return any(value.quantize(quantum, rounding=r) == target for r in _ROUNDINGS)
