"""Train/val/test splits of a task's examples: conventional split files in a directory, sizes as
counts or fractions, and seeded draws that give the same splits on any machine (`Task.splits` uses
these; the trainer's suite uses `subsample`)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TypeVar

from tsallis_rl.errors import ConfigError, DataError

#: an example (tasks.base.Example); the draws never look inside one
T = TypeVar("T")


SPLIT_NAMES = {
    "train": ("train",),
    "val": ("val", "valid", "validation", "dev"),
    "test": ("test",),
}
DATA_SUFFIXES = (".jsonl", ".json")
#: val / test fraction carved from a training file when no size is given
DEFAULT_FRACTION = 0.1


def find_split_files(directory: str | Path) -> dict[str, Path]:
    """Conventional split files in a directory: a `.json`/`.jsonl` file whose name (without the
    suffix) is a split name or starts with it followed by `_`, `-` or `.`: `train`, `val` /
    `valid` / `validation` / `dev`, `test` (e.g. `train.jsonl`, `dev_300.jsonl`,
    `test_500_simplified.json`). Two candidates for one split is an error."""
    directory = Path(directory)
    found: dict[str, Path] = {}
    for f in sorted(directory.iterdir()):
        if not f.is_file() or f.suffix not in DATA_SUFFIXES:
            continue
        stem = f.name[: -len(f.suffix)].lower()
        for split, prefixes in SPLIT_NAMES.items():
            if any(stem == p or stem.startswith((p + "_", p + "-", p + ".")) for p in prefixes):
                if split in found:
                    raise DataError(
                        directory,
                        None,
                        None,
                        f"two {split} files: {found[split].name}, {f.name}; name the file to use"
                        f" (e.g. --data {directory / f.name})",
                    )
                found[split] = f
    return found


def resolve_size(n: int, size: float | int, what: str) -> int:
    """A split size against n examples: a float in [0, 1) is a fraction of n (rounded), an
    integral number >= 0 is a count."""
    if isinstance(size, float) and 0 <= size < 1:
        return int(round(size * n))
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size >= 0:
        if float(size).is_integer():
            return int(size)
    raise ConfigError(f"{what} must be a fraction in [0, 1) or a count >= 0, got {size!r}")


def split_sizes(n: int, val_size: float | int, test_size: float | int) -> tuple[int, int]:
    """Resolve split sizes carved from n examples (see `resolve_size`); train must keep one."""
    v, t = resolve_size(n, val_size, "val_size"), resolve_size(n, test_size, "test_size")
    if v + t >= n and n > 0:
        raise ConfigError(f"val_size {v} + test_size {t} leave no training examples out of {n}")
    return v, t


def subsample(examples: list[T], size: float | int | None, seed: int, salt: str) -> list[T]:
    """At most `size` of `examples` (see `resolve_size`; None = all), chosen by a seeded draw
    that depends only on (seed, salt, len(examples)), returned in file order."""
    if size is None:
        return list(examples)
    n = len(examples)
    cap = resolve_size(n, size, f"{salt}_size")
    if cap >= n:
        return list(examples)
    keep = sorted(random.Random(f"{seed}/{salt}").sample(range(n), cap))
    return [examples[i] for i in keep]


def seeded_split(
    examples: list[T], val_size: float | int, test_size: float | int, seed: int
) -> dict[str, list[T]]:
    """Split one list deterministically: a seeded permutation picks test, then val; each split
    keeps the file order. Same (examples, sizes, seed) -> same splits, on any machine."""
    n_val, n_test = split_sizes(len(examples), val_size, test_size)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    val_idx = set(order[n_test : n_test + n_val])
    out: dict[str, list[T]] = {"train": [], "val": [], "test": []}
    for i, ex in enumerate(examples):
        key = "test" if i in test_idx else "val" if i in val_idx else "train"
        out[key].append(ex)
    return out
