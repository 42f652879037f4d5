"""The prompt formatter: examples -> the exact prompt text / token ids a model is trained on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsallis_rl.config import ConfigError, TrainConfig
from tsallis_rl.rollout import Rollout, SamplingSettings
from tsallis_rl.tasks.base import (
    THINK_CLOSE,
    Example,
    Task,
    default_answer_prefix,
    format_for_model,
)


@dataclass
class PromptFormatter:
    """Turns examples into the exact text and token ids the model sees (prompt, gold answer, markers).

    One source of truth for prompts: the trainer, `tsallis-rl data show` and the length check
    before training all render through it.
    """

    tokenizer: Any
    task: Task
    regime: str
    chat: bool
    answer_prefix: str

    @classmethod
    def build(cls, tokenizer: Any, task: Task, cfg: TrainConfig) -> PromptFormatter:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        chat = {"auto": has_template, "on": True, "off": False}[cfg.chat_template]
        if chat and not has_template:
            raise ConfigError("chat_template = 'on' but the tokenizer has no chat template")
        auto = cfg.answer_prefix == "auto"
        prefix = default_answer_prefix(chat=chat) if auto else cfg.answer_prefix
        return cls(tokenizer, task, cfg.regime, chat, prefix)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, ex: Example) -> str:
        return format_for_model(
            self.task.build_prompt(ex, self.regime), self.tokenizer, chat=self.chat
        )

    def prompt(self, ex: Example) -> list[int]:
        text = self.prompt_text(ex)
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def gold(self, ex: Example) -> list[int]:
        """The teacher-forced answer: prefix + y* + end token."""
        return self.ids(self.answer_prefix + self.task.target(ex)) + [self.tokenizer.eos_token_id]

    def gold_target_mask(self, ex: Example) -> list[int]:
        """1 on the tokens of `gold(ex)` that hold y*, 0 on the answer prefix and the end token.

        RLPR's reward averages token probabilities over the ground-truth span alone (its trainer
        locates the y* substring); this mask, aligned with `gold(ex)`, carries that span.
        """
        span = target_span(self.tokenizer, self.answer_prefix, self.task.target(ex))
        return span + [0]

    @property
    def think_close(self) -> list[int]:
        return self.ids(THINK_CLOSE)

    @property
    def eos_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def decode(self, r: Rollout) -> str:
        return self.tokenizer.decode(r.completion, skip_special_tokens=True)


def target_span(tokenizer: Any, prefix: str, target: str) -> list[int]:
    """1/0 per token of ids(prefix + target): 1 where the token holds a character of `target`.

    A fast tokenizer's character offsets decide it exactly (a token merging the prefix's last
    characters with y*'s first counts as y*). Without offsets: the tokens after the longest common
    prefix of ids(prefix) and ids(prefix + target).
    """
    text = prefix + target
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        offsets = None
    if offsets is not None:
        start, end = len(prefix), len(text)
        return [int(a < end and b > start) for a, b in offsets]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    head = list(tokenizer(prefix, add_special_tokens=False)["input_ids"]) if prefix else []
    common = 0
    while common < min(len(ids), len(head)) and ids[common] == head[common]:
        common += 1
    return [0] * common + [1] * (len(ids) - common)


def sampling_settings(
    fmt: PromptFormatter, cfg: TrainConfig, *, answer_budget: int, temperature: float
) -> SamplingSettings:
    """The rollout settings of `cfg` for this formatter's markers: training (cfg.temperature) or
    evaluation (cfg.eval_temperature, answers sampled to answer_budget). Trainer and eval share it."""
    return SamplingSettings(
        think_close=tuple(fmt.think_close), eos_ids=tuple(fmt.eos_ids), pad_id=fmt.pad_id,
        thinking_budget=cfg.thinking_budget, answer_budget=answer_budget,
        answer_prefix=tuple(fmt.ids(fmt.answer_prefix)), temperature=temperature,
        top_p=cfg.top_p, batch_size=cfg.gen_batch_size, sampler=cfg.sampler,
        share_prompt=cfg.share_prompt,
    )  # fmt: skip
