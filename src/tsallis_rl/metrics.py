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
`write_records(path, records)` writes per-example records as JSON Lines.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

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


def score_samples(
    task: Any,
    examples: Sequence[Any],
    samples: Sequence[Sequence[str]],
    *,
    match: str = "substring",
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Aggregate k sampled answers per example into p@1 / p@k / m@k (+ the task's official metric).

    samples[i]: the k extracted answers for examples[i]. match: "substring" (the paper's evaluation)
    or "exact" (the training reward). Returns (summary, per-example records).
    """
    if len(samples) != len(examples):
        raise ValueError(f"got {len(samples)} sample lists for {len(examples)} examples")
    matcher = task.substring_match if match == "substring" else task.exact_match
    records: list[dict[str, Any]] = []
    totals: dict[str, float] = {}
    k = 0
    for ex, answers in zip(examples, samples):
        k = max(k, len(answers))
        correct = [bool(matcher(a, ex)) for a in answers]
        voted = majority_answer(list(answers), task.normalize)
        rec: dict[str, Any] = {
            "id": ex.id,
            "gold": ex.answer,
            "answers": list(answers),
            "correct": correct,
            "majority": voted,
            "p@1": sum(correct) / max(len(correct), 1),
            "p@k": float(any(correct)),
            "m@k": float(bool(answers) and matcher(voted, ex)),
        }
        official = task.official_metrics(voted, ex) if answers else {}
        for name, value in official.items():
            rec[f"maj_{name}"] = float(value)
        records.append(rec)
        for key in ("p@1", "p@k", "m@k", *(f"maj_{n}" for n in official)):
            totals[key] = totals.get(key, 0.0) + rec[key]
    n = max(len(records), 1)
    summary = {key.replace("@k", f"@{k}"): value / n for key, value in totals.items()}
    summary["n"] = float(len(records))
    return summary, records


def write_records(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write per-example records (e.g. from `score_samples`) as JSON Lines, one object a line.

    Parent directories are created; the file is written to a temporary name and renamed, so a
    reader never sees half a file. Values must be JSON-serialisable (floats, strings, lists)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)
    return path


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read back a JSON Lines file written by `write_records`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def contains_words(
    pred: str, gold: str, normalize: Callable[[str], str] = normalize_answer
) -> bool:
    """The relaxed substring match of the paper for text answers: normalised `gold` occurs in
    normalised `pred` on word boundaries ("no" is in "no it is not", not in "nobody").
    An empty normalised gold never matches."""
    g, p = normalize(gold), normalize(pred)
    return bool(g) and f" {g} " in f" {p} "


def contains_number(pred: str, gold: str) -> bool:
    """The relaxed substring match for numeric answers: `gold` occurs in `pred` (thousands commas
    removed) and is not part of a longer number ("94" is in "= 94.", not in "1940" or "94.5")."""
    g, p = gold.strip(), pred.replace(",", "")
    if not g:
        return False
    pattern = r"(?<![\d.])" + re.escape(g) + r"(?!\d|\.\d)"
    if g.isalpha():
        pattern = r"\b" + re.escape(g) + r"\b"
        return re.search(pattern, p, flags=re.IGNORECASE) is not None
    return re.search(pattern, p) is not None
