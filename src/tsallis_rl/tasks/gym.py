"""reasoning-gym tasks (the `[gym]` extra): procedurally generated problems with their own scorers.

Names: `rg:<dataset>?<key>=<value>&...`, e.g. `rg:chain_sum?min_terms=3&max_digits=4`; the keys go
to the reasoning-gym dataset's config (values read as YAML scalars: 3, 0.5, true, [1, 2], text).
`seed` and `size` belong to this task, not the spec: pass them as options,
`get_task("rg:chain_sum", seed=0, train_size=1000, val_size=200, test_size=200)` (the defaults).

Generation (deterministic, no files): each split has its own reasoning-gym seed, derived from
(spec, seed, split) by a seeded hash, so the splits draw from unrelated streams. Test is made
first, then val without any test question, then train without any val or test question
(duplicates inside a split are dropped too), so the test set depends only on (spec, seed,
test_size) and never changes when train_size does.
  - `task.load(split="train", n=None, seed=None)`: one split (n defaults to the option for it).
  - `task.splits(val_size=, test_size=, seed=)`: all three; ints are counts, floats in [0, 1) are
    fractions of train_size. A path argument is an error: these tasks are generated.

Prompts: warm = our task description + the generated question + an answer-format line; cold =
the generated question alone (reasoning-gym's own wording is the content and stays; for a
really cold task use the synthetic default). y* = the dataset's `answer`.

Matching: success = the dataset's `score_answer(pred, entry) >= 1.0`; a scorer that raises
scores 0 (never crashes training). `exact_match` = success (training reward); `substring_match` =
success or the gold found in the prediction (as a whole number for numeric golds);
`official_metrics` = {"score": the scorer's value}.
"""

from __future__ import annotations

import hashlib
import importlib
import math
from pathlib import Path
from typing import Any

import yaml

from tsallis_rl.errors import ConfigError
from tsallis_rl.metrics import contains_number
from tsallis_rl.tasks.base import Example, Task, register_task

WARM_INSTRUCTION = (
    "Solve the problem below. Think it through step by step, then reply with only the final answer."
)
WARM_FORMAT = "Answer format: the final answer alone, with no explanation."
SPLITS = ("train", "val", "test")
RESERVED = ("seed", "size")


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """ "chain_sum?min_terms=3&max_digits=4" -> ("chain_sum", {"min_terms": 3, "max_digits": 4})."""
    name, _, query = spec.partition("?")
    name = name.strip()
    if not name:
        raise ConfigError(f"empty reasoning-gym dataset name in {spec!r}")
    config: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"bad reasoning-gym option {part!r} in {spec!r}; expected key=value")
        if key in RESERVED:
            raise ConfigError(
                f"{key!r} is set by the task, not the spec: get_task(name, {key}=...) "
                "(seed, train_size, val_size, test_size)"
            )
        try:
            config[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            config[key] = value
    return name, config


def _split_seed(spec: str, seed: int, split: str) -> int:
    digest = hashlib.sha256(f"{spec}|{seed}|{split}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x3FFFFFFF


def _reasoning_gym() -> Any:
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as exc:
        raise ImportError("rg: tasks need reasoning-gym: pip install 'tsallis-rl[gym]'") from exc


class GymTask(Task):
    """One reasoning-gym dataset configuration; see the module docstring."""

    needs_path = False

    def __init__(
        self,
        spec: str,
        *,
        seed: int = 0,
        train_size: int = 1000,
        val_size: int = 200,
        test_size: int = 200,
    ):
        self.dataset_name, self.config = parse_spec(spec)
        self.spec = spec
        self.name = f"rg:{spec}"
        self.seed = int(seed)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        if any(v < 0 for v in self.sizes.values()) or self.sizes["train"] < 1:
            raise ConfigError(f"bad sizes {self.sizes}: train_size >= 1, val/test sizes >= 0")
        self._scorer: Any = None
        self._make(seed=0, size=1)  # fail early on an unknown dataset or a bad config

    def _make(self, *, seed: int, size: int) -> Any:
        rg = _reasoning_gym()
        try:
            ds = rg.create_dataset(self.dataset_name, seed=seed, size=size, **self.config)
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            raise ConfigError(f"reasoning-gym {self.spec!r}: {exc}") from None
        if self._scorer is None:
            self._scorer = ds
        return ds

    def _generate(self, split: str, n: int, seed: int, exclude: set[str]) -> list[Example]:
        if n <= 0:
            return []
        split_seed = _split_seed(self.spec, seed, split)
        budget = 4 * n + 100  # tries before giving up on unique questions
        ds = self._make(seed=split_seed, size=budget)
        out: list[Example] = []
        seen = set(exclude)
        for idx in range(budget):
            entry = ds[idx]
            q = entry["question"]
            if q in seen:
                continue
            seen.add(q)
            out.append(
                Example(
                    id=f"rg:{self.dataset_name}/{split}/{seed}/{idx}",
                    question=str(q).strip(),
                    answer=str(entry["answer"]).strip(),
                    meta={"rg_entry": entry, "split": split, "seed": seed},
                )
            )
            if len(out) == n:
                return out
        raise ConfigError(
            f"reasoning-gym {self.spec!r}: only {len(out)} distinct {split} questions out of "
            f"{budget} tries (wanted {n}); ask for fewer or widen the config"
        )

    def _all(self, sizes: dict[str, int], seed: int) -> dict[str, list[Example]]:
        out: dict[str, list[Example]] = {}
        used: set[str] = set()
        for split in ("test", "val", "train"):
            out[split] = self._generate(split, sizes[split], seed, used)
            used.update(ex.question for ex in out[split])
        return {s: out[s] for s in SPLITS}

    def load(
        self,
        path: str | Path | None = None,
        *,
        skip_invalid: bool = False,
        split: str = "train",
        n: int | None = None,
        seed: int | None = None,
    ) -> list[Example]:
        """Generate one split (`n` examples; default the task's size for that split)."""
        if path is not None:
            raise ConfigError(f"{self.name} is generated; it takes no data path")
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
        self.last_skipped = 0
        sizes = dict(self.sizes)
        if n is not None:
            sizes[split] = int(n)
        seed = self.seed if seed is None else int(seed)
        used: set[str] = set()
        for s in ("test", "val", "train"):
            if s == split:
                return self._generate(s, sizes[s], seed, used)
            used.update(ex.question for ex in self._generate(s, sizes[s], seed, used))
        raise AssertionError("unreachable")

    def splits(
        self,
        path_or_dir: str | Path | None = None,
        *,
        val_size: float | int | None = None,
        test_size: float | int | None = None,
        seed: int | None = None,
        skip_invalid: bool = False,
    ) -> dict[str, list[Example]]:
        if path_or_dir is not None:
            raise ConfigError(f"{self.name} is generated; it takes no data path")
        n = self.sizes["train"]

        def resolve(size: float | int | None, split: str) -> int:
            if size is None:
                return self.sizes[split]
            if isinstance(size, float) and 0 <= size < 1:
                return int(round(size * n))
            if isinstance(size, (int, float)) and size >= 0 and float(size).is_integer():
                return int(size)
            raise ConfigError(f"{split}_size must be a fraction in [0, 1) or a count, got {size!r}")

        nv, nt = resolve(val_size, "val"), resolve(test_size, "test")
        self.last_skipped = 0
        seed = self.seed if seed is None else int(seed)
        return self._all({"train": n, "val": nv, "test": nt}, seed)

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return ex.question
        if regime != "warm":
            raise ConfigError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        return f"{WARM_INSTRUCTION}\n\n{ex.question}\n\n{WARM_FORMAT}"

    def instruction_texts(self) -> list[str]:
        """The warm-only instruction strings (cold prompts must contain none of them)."""
        return [WARM_INSTRUCTION, WARM_FORMAT]

    def score(self, pred: str, ex: Example) -> float:
        """The dataset's own score in [0, 1]; 0.0 when the scorer raises or returns junk."""
        entry = ex.meta.get("rg_entry") or {"question": ex.question, "answer": ex.answer}
        try:
            scorer = self._scorer or self._make(seed=0, size=1)
            value = float(scorer.score_answer(answer=pred, entry=entry))
        except Exception:  # noqa: BLE001 - third-party scorers may raise anything
            return 0.0
        return value if math.isfinite(value) else 0.0

    def exact_match(self, pred: str, ex: Example) -> bool:
        return self.score(pred, ex) >= 1.0

    def substring_match(self, pred: str, ex: Example) -> bool:
        if self.exact_match(pred, ex):
            return True
        gold = ex.answer.strip()
        if not gold:
            return False
        try:
            float(gold)
        except ValueError:
            return gold in pred
        return contains_number(pred, gold)

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        return {"score": self.score(pred, ex)}


@register_task("rg:")
def make_gym_task(spec: str, **options: Any) -> GymTask:
    """Factory behind `get_task("rg:<dataset>?<key>=<value>&...", **options)`."""
    return GymTask(spec, **options)
