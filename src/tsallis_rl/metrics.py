"""Matching and aggregation: p@1, p@k and m@k from k sampled answers per example.

p@1 = mean single-sample accuracy; p@k = any of the k samples correct; m@k = the majority answer is
correct. Majority is over the task's normalised answers; ties go to the answer that appeared first
among the samples (deterministic, and independent of hash order). Empty answers never win a vote
unless every sample is empty.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any


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
