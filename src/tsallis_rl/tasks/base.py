"""The task interface: examples, warm/cold prompts, the gold answer to teacher-force, and matching.

A task turns data into `Example`s and says how to talk to the model about them:
  - `build_prompt(ex, regime)`: the user-message content. "warm" = task description + answer-format
    instructions; "cold" = the same content linearised, with no description and no format cue.
  - `target(ex)`: the gold answer string y* that GARL/PAFT teacher-force after `</think>`
    (the trainer appends the tokenizer's end token).
  - `extract_answer(completion)`: the predicted answer in a sampled completion.
  - matching: `exact_match` (training reward), `substring_match` (the paper's evaluation),
    `official_metrics` (the benchmark's own metric, e.g. EM/F1).
Tasks are looked up by name from a registry (`get_task`), never by if/elif chains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGIMES = ("warm", "cold")
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class DataError(ValueError):
    """Malformed input data; the message names the file, line and field at fault."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, why: str):
        where = str(path) + (f", line {line}" if line is not None else "")
        what = f", field {field_name!r}" if field_name else ""
        super().__init__(f"{where}{what}: {why}")
        self.path, self.line, self.field, self.why = str(path), line, field_name, why


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

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        raise NotImplementedError

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
        golds = [ex.answer, *ex.aliases]
        return any(self.normalize(g) and self.normalize(g) in self.normalize(pred) for g in golds)

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        return {}


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: register a Task factory (usually the class) under `name`."""

    def deco(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return deco


def get_task(name: str, **options: Any) -> Task:
    """The task registered under `name`; "rg:<spec>" goes to the reasoning-gym factory."""
    import tsallis_rl.tasks  # noqa: F401  (registers the built-in tasks)

    key, _, spec = name.partition(":")
    if spec and f"{key}:" in _TASKS:
        return _TASKS[f"{key}:"](spec, **options)
    if name not in _TASKS:
        known = ", ".join(sorted(k + ("<name>" if k.endswith(":") else "") for k in _TASKS))
        raise ValueError(f"unknown task {name!r}; known: {known}")
    return _TASKS[name](**options)


def list_tasks() -> list[str]:
    import tsallis_rl.tasks  # noqa: F401

    return sorted(_TASKS)


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
