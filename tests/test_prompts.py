"""The prompt formatter renders the exact prompt text and token ids the model is trained on."""

from __future__ import annotations

from tsallis_rl.config import TrainConfig


def test_chat_template_prompts_open_a_think_block_and_prefix_the_answer(tiny_model_dir):
    from transformers import AutoTokenizer

    from tsallis_rl.prompts import PromptFormatter
    from tsallis_rl.tasks import get_task

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}Q:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}A {% endif %}"
    task = get_task("chainsum")
    ex = task.load(n=1)[0]
    enc = PromptFormatter.build(tok, task, TrainConfig(model="x"))
    assert enc.chat and enc.answer_prefix == "\n\n"
    assert enc.prompt_text(ex) == f"Q:{task.build_prompt(ex, 'cold')}A <think>"
    plain = PromptFormatter.build(tok, task, TrainConfig(model="x", chat_template="off"))
    assert (
        plain.prompt_text(ex) == task.build_prompt(ex, "cold") + "<think>"
        and plain.answer_prefix == ""
    )


def test_gold_target_mask_marks_y_star_alone_after_the_answer_prefix(tiny_model_dir):
    """Issue 22 item 1: y* = "42" after "\\n\\n" is 5 teacher-forced tokens, 2 of them y*."""
    from transformers import AutoTokenizer

    from tsallis_rl.prompts import PromptFormatter
    from tsallis_rl.tasks import get_task
    from tsallis_rl.tasks.base import Example

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = get_task("chainsum")
    ex = Example(id="x", question="q", answer="42")
    fmt = PromptFormatter(tok, task, "cold", chat=True, answer_prefix="\n\n")
    gold = fmt.gold(ex)
    assert len(gold) == 5 and gold[-1] == tok.eos_token_id
    assert fmt.gold_target_mask(ex) == [0, 0, 1, 1, 0]
    plain = PromptFormatter(tok, task, "cold", chat=False, answer_prefix="")
    assert plain.gold_target_mask(ex) == [1, 1, 0]


class _MergingTokenizer:
    """A slow tokenizer with no offsets that merges ": " with a following digit into one token."""

    vocab = {"A": 1, ":": 2, " ": 3, ": 4": 4, "4": 5, "2": 6}

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("no offsets for a slow tokenizer")
        ids, i = [], 0
        while i < len(text):
            if text[i : i + 3] == ": 4":
                ids.append(4)
                i += 3
            else:
                ids.append(self.vocab[text[i]])
                i += 1
        return {"input_ids": ids}


def test_target_span_without_offsets_takes_the_tokens_after_the_common_prefix():
    from tsallis_rl.prompts import target_span

    # "A: " alone is [A, :, " "]; "A: 42" is [A, ": 4", 2]: the merged token holds y*'s "4"
    assert target_span(_MergingTokenizer(), "A: ", "42") == [0, 1, 1]
    assert target_span(_MergingTokenizer(), "", "42") == [1, 1]


def test_target_span_with_offsets_marks_the_tokens_holding_y_star_characters(tiny_model_dir):
    from transformers import AutoTokenizer

    from tsallis_rl.prompts import target_span

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert target_span(tok, "x=", "12") == [0, 0, 1, 1]
