"""How a prompt reaches the model: the tokenizer's chat template (when it has one) around the
user content, ending inside an open `<think>` block, and the text between `</think>` and the
answer. One rule for the own trainer, `data show` and the TRL/verl adapters."""

from __future__ import annotations

from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def format_for_model(content: str, tokenizer: Any = None, *, chat: bool | None = None) -> str:
    """The exact prompt text the model sees: chat template (if any) + an opened `<think>` block.

    With a tokenizer that has a chat template (and chat not False), the content becomes one user
    turn rendered with `add_generation_prompt=True` (Qwen3: `enable_thinking=True`); the template's
    own `<think>` opener is reused when it writes one. Without a template the content is used as
    is. Either way the prompt ends inside an open thinking block, so sampling writes the rationale.
    """
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    text = content
    if use_chat and tokenizer is not None:
        msgs = [{"role": "user", "content": content}]
        try:
            text = tokenizer.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True, enable_thinking=True
            )
        except TypeError:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if text.rstrip().endswith(THINK_OPEN):
        return text
    return text + THINK_OPEN


def default_answer_prefix(tokenizer: Any = None, *, chat: bool | None = None) -> str:
    """Text between `</think>` and the answer when none is set: "\n\n" for chat-template prompts
    (Qwen3's own layout), "" without a template. One rule for the own trainer and the TRL adapter."""
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    return "\n\n" if use_chat else ""
