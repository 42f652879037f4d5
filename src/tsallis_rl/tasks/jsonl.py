"""User data: JSON Lines (or a JSON array) of `{"question": ..., "answer": ..., "context": ...}`.

Fields: `question` (non-empty string), `answer` (non-empty string; an integer or float is turned
into its string), optional `context` (a non-empty string when present), optional `id` (string or
integer; default `<file stem>-<line>`), optional `aliases` (list of strings, also accepted as
correct). Anything else on a row is kept in `meta`.

Matching: `exact_match` = equality after collapsing white space (the training reward, strict);
`substring_match` = the exact match, or the gold (or an alias) occurs in the prediction on word
boundaries after SQuAD normalisation (so it is never stricter than the reward); `official_metrics` = {"em", "f1"}: SQuAD EM/F1, maximum over answer and
aliases (`metrics.musique_em_f1`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsallis_rl.errors import ConfigError, DataError
from tsallis_rl.metrics import contains_words, musique_em_f1
from tsallis_rl.tasks.base import Example, Task, get_field, register_task

WARM_INSTRUCTION = (
    "Answer the question. Think it through step by step, then reply with only the final answer."
)
WARM_INSTRUCTION_CTX = (
    "Answer the question using the context below. Think it through step by step, then reply "
    "with only the final answer."
)
WARM_FORMAT = "Answer format: the answer alone, with no explanation."
KNOWN_FIELDS = ("id", "question", "answer", "context", "aliases")


@register_task("jsonl")
class JsonlTask(Task):
    name = "jsonl"

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        if path is None:
            raise ConfigError('jsonl needs a file of {"question", "answer", "context"?} lines')
        return self.load_records(path, self._parse, skip_invalid=skip_invalid)

    def _parse(self, rec: Any, path: Path, line: int) -> Example:
        question = get_field(rec, "question", str, path, line, nonempty=True)
        answer = get_field(rec, "answer", (str, int, float), path, line)
        answer = str(answer).strip()
        if not answer:
            raise DataError(path, line, "answer", "empty")
        context = get_field(rec, "context", str, path, line, default=None)
        if context is not None and not context.strip():
            raise DataError(path, line, "context", "empty context (leave the field out instead)")
        ex_id = get_field(rec, "id", (str, int), path, line, default=f"{path.stem}-{line}")
        aliases = get_field(rec, "aliases", list, path, line, default=[])
        if not all(isinstance(a, str) for a in aliases):
            raise DataError(path, line, "aliases", "expected a list of strings")
        return Example(
            id=str(ex_id),
            question=question.strip(),
            answer=answer,
            context=(context or "").strip(),
            aliases=[a.strip() for a in aliases if a.strip()],
            meta={k: v for k, v in rec.items() if k not in KNOWN_FIELDS},
        )

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return f"{ex.context}\n{ex.question}" if ex.context else ex.question
        if regime != "warm":
            raise ConfigError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        if ex.context:
            return f"{WARM_INSTRUCTION_CTX}\n\nContext:\n{ex.context}\n\nQuestion: {ex.question}\n\n{WARM_FORMAT}"
        return f"{WARM_INSTRUCTION}\n\nQuestion: {ex.question}\n\n{WARM_FORMAT}"

    def instruction_texts(self) -> list[str]:
        """The warm-only instruction strings (cold prompts must contain none of them)."""
        return [WARM_INSTRUCTION, WARM_INSTRUCTION_CTX, WARM_FORMAT, "Context:", "Question:"]

    def substring_match(self, pred: str, ex: Example) -> bool:
        golds = [ex.answer, *ex.aliases]
        return self.exact_match(pred, ex) or any(contains_words(pred, g) for g in golds)

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        em, f1 = musique_em_f1(pred, [ex.answer, *ex.aliases])
        return {"em": em, "f1": f1}
