"""Rollouts: sample rationales with a thinking budget, then score log-probs in micro-batches.

Sampling (`sample`) runs one KV-cache loop over any HF causal LM. Each row writes its rationale until
it emits `</think>` or spends `thinking_budget` tokens; a row that hits the budget gets `</think>`
forced (budget forcing). With `answer_budget > 0` the row then samples its answer until the end token.

Scoring (`score`) runs ONE forward pass over [prompt | rationale | forced </think> | answer] and
returns per-token log-probs of the completion, labelled by region, so that rationale_logp (sampled
rationale tokens), answer_logp (teacher-forced or sampled answer tokens) and GRPO's token log-probs
all come from the same pass. Forced tokens belong to neither region. Only the completion's logits
are computed (`logits_to_keep`), one micro-batch at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PROMPT, RATIONALE, ANSWER = 0, 1, 2  # region labels; PROMPT also marks forced tokens


@dataclass
class Rollout:
    """One sampled completion for one prompt. Token ids only; text is decoded on demand."""

    prompt: list[int]
    rationale: list[int]  # sampled, including a sampled `</think>` if the model closed it
    forced: list[int]  # `</think>` appended by budget forcing (empty if the model closed it)
    answer: list[int]  # sampled answer tokens (empty until an answer is sampled or attached)

    @property
    def hit_budget(self) -> bool:
        return bool(self.forced)

    def tokens_and_regions(self) -> tuple[list[int], list[int]]:
        completion = self.rationale + self.forced + self.answer
        regions = [RATIONALE] * len(self.rationale) + [PROMPT] * len(self.forced)
        regions += [ANSWER] * len(self.answer)
        return self.prompt + completion, [PROMPT] * len(self.prompt) + regions

    def with_answer(self, answer: list[int]) -> Rollout:
        """A copy whose answer region is `answer` (e.g. the teacher-forced gold answer)."""
        return Rollout(self.prompt, self.rationale, self.forced, list(answer))


def _ends_with(seq: list[int], suffix: Sequence[int]) -> bool:
    n = len(suffix)
    return n > 0 and len(seq) >= n and seq[-n:] == list(suffix)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    think_close: Sequence[int],
    eos_ids: Sequence[int],
    pad_id: int,
    thinking_budget: int,
    answer_budget: int = 0,
    answer_prefix: Sequence[int] = (),
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> list[Rollout]:
    """Sample one rollout per prompt (repeat a prompt M times for M rollouts), `batch_size` rows at once.

    With answer_budget == 0 sampling stops after the rationale (GARL/PAFT teacher-force the answer).
    Otherwise `answer_prefix` is forced after `</think>` and the answer is sampled until an end token.
    """
    out: list[Rollout] = []
    for start in range(0, len(prompts), batch_size):
        out += _sample_batch(
            model, prompts[start : start + batch_size], list(think_close), set(eos_ids), pad_id,
            thinking_budget, answer_budget, list(answer_prefix), temperature, top_p, generator,
        )  # fmt: skip
    return out


def _pick(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> Tensor:
    """Next tokens [N] from logits [N, V]: greedy at temperature 0, else (nucleus) sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    if generator is not None and generator.device != probs.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


def _sample_batch(
    model, prompts, close, eos, pad_id, budget, ans_budget, ans_prefix, temp, top_p, gen
):
    device = next(model.parameters()).device
    n, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    try:  # prefill: only the last position's logits are needed
        res = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
    except TypeError:  # models without logits_to_keep
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache_key = (
        "cache" if "cache" in res.keys() else "past_key_values"
    )  # renamed in transformers 5.2x
    past, logits = res[cache_key], res.logits[:, -1]
    next_pos = mask.sum(-1, keepdim=True)
    rows = [Rollout(list(p), [], [], []) for p in prompts]
    queue: list[list[int]] = [[] for _ in range(n)]  # tokens still to force per row
    phase = ["rationale"] * n  # rationale -> (force) -> answer -> done
    for _ in range(budget + len(close) + len(ans_prefix) + ans_budget + 1):
        picked = _pick(logits, temp, top_p, gen).tolist()
        feed, alive = [pad_id] * n, [0] * n
        for i in range(n):
            if phase[i] == "done":
                continue
            r = rows[i]
            if queue[i]:
                tok = queue[i].pop(0)
                (r.answer if phase[i] == "answer" else r.forced).append(tok)
            elif phase[i] == "rationale":
                tok = picked[i]
                r.rationale.append(tok)
            else:
                tok = picked[i]
                r.answer.append(tok)
            feed[i], alive[i] = tok, 1
            if phase[i] == "rationale":
                closed = _ends_with(r.rationale, close) or _ends_with(r.forced, close)
                if not closed and len(r.rationale) >= budget and not queue[i] and not r.forced:
                    queue[i] = list(close)  # budget forcing
                elif closed and not queue[i]:
                    phase[i] = "answer" if ans_budget > 0 else "done"
                    if phase[i] == "answer":
                        queue[i] = list(ans_prefix)
            elif phase[i] == "answer" and not queue[i]:
                sampled = len(r.answer) - len(ans_prefix)
                if sampled > 0 and (tok in eos or sampled >= ans_budget):
                    phase[i] = "done"
        if all(ph == "done" for ph in phase):
            break
        step_ids = torch.tensor(feed, dtype=torch.long, device=device)[:, None]
        step_mask = torch.tensor(alive, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([mask, step_mask], dim=1)
        res = model(
            input_ids=step_ids, attention_mask=mask, position_ids=next_pos,
            use_cache=True, **{cache_key: past},
        )  # fmt: skip
        past, logits = res[cache_key], res.logits[:, -1]
        next_pos = next_pos + step_mask
    return rows


def score(
    model: torch.nn.Module,
    rollouts: Sequence[Rollout],
    *,
    pad_id: int,
    micro_batch: int = 16,
) -> tuple[Tensor, Tensor]:
    """Log-probs of every completion token and its region, from one forward pass per micro-batch.

    Returns (token_logp [N, T], regions [N, T]) where T is the longest completion; padding has
    region PROMPT (0) and log-prob 0. Gradient flows when called with grad enabled.
    """
    chunks = [
        _score_chunk(model, rollouts[s : s + micro_batch], pad_id)
        for s in range(0, len(rollouts), micro_batch)
    ]
    width = max(c[0].shape[1] for c in chunks)
    logps = torch.cat([torch.nn.functional.pad(c[0], (0, width - c[0].shape[1])) for c in chunks])
    regions = torch.cat([torch.nn.functional.pad(c[1], (0, width - c[1].shape[1])) for c in chunks])
    return logps, regions


def _score_chunk(model, rollouts: Sequence[Rollout], pad_id: int) -> tuple[Tensor, Tensor]:
    device = next(model.parameters()).device
    seqs = [r.tokens_and_regions() for r in rollouts]
    n, width = len(seqs), max(len(t) for t, _ in seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    starts = [len(r.prompt) for r in rollouts]
    comp_len = max(len(t) - s for (t, _), s in zip(seqs, starts))
    regions = torch.zeros((n, comp_len), dtype=torch.long)
    for i, ((toks, regs), s) in enumerate(zip(seqs, starts)):  # right padding
        ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[i, : len(toks)] = 1
        regions[i, : len(toks) - s] = torch.tensor(regs[s:], dtype=torch.long)
    ids, mask, regions = ids.to(device), mask.to(device), regions.to(device)
    first = min(starts)  # logits at positions first-1 .. width-2 predict tokens first .. width-1
    keep = width - first + 1
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -keep:]
    logits = logits[:, :-1].float()  # [n, W, V]: position j predicts token first + j
    tok_logp = logits.gather(-1, ids[:, first:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    offs = (
        torch.tensor(starts, device=device)[:, None] - first + torch.arange(comp_len, device=device)
    )
    logp = tok_logp.gather(1, offs.clamp(max=tok_logp.shape[1] - 1))  # [n, comp_len]
    valid = (
        torch.arange(comp_len, device=device)[None, :]
        < torch.tensor([len(t) - s for (t, _), s in zip(seqs, starts)], device=device)[:, None]
    )
    return logp * valid, regions * valid
