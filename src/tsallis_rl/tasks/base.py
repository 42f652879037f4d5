"""The task interface: examples, warm/cold prompts, the gold answer to teacher-force, and matching.

A task turns data into `Example`s and says how to talk to the model about them:
  - `build_prompt(ex, regime)`: the user-message content. "warm" = task description + answer-format
    instructions; "cold" = the same content linearised, with no description and no format cue.
  - `target(ex)`: the gold answer string y* that GARL/PAFT teacher-force after `</think>`
    (the trainer appends the tokenizer's end token).
  - `extract_answer(completion)`: the predicted answer in a sampled completion.
  - matching: `exact_match` (training reward), `substring_match` (the relaxed evaluation match,
    never stricter than `exact_match`), `official_metrics` (the benchmark's own metric, e.g.
    EM/F1). Which of them train and evaluate is the match mode (`metrics.MATCH_MODES`:
    "default", or "paper" for the paper's literal definitions).
Tasks are looked up by name from a registry (`get_task`), never by if/elif chains.

This module holds `Task`, `Example` and the task registry; what every task shares lives beside it
and is re-exported here: `reader` (JSON Lines / JSON array files, checked fields), `splits` (split
files, sizes, seeded draws), `templates` (chat template, `<think>`, answer prefix).

Data loading: `load(path, skip_invalid=False)` reads one file through the one shared reader
`iter_records` (JSON Lines or a JSON array, UTF-8 with an optional BOM, no NaN/Infinity); a
malformed file or row raises `DataError` naming the file, line and field (with
`skip_invalid=True` bad rows are skipped and counted in `task.last_skipped`).
`splits(path_or_dir, train_size=, val_size=, test_size=, seed=)` gives the train/val/test
example lists the trainer uses; with a directory of split files the sizes are caps (a seeded
subsample of each file; see `Task.splits` for the rules).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsallis_rl.errors import ConfigError, DataError
from tsallis_rl.tasks.reader import get_field, iter_records
from tsallis_rl.tasks.splits import (
    DATA_SUFFIXES,
    DEFAULT_FRACTION,
    SPLIT_NAMES,
    find_split_files,
    resolve_size,
    seeded_split,
    split_sizes,
    subsample,
)
from tsallis_rl.tasks.templates import (
    THINK_CLOSE,
    THINK_OPEN,
    default_answer_prefix,
    format_for_model,
)

# what task modules and callers import from here (homes: reader, splits, templates, errors)
__all__ = [
    "DATA_SUFFIXES",
    "DEFAULT_FRACTION",
    "REGIMES",
    "SPLIT_NAMES",
    "THINK_CLOSE",
    "THINK_OPEN",
    "ConfigError",
    "DataError",
    "Example",
    "Task",
    "default_answer_prefix",
    "find_split_files",
    "format_for_model",
    "get_field",
    "iter_records",
    "register_task",
    "resolve_size",
    "seeded_split",
    "split_sizes",
    "subsample",
    "text_after_think",
]

REGIMES = ("warm", "cold")


@dataclass
class Example:
    """One (input, gold answer) pair. `answer` is the canonical gold string y*."""

    id: str
    question: str
    answer: str
    context: str = ""
    aliases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def text_after_think(completion: str) -> str:
    """The text after the last `</think>` (the whole completion if there is none), stripped."""
    head, sep, tail = completion.rpartition(THINK_CLOSE)
    return (tail if sep else completion).strip()


class Task:
    """Base class: subclasses set `name` and implement `load`, `build_prompt`, and may override matching."""

    name: str = "task"
    #: whether `load` needs a path (False for generated tasks such as the synthetic default)
    needs_path: bool = True
    #: rows skipped by the last `load(..., skip_invalid=True)`
    last_skipped: int = 0
    #: the evaluation matcher of the default match mode (`metrics.MATCH_MODES`); must accept
    #: every answer `exact_match` (the training reward) accepts
    eval_match: str = "substring"
    #: what a context variant (a task option such as `hotpotqa?context=gold`) dropped from the
    #: benchmark's context, one line ("" = nothing dropped); `data show|stats` and final.json say it
    context_note: str = ""
    #: the `?noise=` option: fraction of training answers corrupted (tasks.noise; 0 = clean)
    noise: float = 0.0

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        raise NotImplementedError

    def splits(
        self,
        path_or_dir: str | Path | None = None,
        *,
        train_size: float | int | None = None,
        val_size: float | int | None = None,
        test_size: float | int | None = None,
        seed: int = 0,
        skip_invalid: bool = False,
    ) -> dict[str, list[Example]]:
        """{"train", "val", "test"} example lists; sizes are counts, or fractions when floats in
        [0, 1); None = the defaults below. Same (data, sizes, seed) -> same splits anywhere.

        - a file: loaded, then split by `seeded_split` (a seeded permutation picks test, then
          val; None = DEFAULT_FRACTION of the file each).
        - a directory: the conventional files of `find_split_files` (train.jsonl, val/dev.jsonl,
          test.jsonl, also with suffixes such as dev_300.jsonl). A train file is required. A
          split with its own file is capped: val_size / test_size is the most examples taken
          from it (a seeded subsample, file order kept; a fraction is of that file; None = the
          whole file), so the paper's sizes can be drawn from larger official files. A missing
          val or test split is carved from train by `seeded_split` (None = DEFAULT_FRACTION).
        - train_size caps the training split the same way (seeded subsample; None = all).
        `self.last_skipped` ends as the total of skipped rows over the files read.
        """
        if path_or_dir is None:
            raise ConfigError(f"task {self.name!r} needs a data file or directory")
        path = Path(path_or_dir)
        if not path.is_dir():
            parts = seeded_split(
                self.load(path, skip_invalid=skip_invalid),
                DEFAULT_FRACTION if val_size is None else val_size,
                DEFAULT_FRACTION if test_size is None else test_size,
                seed,
            )
            parts["train"] = subsample(parts["train"], train_size, seed, "train")
            return parts
        files = find_split_files(path)
        if "train" not in files:
            raise DataError(path, None, None, "no train file (train.jsonl, train_*.json, ...)")
        loaded, skipped = {}, 0
        for split, f in files.items():
            loaded[split] = self.load(f, skip_invalid=skip_invalid)
            skipped += self.last_skipped
        sizes = {"val": val_size, "test": test_size}
        carve = {
            s: 0 if s in loaded else DEFAULT_FRACTION if n is None else n for s, n in sizes.items()
        }
        parts = seeded_split(loaded["train"], carve["val"], carve["test"], seed)
        out = {"train": subsample(parts["train"], train_size, seed, "train")}
        for split in ("val", "test"):
            own = split in loaded
            out[split] = (
                subsample(loaded[split], sizes[split], seed, split) if own else parts[split]
            )
        self.last_skipped = skipped
        return out

    def load_records(
        self,
        path: str | Path,
        parse: Callable[[Any, Path, int], Example | None],
        *,
        skip_invalid: bool = False,
    ) -> list[Example]:
        """Shared loop for file-based tasks: `parse(record, path, line)` returns an Example (or None
        to drop the row silently) and raises DataError on a bad row. Bad rows are raised, or
        skipped and counted in `self.last_skipped` when `skip_invalid`. Ids must be unique."""
        path = Path(path)
        examples: list[Example] = []
        seen: dict[str, int] = {}
        skipped = 0
        for line, rec in iter_records(path):
            try:
                if isinstance(rec, DataError):
                    raise rec
                ex = parse(rec, path, line)
                if ex is not None and ex.id in seen:
                    raise DataError(
                        path, line, "id", f"duplicate id {ex.id!r} (line {seen[ex.id]})"
                    )
            except DataError:
                if not skip_invalid:
                    raise
                skipped += 1
                continue
            if ex is not None:
                ex.meta.setdefault("line", line)
                seen[ex.id] = line
                examples.append(ex)
        self.last_skipped = skipped
        if not examples and not skipped:
            raise DataError(path, None, None, "no examples in file")
        return examples

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        raise NotImplementedError

    def target(self, ex: Example) -> str:
        return ex.answer

    def extract_answer(self, completion: str) -> str:
        return text_after_think(completion)

    def normalize(self, answer: str) -> str:
        """The form used for majority voting and exact match (default: stripped, collapsed spaces)."""
        return " ".join(answer.split())

    def exact_match(self, pred: str, ex: Example) -> bool:
        golds = [ex.answer, *ex.aliases]
        return any(self.normalize(pred) == self.normalize(g) for g in golds)

    def substring_match(self, pred: str, ex: Example) -> bool:
        """Relaxed evaluation match: the exact match, or a normalised gold inside the prediction."""
        golds = [ex.answer, *ex.aliases]
        norm = self.normalize(pred)
        return self.exact_match(pred, ex) or any(
            self.normalize(g) and self.normalize(g) in norm for g in golds
        )

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        return {}

    def answer_kind(self, answer: str) -> str:
        """The form of an answer that label noise keeps: "yesno", "number" or "span"."""
        text = self.normalize(answer).lower().strip(" .")
        if text in ("yes", "no"):
            return "yesno"
        try:
            float(text.replace(",", "").replace("$", "").replace("%", ""))
        except ValueError:
            return "span"
        return "number"

    def noisy_answer(
        self, ex: Example, pool: dict[str, list[str]], rng: random.Random
    ) -> str | None:
        """A wrong gold answer of `ex`'s form for the `?noise=` option (tasks.noise), or None.

        pool: the distinct training answers by `answer_kind`. yes/no flips; otherwise another
        training answer of the same form that neither the training reward (`exact_match`) nor the
        evaluation match (`substring_match`) accepts for `ex`, drawn with `rng`.
        """
        form = self.answer_kind(ex.answer)
        if form == "yesno":
            flipped = "no" if self.normalize(ex.answer).lower().startswith("yes") else "yes"
            return flipped.capitalize() if ex.answer[:1].isupper() else flipped

        def wrong(candidate: str) -> bool:
            return not (self.exact_match(candidate, ex) or self.substring_match(candidate, ex))

        candidates = pool.get(form, [])
        for _ in range(min(64, len(candidates))):  # cheap draws first; a full scan if they miss
            candidate = rng.choice(candidates)
            if wrong(candidate):
                return candidate
        rest = [c for c in candidates if wrong(c)]
        return rng.choice(rest) if rest else None


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: register a Task factory (usually the class) under `name`."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return deco
