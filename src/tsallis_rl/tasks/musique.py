"""MuSiQue-Ans: multi-hop questions over 20 titled paragraphs (2 to 4 hops).

Loads the official JSON Lines (or a JSON array) with `id`, `question`, `answer`,
`answer_aliases`, `answerable`, `paragraphs[{idx, title, paragraph_text, is_supporting}]`.
Context = one line per paragraph, `Title: text`. A file without the `paragraphs` key (labels only,
e.g. for scoring predictions) loads with an empty context and `meta["has_paragraphs"] = False`;
a `paragraphs` list that is present but empty is an error. y* = `answer`; `aliases` =
`answer_aliases`.

Context variants (the task option `context`): `full` (default, all 20 paragraphs) or
`supporting` (`musique?context=supporting`: only the paragraphs with `is_supporting: true`, in
file order). The variant needs `paragraphs` with `is_supporting` flags: a row without them (e.g.
the labels-only file) or with no supporting paragraph is a DataError naming the field.
`task.context_note` says what the variant dropped.

Only answerable items are scored: `load` drops items with `answerable: false` (counted in
`task.last_unanswerable`) unless the task is made with `get_task("musique",
include_unanswerable=True)`, in which case they load and `official_metrics` returns {} for them.

Matching: `exact_match` = EM over [answer] + aliases (training reward); `substring_match` = the
exact match or any normalised gold found in the normalised prediction on word boundaries; `official_metrics` =
{"em", "f1"} of `metrics.musique_em_f1` (official `evaluate_v1.0.py`: maximum over the answer and
its aliases).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsallis_rl.metrics import musique_em_f1
from tsallis_rl.tasks.base import DataError, Example, get_field, register_task
from tsallis_rl.tasks.hotpotqa import ParagraphQATask, check_context_option, render_paragraphs

WARM_INSTRUCTION = (
    "Answer the question using the paragraphs below. Most paragraphs are irrelevant; the answer "
    "needs a chain of facts from several of them. Think it through step by step, then reply with "
    "only the final answer."
)
WARM_INSTRUCTION_SUPPORTING = (
    "Answer the question using the paragraphs below; the answer needs a chain of facts from "
    "several of them. Think it through step by step, then reply with only the final answer."
)
WARM_FORMAT = "Answer format: a short span (a name, date, number or phrase) with no explanation."


#: MuSiQue context variants: what each drops (the task option `context`)
MUSIQUE_CONTEXTS = {
    "full": "",
    "supporting": "context=supporting: only the supporting paragraphs (is_supporting); the "
    "other paragraphs are dropped",
}


@register_task("musique")
class MuSiQueTask(ParagraphQATask):
    """MuSiQue-Ans; options: `include_unanswerable` (default False), `context` (full |
    supporting, default full)."""

    name = "musique"
    warm_texts = (WARM_INSTRUCTION, WARM_FORMAT)
    last_unanswerable: int = 0

    def __init__(self, include_unanswerable: bool = False, context: str = "full"):
        self.include_unanswerable = bool(include_unanswerable)
        self.context = check_context_option("musique", context, MUSIQUE_CONTEXTS)
        self.context_note = MUSIQUE_CONTEXTS[self.context]
        self.instruction = (
            WARM_INSTRUCTION if self.context == "full" else WARM_INSTRUCTION_SUPPORTING
        )
        self.warm_texts = (self.instruction, WARM_FORMAT)

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        if path is None:
            raise ValueError("musique needs a data file (official MuSiQue JSON Lines)")
        self.last_unanswerable = 0
        return self.load_records(path, self._parse, skip_invalid=skip_invalid)

    def _parse(self, rec: Any, path: Path, line: int) -> Example | None:
        ex_id = get_field(rec, "id", str, path, line, nonempty=True)
        question = get_field(rec, "question", str, path, line, nonempty=True)
        answerable = get_field(rec, "answerable", bool, path, line, default=True)
        answer = get_field(rec, "answer", str, path, line, nonempty=answerable)
        aliases = get_field(rec, "answer_aliases", list, path, line, default=[])
        if not all(isinstance(a, str) for a in aliases):
            raise DataError(path, line, "answer_aliases", "expected a list of strings")
        has_paragraphs = isinstance(rec, dict) and "paragraphs" in rec
        if self.context != "full" and not has_paragraphs:
            raise DataError(path, line, "paragraphs", f"missing (musique?context={self.context})")
        context = ""
        supporting: list[int] = []
        if has_paragraphs:
            paras = get_field(rec, "paragraphs", list, path, line, nonempty=True)
            pairs, kept = [], []
            for i, p in enumerate(paras):
                title = get_field(p, "title", str, path, line, default="")
                text = get_field(p, "paragraph_text", str, path, line)
                pairs.append((title, text))
                flag = p.get("is_supporting") if isinstance(p, dict) else None
                if self.context != "full" and not isinstance(flag, bool):
                    raise DataError(
                        path, line, f"paragraphs[{i}].is_supporting", "missing or not a bool"
                    )
                if flag:
                    supporting.append(int(p.get("idx", i)))
                    kept.append((title, text))
            if not any(text.strip() for _, text in pairs):
                raise DataError(path, line, "paragraphs", "empty context")
            if self.context == "supporting":
                if not kept and (answerable or self.include_unanswerable):
                    raise DataError(
                        path, line, "paragraphs", "no paragraph has is_supporting: true"
                    )
                pairs = kept
            context = render_paragraphs(pairs)
        if not answerable:
            self.last_unanswerable += 1
            if not self.include_unanswerable:
                return None
        decomposition = rec.get("question_decomposition") or []
        return Example(
            id=ex_id,
            question=question.strip(),
            answer=answer.strip(),
            context=context,
            aliases=[a.strip() for a in aliases if a.strip()],
            meta={
                "answerable": answerable,
                "has_paragraphs": has_paragraphs,
                "hops": len(decomposition) if isinstance(decomposition, list) else None,
                "supporting_idx": supporting,
            },
        )

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return f"{ex.context}\n{ex.question}" if ex.context else ex.question
        if regime != "warm":
            raise ValueError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        head = f"{self.instruction}\n\nParagraphs:\n{ex.context}\n\n" if ex.context else ""
        if not ex.context:
            head = "Answer the question. Think it through step by step, then reply with only the final answer.\n\n"
        return f"{head}Question: {ex.question}\n\n{WARM_FORMAT}"

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        if not ex.meta.get("answerable", True):
            return {}
        em, f1 = musique_em_f1(pred, [ex.answer, *ex.aliases])
        return {"em": em, "f1": f1}
