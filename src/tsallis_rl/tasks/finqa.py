"""FinQA: numerical reasoning over financial reports (pre_text, a table, post_text, a question).

Loads both layouts of a FinQA JSON array (or JSON Lines) file:
  - official: `{id, pre_text[], post_text[], table[[...]], qa{question, answer, program, exe_ans}}`
  - simplified: `{id, question, pre_text[], post_text[], table, answer (= exe_ans), program}`
Context = pre_text (one sentence a line), the table row by row (`cell | cell | ...`), post_text.

Gold answer y* = `canonical_answer(exe_ans, decimals)`: the number rounded to `decimals` places
(default 5, the precision of the official `exe_ans`), written as a plain decimal with trailing
zeros and a trailing "." removed, no exponent, no thousands separators ("94", "127.4", "0.56197",
"-0.0325"); "yes"/"no" as is. `get_task("finqa", decimals=2)` writes "0.56" instead.

Matching:
  - `exact_match` (training reward): the prediction, if it is a number (a leading `$` and
    thousands commas are tolerated), canonicalised the same way, equals y*; else the lower-cased,
    space-collapsed text equals y*. The warm prompt states this form (`answer_format`: rounded to
    `decimals` places, trailing zeros dropped). The reward stays strict: y* is also what GARL/PAFT
    teacher-force, and the reward should credit exactly that answer.
  - `substring_match` (relaxed evaluation, never stricter than the reward): the exact match, or
    some number in the prediction equal to y* in value ("0.5620" or "0.562." for "0.562",
    "1940.0" or "1,940" for "1940"; not "1940" for "94" nor "94.5"), or written with more
    decimals and rounding to y*, or written at lower precision when y* rounds to it keeping at
    least EVAL_MIN_SIGNIFICANT = 3 significant digits ("0.562" for "0.56197"; "0.6" does not
    count); yes/no as whole words (`metrics.contains_number`).
  - `official_metrics`: `exe_acc` - execution accuracy, FinQA's official metric: the prediction,
    when it is a program, executed by `execute_program` on the example's table (else read as a
    number), rounded to 5 decimals, equals `exe_ans`; `num_match` - `metrics.finqa_numeric_match`
    (documented tolerance rules, not official).

Context variants (the task option `context`): `full` (default, the whole filing) or `gold`
(`finqa?context=gold`: only the gold facts `qa.gold_inds` of the official layout, one a line in
the filing's order: pre_text sentences, table rows (as FinQA's linearised sentences), post_text
sentences). The variant needs `qa.gold_inds`: a row without it (e.g. the simplified layout) or
with an empty or malformed one is a DataError naming the field. `task.context_note` says what the
variant dropped. The table stays in `meta` for execution accuracy either way.

`execute_program(program, table)` is a safe interpreter of the FinQA program language with the
semantics of the official `evaluate.py` (`eval_program`): no `eval`, bounded size, and a
`ValueError` for anything the official script would flag invalid (plus the deviations listed in
its docstring).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from tsallis_rl.metrics import contains_number, finqa_numeric_match
from tsallis_rl.tasks.base import DataError, Example, Task, get_field, register_task

# --------------------------------------------------------------------------------------------
# The program interpreter

ARITH_OPS = ("add", "subtract", "multiply", "divide", "exp", "greater")
TABLE_OPS = ("table_max", "table_min", "table_sum", "table_average")
ALL_OPS = ARITH_OPS + TABLE_OPS
MAX_PROGRAM_CHARS = 10_000
MAX_STEPS = 100


def tokenize_program(program: str) -> list[str]:
    """The official `program_tokenization` (without the trailing EOF): split on ", ", then cut
    after every "(" and around every ")"."""
    tokens: list[str] = []
    for tok in program.split(", "):
        cur = ""
        for c in tok:
            if c == ")" and cur:
                tokens.append(cur)
                cur = ""
            cur += c
            if c in "()":
                tokens.append(cur)
                cur = ""
        if cur:
            tokens.append(cur)
    return tokens


def str_to_num(text: str) -> float | None:
    """The official `str_to_num`: commas dropped; a float; else `X%` = X / 100; else
    `const_X` = X (`const_m1` = -1). None where the official script gives "n/a"."""
    text = text.replace(",", "")
    try:
        return _finite(float(text))
    except ValueError:
        pass
    if "%" in text:
        try:
            return _finite(float(text.replace("%", ""))) / 100.0
        except (ValueError, TypeError):
            return None
    if "const" in text:
        text = text.replace("const_", "")
        if text == "m1":
            text = "-1"
        try:
            return _finite(float(text))
        except ValueError:
            return None
    return None


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("not a finite number")
    return x


def _row_numbers(cells: list[Any]) -> list[float]:
    """The official `process_row`: each cell loses `$`, is cut at the first "(", and parsed."""
    out = []
    for cell in cells:
        if not isinstance(cell, str):
            raise ValueError(f"table cell {cell!r} is not a string")
        num = str_to_num(cell.replace("$", "").strip().split("(")[0].strip())
        if num is None:
            raise ValueError(f"table cell {cell!r} is not a number")
        out.append(num)
    if not out:
        raise ValueError("table row has no numbers")
    return out


def execute_program(program: str, table: list[list[str]]) -> float | str:
    """Run a FinQA program (`op(arg1, arg2), op(#0, arg2), ...`) on a table; official semantics.

    Returns the last step's result rounded to 5 decimals (a float), or "yes"/"no" for `greater`.
    Raises ValueError on any program the official `eval_program` marks invalid: unknown op, wrong
    arity or structure, an argument that is not a number / `#k` of an earlier step / `const_X` /
    `X%`, a table row label not in the table or a row with a non-numeric cell, division by zero,
    arithmetic on yes/no, a complex result. Deviations (all stricter): an empty program, more than
    MAX_STEPS steps or MAX_PROGRAM_CHARS characters, a non-finite number or result (official would
    return inf/nan), and a table op given `#k` (official silently reuses the previous row) raise
    ValueError. Rows are looked up by their first cell, the last duplicate winning, as officially.
    """
    if not isinstance(program, str):
        raise ValueError(f"program must be a string, got {type(program).__name__}")
    if len(program) > MAX_PROGRAM_CHARS:
        raise ValueError(f"program longer than {MAX_PROGRAM_CHARS} characters")
    tokens = tokenize_program(program.strip())
    if not tokens:
        raise ValueError("empty program")
    if len(tokens) % 4:
        raise ValueError("malformed program: every step must be op(arg1, arg2)")
    if len(tokens) // 4 > MAX_STEPS:
        raise ValueError(f"program has more than {MAX_STEPS} steps")
    results: list[float | str] = []
    for i in range(0, len(tokens), 4):
        op_tok, a1, a2, close = tokens[i : i + 4]
        op = op_tok[:-1].strip() if op_tok.endswith("(") else ""
        if op not in ALL_OPS:
            raise ValueError(f"step {i // 4}: unknown operation {op_tok!r}")
        if close != ")" or "(" in a1 or "(" in a2 or ")" in a1 or ")" in a2:
            raise ValueError(f"step {i // 4}: malformed arguments")
        a1, a2 = a1.strip(), a2.strip()
        if op in ARITH_OPS:
            x, y = _operand(a1, results), _operand(a2, results)
            res = _arith(op, x, y)
        else:
            if "#" in a1:
                raise ValueError(f"step {i // 4}: {op} takes a table row label, not {a1!r}")
            res = _table_op(op, a1, table)
        results.append(res)
    final = results[-1]
    if isinstance(final, str):
        return final
    return round(final, 5)


def _operand(arg: str, results: list[float | str]) -> float | str:
    if "#" in arg:
        ref = arg.replace("#", "").strip()
        if not ref.isdigit() or int(ref) >= len(results):
            raise ValueError(f"bad step reference {arg!r}")
        return results[int(ref)]
    num = str_to_num(arg)
    if num is None:
        raise ValueError(f"argument {arg!r} is not a number, #k, const_X or X%")
    return num


def _arith(op: str, x: float | str, y: float | str) -> float | str:
    if isinstance(x, str) or isinstance(y, str):
        raise ValueError(f"{op} applied to a yes/no value")
    try:
        if op == "add":
            res: Any = x + y
        elif op == "subtract":
            res = x - y
        elif op == "multiply":
            res = x * y
        elif op == "divide":
            res = x / y
        elif op == "exp":
            res = x**y
        else:  # greater
            return "yes" if x > y else "no"
    except (ZeroDivisionError, OverflowError) as exc:
        raise ValueError(f"{op}: {exc}") from None
    if not isinstance(res, float) or not math.isfinite(res):
        raise ValueError(f"{op} gives a non-finite or complex result")
    return res


def _table_op(op: str, label: str, table: list[list[str]]) -> float:
    rows: dict[str, list[Any]] = {}
    for row in table:
        if isinstance(row, list) and row and isinstance(row[0], str):
            rows[row[0]] = row[1:]
    if label not in rows:
        raise ValueError(f"{op}: no table row {label!r}")
    nums = _row_numbers(rows[label])
    if op == "table_max":
        res = max(nums)
    elif op == "table_min":
        res = min(nums)
    elif op == "table_sum":
        res = sum(nums)
    else:
        res = sum(nums) / len(nums)
    if not math.isfinite(res):
        raise ValueError(f"{op} gives a non-finite result")
    return res


def execution_match(result: float | str, exe_ans: float | str) -> bool:
    """Official execution accuracy for one example: result (already rounded to 5) == exe_ans."""
    if isinstance(result, str) or isinstance(exe_ans, str):
        return str(result).strip().lower() == str(exe_ans).strip().lower()
    return result == exe_ans


# --------------------------------------------------------------------------------------------
# Answers

_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def canonical_answer(value: float | int | str, decimals: int = 5) -> str:
    """y* for an `exe_ans`: rounded to `decimals`, plain decimal, no trailing zeros; yes/no as is."""
    if isinstance(value, str):
        return value.strip().lower()
    text = f"{round(float(value), decimals):.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def canonical_prediction(text: str, decimals: int = 5) -> str:
    """A prediction in y*'s form when it is a plain number (`$`, thousands commas and spaces
    tolerated; a trailing "." dropped); otherwise lower-cased with spaces collapsed."""
    t = " ".join(text.split()).lower()
    compact = t.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if _PLAIN_NUMBER.fullmatch(compact):
        return canonical_answer(float(compact), decimals)
    return t.rstrip(".")


# --------------------------------------------------------------------------------------------
# The task

WARM_INSTRUCTION = (
    "Answer the question about the financial report below. Think it through step by step, then "
    "reply with only the final answer."
)
WARM_FORMAT = (
    "Answer format: a plain decimal number {rounding} with trailing zeros dropped (e.g. "
    "{examples}), with no units, no % sign and no thousands separators (a ratio or percentage "
    "change as a fraction: 25% is written 0.25); or yes / no for a yes-or-no question."
)
#: numbers whose canonical forms illustrate the answer form in the warm prompt
FORMAT_EXAMPLES = (0.561974, 127.4, 1940)
#: significant digits an answer written at lower precision must keep to count in evaluation
EVAL_MIN_SIGNIFICANT = 3


def answer_format(decimals: int) -> str:
    """The warm prompt's answer-format line: exactly the form `canonical_answer` writes y* in."""
    rounding = (
        "rounded to a whole number"
        if decimals == 0
        else f"rounded to {decimals} decimal place{'s' if decimals > 1 else ''}"
    )
    examples = ", ".join(canonical_answer(x, decimals) for x in FORMAT_EXAMPLES)
    return WARM_FORMAT.format(rounding=rounding, examples=examples)


def render_table(table: list[list[str]]) -> str:
    return "\n".join(" | ".join(str(c).strip() for c in row) for row in table)


#: FinQA context variants: what each drops (the task option `context`)
FINQA_CONTEXTS = {
    "full": "",
    "gold": "context=gold: only the gold facts (qa.gold_inds); the rest of the filing's text and "
    "table is dropped",
}


def gold_facts(rec: Any, n_pre: int, path: Path, line: int) -> list[str]:
    """The `qa.gold_inds` texts in filing order (pre_text, table, post_text); DataError naming
    `qa.gold_inds` when missing, empty, or keyed other than `text_<i>` / `table_<i>`."""
    field_name = "qa.gold_inds"
    inds = get_field(rec, field_name, dict, path, line, nonempty=True)
    keyed = []
    for key, text in inds.items():
        kind, _, index = str(key).partition("_")
        if kind not in ("text", "table") or not index.isdigit() or not isinstance(text, str):
            raise DataError(
                path, line, field_name, f"expected text_<i> / table_<i>: string, got {key!r}"
            )
        i = int(index)
        # pre_text (0), then the table (1), then post_text (2): the order of the rendered filing
        part = 1 if kind == "table" else (0 if i < n_pre else 2)
        keyed.append(((part, i), " ".join(text.split())))
    facts = [text for _, text in sorted(keyed) if text]
    if not facts:
        raise DataError(path, line, field_name, "no non-empty gold fact")
    return facts


@register_task("finqa")
class FinQATask(Task):
    """FinQA; options: `decimals` (rounding of y*, default 5), `context` (full | gold)."""

    name = "finqa"

    def __init__(self, decimals: int = 5, context: str = "full"):
        if not isinstance(decimals, int) or not 0 <= decimals <= 10:
            raise ValueError(f"finqa decimals must be an integer in [0, 10], got {decimals!r}")
        self.decimals = decimals
        if context not in FINQA_CONTEXTS:
            raise ValueError(
                f'finqa context must be one of full, gold, got {context!r} (e.g. "finqa?context=gold")'
            )
        self.context = context
        #: what this variant dropped from the benchmark's context ("" = nothing)
        self.context_note = FINQA_CONTEXTS[context]

    def load(self, path: str | Path | None = None, *, skip_invalid: bool = False) -> list[Example]:
        if path is None:
            raise ValueError("finqa needs a data file (official or simplified FinQA JSON)")
        return self.load_records(path, self._parse, skip_invalid=skip_invalid)

    def _parse(self, rec: Any, path: Path, line: int) -> Example:
        ex_id = get_field(rec, "id", str, path, line, nonempty=True)
        official = isinstance(rec, dict) and "qa" in rec
        if official:
            get_field(rec, "qa", dict, path, line)
            question = get_field(rec, "qa.question", str, path, line, nonempty=True)
            exe_ans = get_field(rec, "qa.exe_ans", (int, float, str), path, line)
            program = get_field(rec, "qa.program", str, path, line, default="")
            human = get_field(rec, "qa.answer", (str, int, float), path, line, default="")
            answer_field = "qa.exe_ans"
        else:
            question = get_field(rec, "question", str, path, line, nonempty=True)
            exe_ans = get_field(rec, "answer", (int, float, str), path, line)
            program = get_field(rec, "program", str, path, line, default="")
            human = ""
            answer_field = "answer"
        if isinstance(exe_ans, str):
            if exe_ans.strip().lower() not in ("yes", "no"):
                raise DataError(
                    path, line, answer_field, f"expected a number or yes/no, got {exe_ans!r}"
                )
        elif not math.isfinite(float(exe_ans)):
            raise DataError(path, line, answer_field, "not a finite number")
        pre = get_field(rec, "pre_text", list, path, line, default=[])
        post = get_field(rec, "post_text", list, path, line, default=[])
        table = get_field(rec, "table", list, path, line, default=[])
        for name, seq in (("pre_text", pre), ("post_text", post)):
            if not all(isinstance(s, str) for s in seq):
                raise DataError(path, line, name, "expected a list of strings")
        if not all(isinstance(r, list) and all(isinstance(c, str) for c in r) for r in table):
            raise DataError(path, line, "table", "expected a list of rows of strings")
        if self.context == "gold":
            if not official:
                raise DataError(
                    path,
                    line,
                    "qa.gold_inds",
                    "missing (finqa?context=gold needs the official layout)",
                )
            parts = gold_facts(rec, len(pre), path, line)
        else:
            parts = [" ".join(pre).strip(), render_table(table).strip(), " ".join(post).strip()]
        context = "\n".join(p for p in parts if p)
        if not context:
            raise DataError(path, line, "pre_text/table/post_text", "empty context")
        return Example(
            id=ex_id,
            question=question.strip(),
            answer=canonical_answer(exe_ans, self.decimals),
            context=context,
            meta={
                "exe_ans": exe_ans,
                "program": program,
                "table": table,
                "human_answer": str(human),
                "pre_text": " ".join(pre).strip(),
                "post_text": " ".join(post).strip(),
            },
        )

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        if regime == "cold":
            return f"{ex.context}\n{ex.question}"
        if regime != "warm":
            raise ValueError(f"unknown regime {regime!r}; expected 'warm' or 'cold'")
        fmt = answer_format(self.decimals)
        return f"{WARM_INSTRUCTION}\n\nReport:\n{ex.context}\n\nQuestion: {ex.question}\n\n{fmt}"

    def instruction_texts(self) -> list[str]:
        """The warm-only instruction strings (cold prompts must contain none of them)."""
        return [
            WARM_INSTRUCTION,
            answer_format(self.decimals),
            "Report:",
            "Question:",
        ]

    def normalize(self, answer: str) -> str:
        return canonical_prediction(answer, self.decimals)

    def exact_match(self, pred: str, ex: Example) -> bool:
        return self.normalize(pred) == ex.answer

    def substring_match(self, pred: str, ex: Example) -> bool:
        if self.exact_match(pred, ex):
            return True
        return contains_number(
            pred, ex.answer, decimals=self.decimals, min_significant=EVAL_MIN_SIGNIFICANT
        )

    def official_metrics(self, pred: str, ex: Example) -> dict[str, float]:
        exe_ans = ex.meta.get("exe_ans", ex.answer)
        return {
            "exe_acc": float(self._execution_accuracy(pred, ex, exe_ans)),
            "num_match": float(finqa_numeric_match(pred, exe_ans)),
        }

    def _execution_accuracy(self, pred: str, ex: Example, exe_ans: Any) -> bool:
        text = pred.strip()
        if "(" in text:
            try:
                result: float | str = execute_program(text, ex.meta.get("table", []))
            except ValueError:
                return False
        else:
            canon = canonical_prediction(text, 5)
            if canon in ("yes", "no"):
                result = canon
            elif _PLAIN_NUMBER.fullmatch(canon):
                result = round(float(canon), 5)
            else:
                return False
        return execution_match(result, exe_ans)
