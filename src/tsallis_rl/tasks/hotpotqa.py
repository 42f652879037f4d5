"""HotpotQA (distractor setting): a question, 10 titled paragraphs, a short answer or yes/no.

Loads JSON Lines or a JSON array in either layout:
  - Hugging Face `hotpot_qa/distractor` columns: `id`, `context{title[], sentences[][]}`,
    `supporting_facts{title[], sent_id[]}`;
  - the official files: `_id`, `context` = [[title, [sentences]], ...], `supporting_facts` =
    [[title, sent_id], ...].
Context = one line per paragraph, `Title: sentence sentence ...` (the sentences joined as in the
original text). y* = the `answer` field as is.

Matching: `exact_match` = official EM (normalised equality, the training reward);
`substring_match` = the exact match, or the normalised gold found in the normalised prediction
on word boundaries (`metrics.contains_words`); `official_metrics` = {"em", "f1"} of `metrics.hotpotqa_em_f1`
(official `hotpot_evaluate_v1.py` rules, with the yes/no/noanswer F1 rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsallis_rl.metrics import contains_words, hotpotqa_em_f1, normalize_answer
from tsallis_rl.tasks.base import DataError, Example, Task, get_field, register_task

WARM_INSTRUCTION = (
    "Answer the question using the paragraphs below. Some paragraphs are irrelevant; the answer "
    "may need facts from two of them. Think it through step by step, then reply with only the "
    "final answer."
)
WARM_FORMAT = (
    "Answer format: a short span (a name, date, number or phrase) with no explanation, or yes / "
    "no for a yes-or-no question."
)


def parse_hotpot_context(rec: Any, path: Path, line: int) -> list[tuple[str, list[str]]]:
    """[(title, sentences)] from either layout; DataError on wrong types or an empty context."""
    ctx = get_field(rec, "context", (dict, list), path, line, nonempty=True)
    if isinstance(ctx, dict):
        titles = get_field(ctx, "title", list, path, line)
        sents = get_field(ctx, "sentences", list, path, line)
        if len(titles) != len(sents):
            raise DataError(path, line, "context", "title and sentences differ in length")
        pairs = list(zip(titles, sents))
    else:
        if not all(isinstance(p, list) and len(p) == 2 for p in ctx):
            raise DataError(path, line, "context", "expected [title, [sentences]] pairs")
        pairs = [(p[0], p[1]) for p in ctx]
    out = []
    for title, sentences in pairs:
        if not isinstance(title, str) or not isinstance(sentences, list):
            raise DataError(path, line, "context", "expected a title string and a sentence list")
        if not all(isinstance(s, str) for s in sentences):
            raise DataError(path, line, "context", "sentences must be strings")
        out.append((title, sentences))
    if not out or not any("".join(s).strip() for _, s in out):
        raise DataError(path, line, "context", "empty context")
    return out


def parse_supporting_facts(rec: Any) -> list[tuple[str, int]]:
    sf = rec.get("supporting_facts") if isinstance(rec, dict) else None
    if isinstance(sf, dict):
        return list(zip(sf.get("title", []), sf.get("sent_id", [])))
    if isinstance(sf, list):
        return [(p[0], p[1]) for p in sf if isinstance(p, list) and len(p) == 2]
    return []


def render_paragraphs(paragraphs: list[tuple[str, str]]) -> str:
    return "\n".join(f"{title}: {' '.join(text.split())}" for title, text in paragraphs)


class ParagraphQATask(Task):
    """Shared by the paragraph QA tasks: SQuAD-style normalisation, word-boundary substring match."""

    warm_texts: tuple[str, ...] = ()

    def instruction_texts(self) -> list[str]:
        """The warm-only instruction strings (cold prompts must contain none of them)."""
        return [*self.warm_texts, "Paragraphs:", "Question:"]

    def normalize(self, answer: str) -> str:
        return normalize_answer(answer)

    def substring_match(self, pred: str, ex: Example) -> bool:
        golds = [ex.answer, *ex.aliases]
        return self.exact_match(pred, ex) or any(contains_words(pred, g) for g in golds)


@register_task("hotpotqa")
class HotpotQATask(ParagraphQATask):
    name = "hotpotqa"
    warm_texts = (WARM_INSTRUCTION, WARM_FORMAT)

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        if path is None:
            raise ValueError("hotpotqa needs a data file (JSON Lines or JSON array)")
        return self.load_records(path, self._parse, skip_invalid=skip_invalid)

    def _parse(self, rec: Any, path: Path, line: int) -> Example:
        id_field = "_id" if isinstance(rec, dict) and "_id" in rec and "id" not in rec else "id"
        ex_id = get_field(rec, id_field, str, path, line, nonempty=True)
        question = get_field(rec, "question", str, path, line, nonempty=True)
        answer = get_field(rec, "answer", str, path, line, nonempty=True)
        paragraphs = parse_hotpot_context(rec, path, line)
        context = render_paragraphs([(t, "".join(s)) for t, s in paragraphs])
        return Example(
            id=ex_id,
            question=question.strip(),
            answer=answer.strip(),
            context=context,
            meta={
                "type": rec.get("type"),
                "level": rec.get("level"),
                "supporting_facts": parse_supporting_facts(rec),
                "titles": [t for t, _ in paragraphs],
            },
        )

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return f"{ex.context}\n{ex.question}"
        if regime != "warm":
            raise ValueError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        return (
            f"{WARM_INSTRUCTION}\n\nParagraphs:\n{ex.context}\n\nQuestion: {ex.question}\n\n"
            f"{WARM_FORMAT}"
        )

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        em, f1 = hotpotqa_em_f1(pred, ex.answer)
        return {"em": em, "f1": f1}
