"""HotpotQA (distractor setting): a question, 10 titled paragraphs, a short answer or yes/no.

Loads JSON Lines or a JSON array in either layout:
  - Hugging Face `hotpot_qa/distractor` columns: `id`, `context{title[], sentences[][]}`,
    `supporting_facts{title[], sent_id[]}`;
  - the official files: `_id`, `context` = [[title, [sentences]], ...], `supporting_facts` =
    [[title, sent_id], ...].
Context = one line per paragraph, `Title: sentence sentence ...` (the sentences joined as in the
original text). y* = the `answer` field as is.

Context variants (the task option `context`, e.g. `hotpotqa?context=gold`), for models whose
context window or speed cannot take the ~1,300-token distractor setting:
  - `full` (default): all 10 paragraphs, the distractor setting;
  - `gold`: only the supporting paragraphs (the titles in `supporting_facts`), whole;
  - `supporting`: only the supporting sentences (`supporting_facts`' (title, sent_id) pairs),
    grouped under their paragraph's title, in the paragraphs' order.
A variant needs `supporting_facts`: a row without it, or naming a title that is not a context
paragraph (or, for `supporting`, a sentence past the paragraph's end), is a DataError naming
the field. `task.context_note` says what a variant dropped (empty for `full`); the warm prompt of a
variant no longer says that some paragraphs are irrelevant.

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
WARM_INSTRUCTION_GOLD = (
    "Answer the question using the paragraphs below; the answer may need facts from two of them. "
    "Think it through step by step, then reply with only the final answer."
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


def strict_supporting_facts(
    rec: Any, paragraphs: list[tuple[str, list[str]]], path: Path, line: int, *, sentences: bool
) -> dict[str, list[int]]:
    """{title: [sent_id, ...]} of `supporting_facts` (either layout), checked against the context:
    present, non-empty, every title a context paragraph, and (if `sentences`) every sent_id one of
    its sentences. DataError naming `supporting_facts` otherwise."""
    field_name = "supporting_facts"
    sf = get_field(rec, field_name, (dict, list), path, line, nonempty=True)
    if isinstance(sf, dict):
        titles = get_field(sf, "title", list, path, line)
        ids = get_field(sf, "sent_id", list, path, line)
        if len(titles) != len(ids):
            raise DataError(path, line, field_name, "title and sent_id differ in length")
        pairs = list(zip(titles, ids))
    else:
        if not all(isinstance(p, list) and len(p) == 2 for p in sf):
            raise DataError(path, line, field_name, "expected [title, sent_id] pairs")
        pairs = [(p[0], p[1]) for p in sf]
    if not pairs:
        raise DataError(path, line, field_name, "empty")
    sizes = {title: len(sents) for title, sents in paragraphs}
    out: dict[str, list[int]] = {}
    for title, sent_id in pairs:
        if not isinstance(title, str) or isinstance(sent_id, bool) or not isinstance(sent_id, int):
            raise DataError(path, line, field_name, "expected (title string, integer sent_id)")
        if title not in sizes:
            raise DataError(path, line, field_name, f"title {title!r} is not a context paragraph")
        if sentences and not 0 <= sent_id < sizes[title]:
            raise DataError(
                path,
                line,
                field_name,
                f"sent_id {sent_id} of {title!r} is not one of its {sizes[title]} sentences",
            )
        out.setdefault(title, []).append(sent_id)
    return out


def select_context(
    rec: Any, paragraphs: list[tuple[str, list[str]]], context: str, path: Path, line: int
) -> list[tuple[str, str]]:
    """(title, text) of the paragraphs a context variant keeps, in the context's order."""
    if context == "full":
        return [(t, "".join(s)) for t, s in paragraphs]
    facts = strict_supporting_facts(rec, paragraphs, path, line, sentences=context == "supporting")
    if context == "gold":
        return [(t, "".join(s)) for t, s in paragraphs if t in facts]
    return [
        (t, " ".join(s[i].strip() for i in sorted(set(facts[t]))))
        for t, s in paragraphs
        if t in facts
    ]


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


#: HotpotQA context variants: what each keeps (the task option `context`)
HOTPOT_CONTEXTS = {
    "full": "",
    "gold": "context=gold: only the supporting paragraphs (titles in supporting_facts); the "
    "distractor paragraphs are dropped",
    "supporting": "context=supporting: only the supporting sentences (supporting_facts); the "
    "distractor paragraphs and the other sentences of the supporting ones are dropped",
}


def check_context_option(task: str, context: Any, allowed: dict[str, str]) -> str:
    if context not in allowed:
        raise ValueError(
            f"{task} context must be one of {', '.join(allowed)}, got {context!r} "
            f'(e.g. "{task}?context={next(k for k in allowed if k != "full")}")'
        )
    return context


@register_task("hotpotqa")
class HotpotQATask(ParagraphQATask):
    """HotpotQA distractor setting; options: `context` (full | gold | supporting, default full)."""

    name = "hotpotqa"
    warm_texts = (WARM_INSTRUCTION, WARM_FORMAT)

    def __init__(self, context: str = "full"):
        self.context = check_context_option("hotpotqa", context, HOTPOT_CONTEXTS)
        #: what this variant dropped from the benchmark's context ("" = nothing)
        self.context_note = HOTPOT_CONTEXTS[self.context]
        self.instruction = WARM_INSTRUCTION if self.context == "full" else WARM_INSTRUCTION_GOLD
        self.warm_texts = (self.instruction, WARM_FORMAT)

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
        kept = select_context(rec, paragraphs, self.context, path, line)
        context = render_paragraphs(kept)
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
                "context_paragraphs": len(kept),
            },
        )

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return f"{ex.context}\n{ex.question}"
        if regime != "warm":
            raise ValueError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        return (
            f"{self.instruction}\n\nParagraphs:\n{ex.context}\n\nQuestion: {ex.question}\n\n"
            f"{WARM_FORMAT}"
        )

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        em, f1 = hotpotqa_em_f1(pred, ex.answer)
        return {"em": em, "f1": f1}
