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
