"""The one sequence builder: where a rationale ends, what is forced, and the region of every token."""

import pytest
import torch

from tsallis_rl.sequences import (
    ANSWER,
    ANSWER_PREFIX,
    FORCED,
    PAD,
    PROMPT,
    RATIONALE,
    assemble,
    close_rationale,
    teacher_forced,
    teacher_forced_batch,
)

EOS, CLOSE = 1, (3, 4)  # a two-token `</think>`


def test_labels_are_distinct_and_only_sampled_regions_are_positive():
    labels = [PAD, RATIONALE, ANSWER, FORCED, ANSWER_PREFIX, PROMPT]
    assert len(set(labels)) == len(labels) and PAD == 0
    assert {x for x in labels if x > 0} == {RATIONALE, ANSWER}


def test_a_sampled_multi_token_close_ends_the_rationale_and_nothing_is_forced():
    c = close_rationale([10, 3, 11, 3, 4, 20, EOS], CLOSE, [EOS])  # a lone 3 is not the marker
    assert (c.rationale, c.forced, c.rest) == ([10, 3, 11, 3, 4], [], [20, EOS])
    assert not c.budget_forced


def test_a_sampled_end_token_is_kept_in_the_rationale_and_close_is_forced():
    c = close_rationale([10, 11, EOS], CLOSE, [EOS])
    assert (c.rationale, c.forced, c.rest) == ([10, 11, EOS], [3, 4], [])
    assert c.budget_forced
    # an end token before a later marker ends z there; one after the marker belongs to the rest
    assert close_rationale([10, EOS, 3, 4], CLOSE, [EOS]).rationale == [10, EOS]
    assert close_rationale([10, 3, 4, EOS], CLOSE, [EOS]).rest == [EOS]


def test_a_spent_budget_keeps_every_token_and_forces_the_whole_marker():
    c = close_rationale([10, 11, 3], CLOSE, [EOS])  # half a marker at the cut is still rationale
    assert (c.rationale, c.forced, c.rest) == ([10, 11, 3], [3, 4], [])


def test_assemble_labels_each_part():
    toks, regs = assemble([7, 8], [10, EOS], [3, 4], [20], [21, EOS])
    assert toks == [7, 8, 10, EOS, 3, 4, 20, 21, EOS]
    assert regs == [PROMPT] * 2 + [RATIONALE] * 2 + [FORCED] * 2 + [ANSWER_PREFIX, ANSWER, ANSWER]


def test_teacher_forced_drops_the_sampled_answer_and_scores_the_gold_one():
    toks, regs, forced = teacher_forced([10, 3, 4, 99, EOS], [20, 21, EOS], CLOSE, [EOS])
    assert toks == [10, 3, 4, 20, 21, EOS] and not forced
    assert regs == [RATIONALE] * 3 + [ANSWER] * 3


@pytest.mark.parametrize("pad_id", [0, 5])
def test_teacher_forced_batch_right_pads_with_pad_regions(pad_id):
    b = teacher_forced_batch([[10, EOS], [10, 11, 12]], [[20, EOS]] * 2, CLOSE, [EOS], pad_id)
    assert b.ids.tolist() == [[10, EOS, 3, 4, 20, EOS, pad_id], [10, 11, 12, 3, 4, 20, EOS]]
    assert b.attention_mask.tolist() == [[1] * 6 + [0], [1] * 7]
    assert b.regions[0].tolist() == [RATIONALE] * 2 + [FORCED] * 2 + [ANSWER] * 2 + [PAD]
    assert b.rationale_mask.tolist() == [[1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]]
    assert b.answer_mask.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert b.budget_forced.tolist() == [True, True] and b.ids.dtype == torch.long
