"""Label noise as a task option: `<task>?noise=EPS` corrupts a seeded fraction of the TRAINING answers.

    get_task("chainsum?noise=0.2")            # 20% of chain-sum's training sums are wrong
    get_task("hotpotqa?context=gold&noise=0.4")

A fraction `eps` (0 <= eps < 1; round(eps * n) of the n training examples) gets a wrong gold answer
of the same form, drawn by the task's `noisy_answer`: chain-sum another sum with the same number of
digits (never the true one), file tasks another training example's answer of the same form
(`Task.answer_kind`: yes/no stays yes/no, a number a number, a span a span) that the task's
matching does not accept for the example. Which examples and which wrong answers depend only on the
run seed and eps (`noise_rng`), never on the step, so they are fixed for the run. Validation and
test are never touched. A corrupted example keeps its clean answer in `meta["noise"]` (with the
noisy one) so that studies can measure both; its aliases (of the clean answer) are dropped so that
no reward still accepts the clean answer. `noise_records` lists them for the run's noise.jsonl.

Why here: every task builds its splits through its own `splits`; the option wraps that one method
(`with_noise`), so every task (file, generated, reasoning-gym) gets the same corruption rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from typing import Any

from tsallis_rl.errors import ConfigError
from tsallis_rl.tasks.base import Example, Task

OPTION = "noise"


def parse_noise(value: Any, where: str = "") -> float:
    """The noise option's value as a float in [0, 1); ConfigError naming the option otherwise."""
    prefix = f"task {where!r}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{prefix}option noise must be a number in [0, 1), got {value!r}")
    try:
        eps = float(value)
    except ValueError:
        raise ConfigError(
            f"{prefix}option noise must be a number in [0, 1), got {value!r}"
        ) from None
    if not math.isfinite(eps) or not 0.0 <= eps < 1.0:
        raise ConfigError(f"{prefix}option noise must be a number in [0, 1), got {value!r}")
    return eps


def take_noise_option(name: str, options: dict[str, Any]) -> tuple[str, float | None]:
    """(task name without its `noise=` option, eps or None). The option may sit in the name's query
    ("chainsum?dial=3&noise=0.2") or in `options` (which loses it); validated by `parse_noise`."""
    eps = None
    if OPTION in options:
        eps = parse_noise(options.pop(OPTION), name)
    head, qmark, query = name.partition("?")
    if not qmark:
        return name, eps
    kept = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq and key.strip() == OPTION:
            eps = parse_noise(value.strip(), name)
        elif part:
            kept.append(part)
    return (head + "?" + "&".join(kept) if kept else head), eps


def noise_rng(seed: int, eps: float) -> random.Random:
    """The one generator of a run's corruption: seeded by the run seed and the option's value."""
    return random.Random(f"noise:{int(seed)}:{eps!r}")


def corrupt(task: Task, train: list[Example], eps: float, seed: int) -> list[Example]:
    """`train` with round(eps * n) seeded examples given a wrong answer of the same form (copies;
    the input list and its examples are not changed). See the module docstring for the rule."""
    n_bad = int(round(eps * len(train)))
    if n_bad == 0:
        return list(train)
    rng = noise_rng(seed, eps)
    chosen = sorted(rng.sample(range(len(train)), n_bad))
    by_form: dict[str, list[str]] = {}
    for ex in train:
        by_form.setdefault(task.answer_kind(ex.answer), []).append(ex.answer)
    pool = {form: sorted(set(answers)) for form, answers in by_form.items()}
    out = list(train)
    for i in chosen:
        ex = train[i]
        noisy = task.noisy_answer(ex, pool, rng)
        if noisy is None:
            raise ConfigError(
                f"task {task.name!r}: option noise: no wrong answer of the same form as "
                f"{ex.answer!r} (example {ex.id!r}) among the training answers"
            )
        meta = {**ex.meta, "noise": {"clean": ex.answer, "noisy": noisy, "aliases": ex.aliases}}
        out[i] = dataclasses.replace(ex, answer=noisy, aliases=[], meta=meta)
    return out


def with_noise(task: Task, eps: float) -> Task:
    """`task` whose `splits` corrupts the training split (`corrupt`, seeded by the splits' seed);
    val and test are returned untouched. Sets `task.noise = eps`. The wrapper keeps the signature
    of the task's own `splits` (callers inspect which sizes it takes)."""
    original = task.splits

    @functools.wraps(original)
    def splits(*args: Any, **kwargs: Any) -> dict[str, list[Example]]:
        parts = original(*args, **kwargs)
        seed = kwargs.get("seed")
        seed = getattr(task, "seed", 0) if seed is None else seed
        return {**parts, "train": corrupt(task, parts["train"], eps, int(seed or 0))}

    task.splits = splits  # type: ignore[method-assign]
    task.noise = eps
    return task


def is_noisy(ex: Example) -> bool:
    """Whether `ex` is a corrupted training example (its clean answer in meta["noise"])."""
    return "noise" in ex.meta


def noise_records(train: list[Example]) -> list[dict[str, Any]]:
    """One record per corrupted training example: its index in the split, id, clean and noisy answers."""
    return [
        {"index": i, "id": ex.id, "clean": ex.meta["noise"]["clean"], "noisy": ex.answer}
        for i, ex in enumerate(train)
        if is_noisy(ex)
    ]


def clean_example(ex: Example) -> Example:
    """The clean version of a (possibly corrupted) example: its true answer and aliases back."""
    if not is_noisy(ex):
        return ex
    info = ex.meta["noise"]
    meta = {k: v for k, v in ex.meta.items() if k != "noise"}
    return dataclasses.replace(ex, answer=info["clean"], aliases=list(info["aliases"]), meta=meta)
