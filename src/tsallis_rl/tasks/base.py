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

Data loading: `load(path, skip_invalid=False)` reads one file through the one shared reader
`iter_records` (JSON Lines or a JSON array, UTF-8 with an optional BOM, no NaN/Infinity); a
malformed file or row raises `DataError` naming the file, line and field (with
`skip_invalid=True` bad rows are skipped and counted in `task.last_skipped`).
`splits(path_or_dir, train_size=, val_size=, test_size=, seed=)` gives the train/val/test
example lists the trainer uses; with a directory of split files the sizes are caps (a seeded
subsample of each file; see `Task.splits` for the rules).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsallis_rl.errors import ConfigError, DataError

REGIMES = ("warm", "cold")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


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


# --------------------------------------------------------------------------------------------
# Reading records (JSON array or JSON Lines) with line numbers, and checking fields


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) for every record of a JSON Lines file or a JSON array file.

    The one reader of every file-based task. The text is UTF-8 (a leading BOM is accepted); a
    file that is not names the line of the first bad byte. The format is sniffed from the first
    non-blank character: `[` = one JSON array (each item's line is where the item starts),
    anything else = JSON Lines, split on "\\n" only ("\\r\\n" tolerated; U+2028, U+2029 and U+0085
    are legal inside JSON strings and do not end a line), blank lines skipped. `NaN`, `Infinity`
    and numbers that overflow to infinity are not JSON and are rejected. Bad JSON raises
    DataError with its line; in JSON Lines a bad line is yielded as a DataError instance (so that
    callers can skip it), in an array the whole file is unusable and it is raised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = _read_utf8(path)
    start = len(text) - len(text.lstrip())
    if start < len(text) and text[start] == "[":
        yield from _iter_array(path, text, start)
        return
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            yield lineno, _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            yield lineno, DataError(path, lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})")
        except _NotFinite as exc:
            yield lineno, DataError(path, lineno, None, f"bad JSON: {exc}")


class _NotFinite(ValueError):
    """A NaN / Infinity constant or an overflowing number (Python's json accepts both)."""


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON value (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"number {text} overflows to infinity")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, optional BOM); DataError naming the line of a non-UTF-8 byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            path, line, None, f"not UTF-8 text (byte 0x{bad} at column {column}; save it as UTF-8)"
        ) from None


def _iter_array(path: Path, text: str, start: int) -> Iterator[tuple[int, Any]]:
    decoder = _DECODER
    pos, line, counted = start + 1, 1, 0

    def skip_ws(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, i)
        counted = i
        return line

    pos = skip_ws(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(
                path, exc.lineno, None, f"bad JSON: {exc.msg} (column {exc.colno})"
            ) from None
        except _NotFinite as exc:
            raise DataError(path, line_at(pos), None, f"bad JSON: {exc}") from None
        yield line_at(pos), item
        pos = skip_ws(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_ws(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if text[pos + 1 :].strip():
                raise DataError(path, line_at(pos), None, "bad JSON: extra data after the array")
            return
        raise DataError(path, line_at(min(pos, len(text))), None, "bad JSON: expected ',' or ']'")


def get_field(
    rec: Any,
    name: str,
    types: type | tuple[type, ...],
    path: str | Path,
    line: int | None,
    *,
    nonempty: bool = False,
    default: Any = ...,
) -> Any:
    """`rec[name]`, checked: present (unless a default is given), of `types`, non-empty if asked.

    Dotted names ("qa.question") walk into nested objects. Raises DataError naming the field.
    """
    if not isinstance(rec, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(rec).__name__}")
    cur: Any = rec
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur or cur[part] is None:
            if default is not ...:
                return default
            raise DataError(path, line, name, "missing")
        cur = cur[part]
    if isinstance(cur, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DataError(path, line, name, "expected " + _type_names(types) + ", got bool")
    if not isinstance(cur, types):
        raise DataError(
            path, line, name, f"expected {_type_names(types)}, got {type(cur).__name__}"
        )
    if nonempty and (len(cur) == 0 if not isinstance(cur, str) else not cur.strip()):
        raise DataError(path, line, name, "empty")
    return cur


def _type_names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    names = {
        str: "string",
        int: "integer",
        float: "number",
        list: "list",
        dict: "object",
        bool: "bool",
    }
    return " or ".join(names.get(t, t.__name__) for t in ts)


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
                        directory, None, None, f"two {split} files: {found[split].name}, {f.name}"
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


def subsample(
    examples: list[Example], size: float | int | None, seed: int, salt: str
) -> list[Example]:
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
    examples: list[Example], val_size: float | int, test_size: float | int, seed: int
) -> dict[str, list[Example]]:
    """Split one list deterministically: a seeded permutation picks test, then val; each split
    keeps the file order. Same (examples, sizes, seed) -> same splits, on any machine."""
    n_val, n_test = split_sizes(len(examples), val_size, test_size)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    val_idx = set(order[n_test : n_test + n_val])
    out: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for i, ex in enumerate(examples):
        key = "test" if i in test_idx else "val" if i in val_idx else "train"
        out[key].append(ex)
    return out


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


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: register a Task factory (usually the class) under `name`."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return deco


def format_for_model(content: str, tokenizer: Any = None, *, chat: bool | None = None) -> str:
    """The exact prompt text the model sees: chat template (if any) + an opened `<think>` block.

    With a tokenizer that has a chat template (and chat not False), the content becomes one user
    turn rendered with `add_generation_prompt=True` (Qwen3: `enable_thinking=True`); the template's
    own `<think>` opener is reused when it writes one. Without a template the content is used as
    is. Either way the prompt ends inside an open thinking block, so sampling writes the rationale.
    """
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    text = content
    if use_chat and tokenizer is not None:
        msgs = [{"role": "user", "content": content}]
        try:
            text = tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
        except TypeError:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if text.rstrip().endswith(THINK_OPEN):
        return text
    return text + THINK_OPEN


def default_answer_prefix(tokenizer: Any = None, *, chat: bool | None = None) -> str:
    """Text between `</think>` and the answer when none is set: "\n\n" for chat-template prompts
    (Qwen3's own layout), "" without a template. One rule for the own trainer and the TRL adapter."""
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    return "\n\n" if use_chat else ""
