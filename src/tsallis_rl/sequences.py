"""The one builder of the scored sequence [x | z | forced `</think>` | answer prefix | answer].

Every place that scores a rationale followed by an answer builds it here: the trainer's rollouts
(`rollout.Rollout`), the teacher-forced gold answer y* after a sampled rationale (training,
evaluation's log P-hat, RLPR's no-rationale baseline) and the framework adapters (TRL, verl), so the
rules below hold everywhere. Pure functions on token-id lists; only `teacher_forced_batch` builds
tensors (torch is the one dependency: no transformers / trl / verl import).

Where the rationale z of a sampled completion ends (`close_rationale`), in order of position:
  * a sampled `</think>` (possibly several tokens): z ends with it, nothing is forced;
  * a sampled end token (EOS) before any `</think>`: z ends with it -- it is kept as a sampled
    rationale token (trained, so log p(z|x) contains its probability) -- and `</think>` is forced;
  * neither (the thinking budget ran out): z is the whole completion and `</think>` is forced.
Tokens after z (a sampled answer) are returned apart, never part of z.

Region labels, one per token: positive = sampled by the policy (RATIONALE, ANSWER: the answer
region of a teacher-forced sequence is the gold answer prefix + y* + end token), negative = context
the policy did not choose (PROMPT, FORCED `</think>`, ANSWER_PREFIX forced before a sampled answer),
0 = padding (PAD). So `regions > 0` selects the tokens a score-function term trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PAD = 0
RATIONALE, ANSWER = 1, 2  # sampled by the policy
FORCED, ANSWER_PREFIX, PROMPT = -1, -2, -3  # context: forced `</think>`, forced prefix, the prompt

__all__ = [
    "PAD", "RATIONALE", "ANSWER", "FORCED", "ANSWER_PREFIX", "PROMPT",
    "Closed", "close_rationale", "assemble", "teacher_forced", "TeacherForcedBatch",
    "teacher_forced_batch",
]  # fmt: skip


@dataclass(frozen=True)
class Closed:
    """A sampled completion split at the end of its rationale (see `close_rationale`)."""

    rationale: list[int]  # sampled z: up to a sampled `</think>` or end token (both kept)
    forced: list[int]  # `</think>` appended after z; empty when the model wrote it
    rest: list[int]  # sampled tokens after z (e.g. a sampled answer); not part of z

    @property
    def budget_forced(self) -> bool:
        """True when `</think>` was forced (budget spent, or an end token came first)."""
        return bool(self.forced)


def _first_end(tokens: Sequence[int], marker: Sequence[int]) -> int:
    """One past the end of the first occurrence of `marker` in `tokens`, or -1 (never for [])."""
    n = len(marker)
    if n == 0:
        return -1
    marker = list(marker)
    for i in range(len(tokens) - n + 1):
        if list(tokens[i : i + n]) == marker:
            return i + n
    return -1


def close_rationale(
    completion: Sequence[int], think_close: Sequence[int], eos_ids: Sequence[int]
) -> Closed:
    """Split a sampled completion into (rationale z, forced `</think>`, rest).

    completion: the sampled token ids after the prompt (unpadded); think_close: the ids of
    `</think>` (one or more); eos_ids: the end tokens. z ends at whichever comes first: a sampled
    `</think>` (forced = []) or a sampled end token (kept in z; forced = think_close). With neither,
    z is the whole completion and forced = think_close (budget forcing).
    """
    tokens = [int(t) for t in completion]
    close_end = _first_end(tokens, think_close)
    eos = set(int(t) for t in eos_ids)
    eos_end = next((i + 1 for i, t in enumerate(tokens) if t in eos), -1)
    if close_end >= 0 and (eos_end < 0 or close_end <= eos_end):
        return Closed(tokens[:close_end], [], tokens[close_end:])
    if eos_end >= 0:
        return Closed(tokens[:eos_end], [int(t) for t in think_close], tokens[eos_end:])
    return Closed(tokens, [int(t) for t in think_close], [])


def assemble(
    prompt: Sequence[int],
    rationale: Sequence[int],
    forced: Sequence[int],
    answer_prefix: Sequence[int],
    answer: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(tokens, regions) of [prompt | rationale | forced | answer_prefix | answer], equal lengths.

    Regions: PROMPT, RATIONALE, FORCED, ANSWER_PREFIX, ANSWER per part. A teacher-forced gold answer
    is passed whole as `answer` (its prefix + y* + end token are scored together) with
    answer_prefix = []; `answer_prefix` is the forced prefix before a *sampled* answer.
    """
    parts = (
        (prompt, PROMPT), (rationale, RATIONALE), (forced, FORCED),
        (answer_prefix, ANSWER_PREFIX), (answer, ANSWER),
    )  # fmt: skip
    tokens: list[int] = []
    regions: list[int] = []
    for ids, region in parts:
        tokens += [int(t) for t in ids]
        regions += [region] * len(ids)
    return tokens, regions


def teacher_forced(
    completion: Sequence[int],
    gold: Sequence[int],
    think_close: Sequence[int],
    eos_ids: Sequence[int],
) -> tuple[list[int], list[int], bool]:
    """The completion-side sequence z + forced `</think>` + gold answer, its regions, budget-forced.

    completion: sampled ids after the prompt; gold: the teacher-forced answer (answer prefix + y* +
    end token), labelled ANSWER. Whatever was sampled after z is dropped. Returns (tokens, regions,
    budget_forced) with tokens/regions of equal length (no prompt: prepend it when scoring).
    """
    c = close_rationale(completion, think_close, eos_ids)
    tokens, regions = assemble([], c.rationale, c.forced, [], gold)
    return tokens, regions, c.budget_forced


@dataclass
class TeacherForcedBatch:
    """Right-padded teacher-forced completions (no prompt), [N, T] each except budget_forced [N]."""

    ids: Tensor  # long, pad_id after each row's end
    attention_mask: Tensor  # long, 1 on real tokens
    regions: Tensor  # long, `sequences` labels; PAD (0) on padding
    budget_forced: Tensor  # bool [N]

    @property
    def rationale_mask(self) -> Tensor:
        """long [N, T]: 1 on the sampled rationale tokens (z; in completion positions)."""
        return (self.regions == RATIONALE).long()

    @property
    def answer_mask(self) -> Tensor:
        """long [N, T]: 1 on the teacher-forced answer tokens (prefix + y* + end token)."""
        return (self.regions == ANSWER).long()


def teacher_forced_batch(
    completions: Sequence[Sequence[int]],
    golds: Sequence[Sequence[int]],
    think_close: Sequence[int],
    eos_ids: Sequence[int],
    pad_id: int,
) -> TeacherForcedBatch:
    """`teacher_forced` for N completions, right-padded to the longest row (CPU tensors).

    completions: N unpadded sampled completions; golds: N gold answers (prefix + y* + end token).
    z keeps its tokens' positions in the completion, so per-token log-probs of the sampled
    completion (e.g. PPO's old log-probs) line up with the rationale region.
    """
    rows = [teacher_forced(c, g, think_close, eos_ids) for c, g in zip(completions, golds)]
    if not rows:
        raise ValueError("teacher_forced_batch needs at least one completion")
    width = max(len(t) for t, _, _ in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    regions = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, (toks, regs, _) in enumerate(rows):
        ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[i, : len(toks)] = 1
        regions[i, : len(regs)] = torch.tensor(regs, dtype=torch.long)
    forced = torch.tensor([f for _, _, f in rows], dtype=torch.bool)
    return TeacherForcedBatch(ids, mask, regions, forced)
