r"""The teacher-forced splice for verl: a rollout batch [x, z, y-hat] -> [x, z, </think>, y*, end].

Used by the trainer of `verl_trainer` (algorithm.tsallis_weight=teacher_forced) before its actor
update. verl's rollout batch (a `DataProto`) holds, per row i of bs:

    prompts        [bs, P]      left-padded prompt ids
    responses      [bs, R]      right-padded sampled completion ids
    attention_mask [bs, P + R]  1 on real tokens of both
    position_ids   [bs, P + R]  (1-D rope only: a [bs, 4, P + R] multimodal layout is refused)

`splice_teacher_forced` keeps each prompt as it is and rebuilds each completion with the project's
one builder (`tsallis_rl.sequences.teacher_forced_batch`: z ends at the first sampled `</think>`,
which may be several tokens, or at a sampled end token, which z keeps; `</think>` is forced after
z when the model did not write it; the sampled answer is dropped; the gold answer prefix + y* + end
token follows). The new responses are right-padded to the longest row, position ids are rebuilt
from the attention mask as verl builds them, and `response_mask` is 1 on the tokens the policy is
trained on (z and the gold answer) and 0 on forced tokens and padding. Every other field (the
rollout's log-probs, rewards, advantages) is dropped: it describes the sampled tokens, not these.

`token_advantages` lays the per-row coefficients of `verl.sequence_coefficients` over the tokens:
the rationale advantage on z, the answer (pathwise) advantage on the gold tokens, 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from verl import DataProto

from tsallis_rl.sequences import TeacherForcedBatch, teacher_forced_batch

__all__ = [
    "Spliced",
    "answer_log_weights",
    "describe",
    "gold_answers",
    "splice_teacher_forced",
    "token_advantages",
]


@dataclass
class Spliced:
    """The spliced batch and the region masks of its responses ([bs, R'] long each)."""

    batch: DataProto  # prompts, responses, input_ids, attention_mask, position_ids, response_mask
    rationale_mask: Tensor  # 1 on sampled z (incl. a sampled </think> or end token)
    answer_mask: Tensor  # 1 on the gold answer prefix + y* + end token
    budget_forced: Tensor  # [bs] bool: </think> was forced


def gold_answers(
    non_tensor_batch: Mapping[str, np.ndarray], encode: Callable[[str], list[int]]
) -> list[list[int]]:
    """The gold answer ids of every row from verl's `reward_model.ground_truth` column.

    encode: ground-truth text -> ids of answer prefix + y* + end token. A missing column or a
    missing/None ground truth raises a ValueError naming the field.
    """
    if "reward_model" not in non_tensor_batch:
        raise ValueError(
            "algorithm.tsallis_weight=teacher_forced needs each row's gold answer in the data "
            "field reward_model.ground_truth (what `tsallis-rl export verl` writes); the batch has "
            f"no reward_model column (columns: {sorted(non_tensor_batch)})"
        )
    golds = []
    for i, info in enumerate(non_tensor_batch["reward_model"]):
        truth = info.get("ground_truth") if isinstance(info, Mapping) else None
        if truth is None:
            raise ValueError(f"row {i}: reward_model.ground_truth is missing (needed as y*)")
        golds.append(encode(str(truth)))
    return golds


def _completions(responses: Tensor, response_attention: Tensor) -> list[list[int]]:
    """The unpadded sampled completions: each row's response tokens where the attention mask is 1."""
    return [row[m.bool()].tolist() for row, m in zip(responses, response_attention)]


def splice_teacher_forced(
    batch: DataProto,
    golds: Sequence[Sequence[int]],
    think_close: Sequence[int],
    eos_ids: Sequence[int],
    pad_id: int,
) -> Spliced:
    """[x, z, </think>, y*] rows for the actor from a rollout batch (see the module docstring).

    golds: bs gold answers (prefix + y* + end token ids). Keeps `uid` (and every other non-tensor
    column) and the meta info, with `global_token_num` recomputed for the new lengths.
    """
    td = batch.batch
    prompts, responses, attention = td["prompts"], td["responses"], td["attention_mask"]
    if td["position_ids"].dim() != 2:
        raise ValueError(
            "the teacher-forced splice supports 1-D position ids only (text models), got "
            f"position_ids of shape {tuple(td['position_ids'].shape)}"
        )
    bs, P = prompts.shape
    if len(golds) != bs:
        raise ValueError(f"{len(golds)} gold answers for a batch of {bs} rows")
    prompt_attention = attention[:, :P]
    built: TeacherForcedBatch = teacher_forced_batch(
        _completions(responses, attention[:, P:]), golds, think_close, eos_ids, pad_id
    )
    new_attention = torch.cat([prompt_attention, built.attention_mask.to(attention.dtype)], dim=1)
    rationale, answer = built.rationale_mask, built.answer_mask
    tensors = {
        "prompts": prompts,
        "responses": built.ids,
        "input_ids": torch.cat([prompts, built.ids], dim=1),
        "attention_mask": new_attention,
        # verl's own rule (verl.utils.model.compute_position_id_with_mask) for left-padded prompts
        "position_ids": torch.clip(torch.cumsum(new_attention, dim=-1) - 1, min=0),
        "response_mask": (rationale + answer).to(attention.dtype),
    }
    meta = dict(batch.meta_info)
    meta["global_token_num"] = new_attention.sum(dim=-1).tolist()
    out = DataProto.from_dict(
        tensors=tensors, non_tensors=dict(batch.non_tensor_batch), meta_info=meta
    )
    return Spliced(out, rationale, answer, built.budget_forced)


def token_advantages(
    rationale_adv: Tensor, answer_adv: Tensor, rationale_mask: Tensor, answer_mask: Tensor
) -> Tensor:
    """Per-token advantages [bs, R'] float32: rationale_adv [bs] on z, answer_adv [bs] on y*."""
    adv = (
        rationale_adv.double()[:, None] * rationale_mask
        + answer_adv.double()[:, None] * answer_mask
    )
    return adv.float()


def answer_log_weights(old_log_probs: Tensor, answer_mask: Tensor) -> Tensor:
    """log w = log p(y*|x, z) [bs] float64: the actor's token log-probs summed over the gold answer."""
    return (old_log_probs.double() * answer_mask.double()).sum(dim=-1)


def describe(spliced: Spliced, log_w: Tensor) -> dict[str, Any]:
    """Metrics of one splice (logged under tsallis/): mean log w, forced fraction, lengths."""
    return {
        "tsallis/answer_logp": log_w.mean().item(),
        "tsallis/frac_budget_forced": spliced.budget_forced.double().mean().item(),
        "tsallis/rationale_length": spliced.rationale_mask.sum(-1).double().mean().item(),
    }
