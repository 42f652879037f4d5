"""Chain-sum: the synthetic task behind the CPU cold-start default (no data files needed).

Problems are sums of single digits, solved by a chain rationale of running totals:

    warm:  Q:1+6+5+8=?<think>1+6=7;7+5=12;12+8=20</think>A:20<eos>
    cold:  1 6 5 8<think>1+6=7;7+5=12;12+8=20</think>02<eos>

The warm form (and six other surface forms of the input) is what the base model is pretrained on.
The cold form is the same problem linearised (no `Q:`, no `=?`, spaces between operands) with a gold
answer in a form the base model never produces: the digits of the sum reversed, with no `A:`. The
answer needs the intermediate sums, so the rationale matters. Everything is generated from a seed.

The difficulty dial `chainsum?dial=D` (D = 0..4, `DIAL_FORMS`) keeps the cold prompt and picks how
far the gold answer departs from the warm `A:<sum>`, which sets the base model's initial success
probability p0 (measured from ~1 down to ~1e-17); dial 3 is the default cold answer. It drives
`tsallis-rl study escape`. Without `dial`, `answer_form` chooses reversed (default) or warm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tsallis_rl.errors import ConfigError
from tsallis_rl.tasks.base import THINK_CLOSE, THINK_OPEN, Example, Task, register_task

ALPHABET = "0123456789+=?:;QA "

# (prefix, separator, suffix) of the input; the cold form is ("", " ", "")
SURFACE_FORMS = [(p, s, x) for p in ("Q:", "") for s in ("+", " ") for x in ("=?", "")]
COLD_FORM = ("", " ", "")
WARM_FORM = ("Q:", "+", "=?")


# The difficulty dial: gold-answer templates ({s} = the sum, {r} = its digits reversed), each one a
# further departure from the warm answer `A:<sum>` that the base model writes: drop ':', drop 'A:',
# reverse the digits (dial 3 = the default cold answer), write them twice. The prompt stays cold.
# Initial mean log P-hat measured with the default base model (cold prompt, 64 validation problems
# x 8 rationales, seeds 0 / 1, one 2-core CPU): dial 0: -0.04 / -0.07, 1: -12.5 / -13.3,
# 2: -18.2 / -19.3, 3: -25.7 / -25.3, 4: -39.7 / -40.0, i.e. p0 from ~1 through 1e-5 to 1e-17.
DIAL_FORMS: tuple[str, ...] = ("A:{s}", "A{s}", "{s}", "{r}", "{r}{r}")


def answer_for_dial(total: int, dial: int) -> str:
    """The gold answer of dial setting `dial` for a problem whose sum is `total`."""
    return DIAL_FORMS[dial].format(s=total, r=str(total)[::-1])


def rationale(operands: list[int]) -> str:
    """The chain of running totals, e.g. [1, 6, 5, 8] -> '1+6=7;7+5=12;12+8=20'."""
    steps, total = [], operands[0]
    for d in operands[1:]:
        steps.append(f"{total}+{d}={total + d}")
        total += d
    return ";".join(steps)


def render_input(operands: list[int], form: tuple[str, str, str]) -> str:
    prefix, sep, suffix = form
    return prefix + sep.join(str(d) for d in operands) + suffix


def warm_document(operands: list[int], form: tuple[str, str, str]) -> str:
    """One pretraining document: input, rationale in a think block, `A:<sum>` (eos added by caller)."""
    return f"{render_input(operands, form)}{THINK_OPEN}{rationale(operands)}{THINK_CLOSE}A:{sum(operands)}"


@dataclass
class ChainSumSpec:
    """Problem sizes: `num_operands` digits in [low, high] per problem."""

    num_operands: int = 4
    low: int = 1
    high: int = 9


@register_task("chainsum")
class ChainSumTask(Task):
    """Sum of single digits with a chain rationale; cold regime answers the reversed sum."""

    name = "chainsum"
    needs_path = False
    eval_match = "exact"  # answers are short numbers: substring match would reward '102' for '02'

    def __init__(
        self,
        num_operands: int = 4,
        low: int = 1,
        high: int = 9,
        answer_form: str = "reversed",
        dial: int | None = None,
    ) -> None:
        for key, value in (("num_operands", num_operands), ("low", low), ("high", high)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"chainsum: {key} must be an integer, got {value!r}")
        if num_operands < 2 or not (0 <= low <= high <= 9):
            raise ConfigError("chainsum needs num_operands >= 2 and 0 <= low <= high <= 9")
        if answer_form not in ("reversed", "warm"):
            raise ConfigError(f"answer_form must be 'reversed' or 'warm', got {answer_form!r}")
        if dial is not None and (
            not isinstance(dial, int) or isinstance(dial, bool) or not 0 <= dial < len(DIAL_FORMS)
        ):
            raise ConfigError(
                f"chainsum: dial must be an integer in 0..{len(DIAL_FORMS) - 1}, got {dial!r}"
            )
        self.spec = ChainSumSpec(num_operands, low, high)
        self.answer_form = answer_form
        self.dial = dial
        if dial is not None:
            self.name = f"chainsum?dial={dial}"

    def _problem(self, rng: random.Random) -> list[int]:
        return [rng.randint(self.spec.low, self.spec.high) for _ in range(self.spec.num_operands)]

    def _example(self, operands: list[int], idx: str) -> Example:
        total = sum(operands)
        return Example(
            id=idx,
            question=" ".join(map(str, operands)),
            answer=self.render_answer(total),
            meta={"operands": operands, "sum": total, "rationale": rationale(operands)},
        )

    def render_answer(self, total: int) -> str:
        """The gold answer y*: the dial's form, else `answer_form` (reversed digits or `A:<sum>`)."""
        if self.dial is not None:
            return answer_for_dial(total, self.dial)
        return str(total)[::-1] if self.answer_form == "reversed" else f"A:{total}"

    def load(
        self,
        path: str | Path | None = None,
        *,
        skip_invalid: bool = False,
        n: int = 100,
        seed: int = 0,
    ) -> list[Example]:
        """`n` seeded problems (path is ignored: the task is generated)."""
        rng = random.Random(seed)
        return [self._example(self._problem(rng), f"chainsum-{seed}-{i}") for i in range(n)]

    def splits(
        self,
        path: str | Path | None = None,
        *,
        train_size: int = 2000,
        val_size: int = 50,
        test_size: int = 200,
        seed: int = 0,
        skip_invalid: bool = False,
    ) -> dict[str, list[Example]]:
        """Disjoint seeded train/val/test problem sets (no operand tuple appears in two splits).

        Takes the file tasks' keywords; `skip_invalid` has nothing to skip (problems are generated,
        never invalid) and `path` is ignored.
        """
        rng = random.Random(seed)
        seen: set[tuple[int, ...]] = set()
        out: dict[str, list[Example]] = {}
        for split, size in (("test", test_size), ("val", val_size), ("train", train_size)):
            items: list[Example] = []
            while len(items) < size:
                ops = self._problem(rng)
                if tuple(ops) in seen and split != "train":
                    continue
                if split != "train":
                    seen.add(tuple(ops))
                elif tuple(ops) in seen:
                    continue
                items.append(self._example(ops, f"{split}-{len(items)}"))
            out[split] = items
        return out

    def noisy_answer(self, ex: Example, pool: dict[str, list[str]], rng: random.Random) -> str:
        """A wrong answer for the `?noise=` option: another sum with as many digits as the true
        one (never the true one), rendered in the task's answer form; `pool` is not needed."""
        total = ex.meta["sum"]
        digits = len(str(total))
        low = 0 if digits == 1 else 10 ** (digits - 1)
        wrong = rng.choice([s for s in range(low, 10**digits) if s != total])
        return self.render_answer(wrong)

    def build_prompt(self, ex: Example, regime: str = "warm") -> str:
        form = COLD_FORM if regime == "cold" else WARM_FORM
        return render_input(ex.meta["operands"], form)

    def rationale_correct(self, completion: str, ex: Example) -> bool:
        """Whether the sampled rationale is the exact chain of running totals."""
        body = completion.split(THINK_CLOSE)[0]
        return body.strip() == ex.meta["rationale"]
