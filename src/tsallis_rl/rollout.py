"""Rollouts: sample rationales with a thinking budget, then score token log-probs in micro-batches.

Sampling (`sample`) writes each row's rationale until it emits `</think>`, emits an end token (kept
as a sampled rationale token: it closes the rationale) or spends `thinking_budget` tokens;
`</think>` is then forced where the model did not write it (budget forcing; the rules are
`sequences.close_rationale`). With `answer_budget > 0` the answer prefix is forced and the answer
sampled until an end token. Two samplers do this, selected by `SamplingSettings.sampler` (registry
`SAMPLERS`): "generate" (transformers' `generate`, two calls: rationale, then answer) and "loop" (one
hand-written KV-cache loop); "auto" picks the faster one per device (`DEFAULT_SAMPLER`: measured by
bench/rollout_speed.py). Greedy decoding gives identical ids in both. Randomness comes only from the
caller's `torch.Generator` (resumable: save its state), or from one seed per group of rows
(`group_seeds`), in which case a group's draws do not depend on which other rows share its batch
(evaluation sharded over ranks gives the same samples as one process).

Scoring (`token_logps`) runs one forward pass over [prompt | rationale | forced | answer prefix |
answer] (built by `sequences.assemble`) and returns each completion token's log-prob under the
sampling distribution (logits / temperature), labelled by region (`sequences`' labels). Positive
regions are tokens the policy sampled (RATIONALE, ANSWER); negative ones were forced (FORCED
`</think>`, ANSWER_PREFIX) and are never trained as sampled tokens; PAD (0) is padding. Log-probs
come from the final hidden states and the output head in token chunks (a selective log-softmax), so
memory grows with tokens x hidden, not tokens x vocabulary.

Prompt sharing (`share_prompt`, on by default): consecutive rows with the same prompt (a group: the
M rollouts of one example) run that prompt once. Scoring runs the group's prompt with grad, keeps its
keys/values (`_RecordLayer`) and runs the completions over them expanded to the group's rows
(`_PrefixLayer`, a view when the groups are equally large), so the prompt's activations exist once
and its gradient is the sum over its rollouts: the same log-probs and gradient as one pass per row.
Both caches are replay-safe, so (non-reentrant) gradient checkpointing keeps them. The loop sampler
prefills each prompt once and expands the cache; the generate sampler does the same for its
rationale call (the cache holds all prompt tokens but the last, which `generate` runs itself); its
answer call (every row a different context) does not share. `can_share_prompt` says when a model
qualifies (a transformers >= 5 decoder taking a `Cache`, full attention, no reentrant
checkpointing); otherwise, or with share_prompt=False, every row runs its own prompt.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import Tensor
from transformers import PreTrainedModel

try:  # per-layer caches (transformers >= 4.54); without them prompt sharing falls back
    from transformers.cache_utils import Cache, DynamicLayer
except ImportError:  # pragma: no cover
    Cache, DynamicLayer = None, object

from tsallis_rl.sequences import (  # noqa: F401  (the region labels, re-exported)
    ANSWER,
    ANSWER_PREFIX,
    FORCED,
    PAD,
    PROMPT,
    RATIONALE,
    assemble,
    close_rationale,
)

LOGIT_CHUNK_ELEMENTS = 1 << 24  # vocabulary logits materialised at once by `score` (64 MiB in fp32)


@dataclass
class Rollout:
    """One completion for one prompt. Token ids only; text is decoded on demand."""

    prompt: list[int]
    rationale: list[int]  # sampled, including a sampled `</think>` if the model closed it
    forced: list[int]  # `</think>` appended by budget forcing (empty if the model closed it)
    answer: list[int]  # sampled answer tokens, or the teacher-forced answer (prefix + y* + eos)
    answer_prefix: list[int] = field(default_factory=list)  # forced before a *sampled* answer
    temperature: float = 1.0  # sampled at: `score` uses logits / temperature (<= 0, greedy: 1)

    @property
    def hit_budget(self) -> bool:
        return bool(self.forced)

    @property
    def completion(self) -> list[int]:
        return self.rationale + self.forced + self.answer_prefix + self.answer

    def tokens_and_regions(self) -> tuple[list[int], list[int]]:
        """(prompt + completion, their region labels): `sequences.assemble`."""
        return assemble(self.prompt, self.rationale, self.forced, self.answer_prefix, self.answer)

    def with_answer(self, answer: list[int]) -> Rollout:
        """A copy whose answer is `answer` (e.g. the teacher-forced prefix + y* + eos), no separate prefix."""
        return Rollout(
            self.prompt, self.rationale, self.forced, list(answer), temperature=self.temperature
        )


@dataclass(frozen=True)
class SamplingSettings:
    """How rollouts are sampled: markers, budgets, temperature / top-p, batch size and sampler."""

    think_close: tuple[int, ...]
    eos_ids: tuple[int, ...]
    pad_id: int
    thinking_budget: int
    answer_budget: int = 0  # 0: stop after the rationale (the answer is teacher-forced)
    answer_prefix: tuple[int, ...] = ()
    temperature: float = 1.0  # <= 0: greedy
    top_p: float = 1.0
    batch_size: int = 256  # rows sampled at once
    sampler: str = "auto"  # auto | generate | loop
    share_prompt: bool = True  # prefill each run of equal prompts once, then expand its cache

    def __post_init__(self) -> None:
        for name in ("think_close", "eos_ids", "answer_prefix"):
            object.__setattr__(self, name, tuple(int(t) for t in getattr(self, name)))


def _ends_with(seq: Sequence[int], suffix: Sequence[int]) -> bool:
    n = len(suffix)
    return n > 0 and len(seq) >= n and list(seq[-n:]) == list(suffix)


# --------------------------------------------------------------------------------------------------
# Random draws: one stream, or one stream per contiguous group of rows


Streams = list[tuple[slice, "torch.Generator | None"]]


def _streams(
    n: int, generator: torch.Generator | None, group_seeds: Sequence[int] | None, phase: int, device
) -> Streams:
    """Which generator draws for which rows. Per-group seeds give each phase its own stream."""
    if group_seeds is None:
        return [(slice(0, n), generator)]
    size = n // len(group_seeds)
    return [
        (slice(g * size, (g + 1) * size), torch.Generator(device=device).manual_seed(2 * s + phase))
        for g, s in enumerate(group_seeds)
    ]


def _pick(
    logits: Tensor, temperature: float, top_p: float, streams: Streams, need: Tensor | None = None
) -> Tensor:
    """Next tokens [N] from logits [N, V]: greedy at temperature <= 0, else (nucleus) sampling.

    Only rows in `need` [N] bool (default all) draw; each stream draws for its rows in order.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    out = logits.argmax(-1)
    for rows, gen in streams:
        idx = torch.arange(rows.start, rows.stop, device=logits.device)
        if need is not None:
            idx = idx[need[rows].to(logits.device)]
        if idx.numel() == 0:
            continue
        p = probs[idx]
        if gen is not None and gen.device != p.device:
            p = p.to(gen.device)
        out[idx] = torch.multinomial(p, 1, generator=gen).squeeze(-1).to(logits.device)
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    *,
    generator: torch.Generator | None = None,
    group_seeds: Sequence[int] | None = None,
) -> list[Rollout]:
    """Sample one rollout per prompt (repeat a prompt M times for M rollouts).

    `group_seeds`: one seed per contiguous group of equally many rows (e.g. the k samples of one
    evaluation example); each group then draws from its own streams, independent of the batch.
    Otherwise all draws come from `generator` (None: torch's global generator).
    """
    n = len(prompts)
    step = settings.batch_size
    if group_seeds is not None:
        if not group_seeds or n % len(group_seeds):
            raise ValueError(f"{n} rows do not split into {len(group_seeds)} equal groups")
        size = n // len(group_seeds)
        step = max(size, settings.batch_size // size * size)  # batches hold whole groups
    sampler = SAMPLERS[resolve_sampler(settings.sampler, _device(model))]
    out: list[Rollout] = []
    for start in range(0, n, step):
        seeds = None
        if group_seeds is not None:
            seeds = group_seeds[start // size : (start + step) // size]
        out += sampler(model, prompts[start : start + step], settings, generator, seeds)
    return out


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


DEFAULT_SAMPLER = {"cpu": "loop"}  # per device type; anything else: "generate"


def resolve_sampler(name: str, device: torch.device) -> str:
    """The sampler `name` selects on `device` ("auto": the measured faster one there)."""
    if name == "auto":
        return DEFAULT_SAMPLER.get(torch.device(device).type, "generate")
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be auto or one of {sorted(SAMPLERS)}, got {name!r}")
    return name


def _sample_generate(model, prompts, s: SamplingSettings, generator, group_seeds) -> list[Rollout]:
    """Two `generate` calls: rationales (stop at `</think>`, an end token or the budget), answers."""
    device = _device(model)
    streams = _streams(len(prompts), generator, group_seeds, 1, device)
    new = _generate(model, prompts, s, s.thinking_budget, s.eos_ids, s.think_close, streams)
    rows = []
    for p, toks in zip(prompts, new):
        closed = close_rationale(toks, s.think_close, s.eos_ids)
        rationale, forced = closed.rationale, closed.forced
        prefix = list(s.answer_prefix) if s.answer_budget > 0 else []
        rows.append(Rollout(list(p), rationale, forced, [], prefix, s.temperature))
    if s.answer_budget <= 0:
        return rows
    streams = _streams(len(prompts), generator, group_seeds, 2, device)
    contexts = [r.prompt + r.completion for r in rows]
    answers = _generate(model, contexts, s, s.answer_budget, s.eos_ids, (), streams)
    for r, a in zip(rows, answers):
        r.answer = a
    return rows


def _generate(model, rows, s: SamplingSettings, max_new, eos, close, streams) -> list[list[int]]:
    """New tokens per row from `model.generate`, each cut after its first end token or `close`."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    ids, mask = _left_pad(rows, s.pad_id, _device(model))
    stop_ids = list(eos) + ([close[0]] if len(close) == 1 else [])
    criteria = [_EndsWith(close, ids.shape[1])] if len(close) > 1 else []
    draws = [_DrawTokens(s.temperature, s.top_p, streams)] if s.temperature > 0 else []
    cached = {}
    if s.share_prompt and ids.shape[1] > 1:  # generate continues from a cache of all but the last
        past, _, key = _prefill(model, ids[:, :-1], mask[:, :-1], rows, True, expand_only=True)
        cached = {key: past} if past is not None else {}
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, num_beams=1,
        eos_token_id=stop_ids, pad_token_id=s.pad_id, repetition_penalty=1.0,
        logits_processor=LogitsProcessorList(draws), stopping_criteria=StoppingCriteriaList(criteria),
        **cached,
    )  # fmt: skip
    return [_cut(r, eos, close) for r in out[:, ids.shape[1] :].tolist()]


def _cut(tokens: list[int], eos: Sequence[int], close: Sequence[int]) -> list[int]:
    for i, tok in enumerate(tokens):
        if tok in eos or _ends_with(tokens[: i + 1], close):
            return tokens[: i + 1]
    return tokens


class _DrawTokens:
    """A logits processor that samples with our generator(s) and leaves only the drawn token open."""

    def __init__(self, temperature: float, top_p: float, streams: Streams) -> None:
        self.temperature, self.top_p, self.streams = temperature, top_p, streams

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        tok = _pick(scores, self.temperature, self.top_p, self.streams)
        return torch.full_like(scores, float("-inf")).scatter_(1, tok[:, None], 0.0)


class _EndsWith:
    """Stopping criterion: the row's new tokens end with a multi-token `suffix` (e.g. `</think>`)."""

    def __init__(self, suffix: Sequence[int], start: int) -> None:
        self.suffix, self.start = torch.tensor(list(suffix), dtype=torch.long), start

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        n = len(self.suffix)
        if input_ids.shape[1] - self.start < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.suffix = self.suffix.to(input_ids.device)
        return (input_ids[:, -n:] == self.suffix).all(-1)


def _sample_loop(model, prompts, s: SamplingSettings, generator, group_seeds) -> list[Rollout]:
    """One KV-cache loop over both phases; forced tokens are fed without drawing."""
    device = _device(model)
    n = len(prompts)
    ids, mask = _left_pad(prompts, s.pad_id, device)
    past, logits, cache_key = _prefill(model, ids, mask, prompts, s.share_prompt)
    next_pos = mask.sum(-1, keepdim=True)
    streams = [_streams(n, generator, group_seeds, ph, device) for ph in (1, 2)]
    rows = [Rollout(list(p), [], [], [], [], s.temperature) for p in prompts]
    queue: list[list[int]] = [[] for _ in range(n)]  # tokens still to force per row
    phase = ["rationale"] * n  # rationale -> answer -> done
    for _ in range(s.thinking_budget + len(s.think_close) + len(s.answer_prefix) + s.answer_budget):
        picked = _pick_by_phase(logits, s, streams, phase, queue)
        feed, alive = [s.pad_id] * n, [0] * n
        for i in range(n):
            if phase[i] != "done":
                feed[i], alive[i] = _advance(rows[i], s, phase, queue, i, picked[i]), 1
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


def _prefill(model, ids: Tensor, mask: Tensor, prompts, share: bool, *, expand_only: bool = False):
    """The prompt pass of sampling: (cache, last-position logits [n, V] or None, cache keyword).

    ids, mask [n, W]: the left-padded prompts. With `share`, each run of equal prompts is run once
    and its cache expanded to the run's rows (the same values as one pass per row). expand_only:
    return a shared cache only, (None, None, key) when there is nothing to share.
    """
    groups = prompt_groups(prompts)
    shared = share and groups[-1] + 1 < len(prompts)
    if expand_only and not shared:
        return None, None, None
    firsts = [i for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    run_ids, run_mask = (ids[firsts], mask[firsts]) if shared else (ids, mask)
    pos = (run_mask.cumsum(-1) - 1).clamp(min=0)
    try:  # only the last position's logits are needed
        res = model(
            input_ids=run_ids, attention_mask=run_mask, position_ids=pos, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
    except TypeError:  # models without logits_to_keep
        res = model(input_ids=run_ids, attention_mask=run_mask, position_ids=pos, use_cache=True)
    key = "cache" if "cache" in res.keys() else "past_key_values"  # renamed in 5.2x
    past, logits = res[key], res.logits[:, -1]
    if not shared:
        return past, logits, key
    if not hasattr(past, "batch_select_indices"):  # a cache we cannot expand: one pass per row
        return (None, None, None) if expand_only else _prefill(model, ids, mask, prompts, False)
    rows = torch.tensor(groups, device=ids.device)
    past.batch_select_indices(rows)
    return past, logits[rows], key


def _pick_by_phase(logits, s: SamplingSettings, streams, phase, queue) -> list[int]:
    """Draws for the rows that sample this step, each from its phase's stream.

    One shared stream (training) draws for every row each step, as this sampler always has (so a
    seed reproduces earlier runs); per-group streams draw only for the rows that sample.
    """
    out = logits.argmax(-1)
    if s.temperature <= 0:
        return out.tolist()
    if len(streams[0]) == 1 and streams[0] == streams[1]:
        return _pick(logits, s.temperature, s.top_p, streams[0]).tolist()
    for ph, phase_streams in zip(("rationale", "answer"), streams):
        need = torch.tensor([p == ph and not q for p, q in zip(phase, queue)])
        if need.any():
            drawn = _pick(logits, s.temperature, s.top_p, phase_streams, need)
            out = torch.where(need.to(out.device), drawn, out)
    return out.tolist()


def _advance(r: Rollout, s: SamplingSettings, phase, queue, i: int, picked: int) -> int:
    """Record row i's next token (forced, or the drawn `picked`) and move its phase; returns it."""
    if phase[i] == "rationale":
        if queue[i]:
            tok = queue[i].pop(0)
            r.forced.append(tok)
        else:
            tok = picked
            r.rationale.append(tok)
            if tok in s.eos_ids:  # a sampled end token stays in z and closes it: force `</think>`
                queue[i] = list(s.think_close)
        if queue[i]:
            return tok
        closed = _ends_with(r.rationale, s.think_close) or _ends_with(r.forced, s.think_close)
        if closed or (not s.think_close and not r.forced and tok in s.eos_ids):
            phase[i] = "answer" if s.answer_budget > 0 else "done"
            queue[i] = list(s.answer_prefix)
        elif len(r.rationale) >= s.thinking_budget:
            queue[i] = list(s.think_close)  # budget forcing
        return tok
    if queue[i]:
        tok = queue[i].pop(0)
        r.answer_prefix.append(tok)
        return tok
    r.answer.append(picked)
    if picked in s.eos_ids or len(r.answer) >= s.answer_budget:
        phase[i] = "done"
    return picked


SAMPLERS: dict[str, Callable[..., list[Rollout]]] = {
    "generate": _sample_generate,
    "loop": _sample_loop,
}


# --------------------------------------------------------------------------------------------------
# Scoring


def token_logps(
    model: torch.nn.Module,
    rollouts: Sequence[Rollout],
    *,
    pad_id: int,
    micro_batch: int = 16,
    temperature: float | None = None,
    full_logits: bool = False,
    share_prompt: bool = True,
) -> tuple[Tensor, Tensor]:
    """Log-probs of every completion token under logits / temperature, and its region.

    temperature: None scores each rollout at the temperature it was sampled at (on-policy).
    share_prompt: consecutive rollouts of one prompt (a group) run that prompt once and continue
    from its key/value cache (`can_share_prompt`; the same values and gradient as one pass per row);
    micro-batches then hold whole groups (`micro_batch_slices`).

    Returns (token_logp [N, T], regions [N, T]) where T is the longest completion; padding has
    region PAD (0) and log-prob 0. Gradient flows when called with grad enabled. `full_logits`
    selects the reference pass through the model's own logits (all vocabulary at once, no
    sharing). temperature <= 0 (greedy sampling has no density) scores at temperature 1.
    Log-probs are float32, or float64 for a float64 model.
    """
    temps = [r.temperature if temperature is None else temperature for r in rollouts]
    temps = [t if t > 0 else 1.0 for t in temps]
    share = share_prompt and not full_logits and can_share_prompt(model)
    chunks = [
        _score_micro_batch(model, rollouts[sl], pad_id, temps[sl], full_logits, share)
        for sl in micro_batch_slices(rollouts, micro_batch, share)
    ]
    width = max(c[0].shape[1] for c in chunks)
    logps = torch.cat([torch.nn.functional.pad(c[0], (0, width - c[0].shape[1])) for c in chunks])
    regions = torch.cat([torch.nn.functional.pad(c[1], (0, width - c[1].shape[1])) for c in chunks])
    return logps, regions


def _score_micro_batch(
    model, rollouts: Sequence[Rollout], pad_id: int, temps: list[float], full_logits: bool,
    share: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    device = _device(model)
    temperature = torch.tensor(temps, dtype=torch.float32, device=device)  # [n]
    seqs = [r.tokens_and_regions() for r in rollouts]
    n, width = len(seqs), max(len(t) for t, _ in seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    starts = [len(r.prompt) for r in rollouts]
    lengths = [len(t) - s for (t, _), s in zip(seqs, starts)]
    comp_len = max(lengths)
    regions = torch.zeros((n, comp_len), dtype=torch.long)
    for i, ((toks, regs), s) in enumerate(zip(seqs, starts)):  # right padding
        ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
        mask[i, : len(toks)] = 1
        regions[i, : len(toks) - s] = torch.tensor(regs[s:], dtype=torch.long)
    ids, mask, regions = ids.to(device), mask.to(device), regions.to(device)
    # position starts[i] - 1 + j predicts completion token j of row i
    j = torch.arange(comp_len, device=device)
    pos = (torch.tensor(starts, device=device)[:, None] - 1 + j).clamp(max=width - 1)  # [n, C]
    valid = j[None, :] < torch.tensor(lengths, device=device)[:, None]  # [n, C]
    targets = ids.gather(1, (pos + 1).clamp(max=width - 1))
    first = min(starts) - 1  # earliest predicting position
    head = None if full_logits else _output_head(model)
    if comp_len == 0:
        return torch.zeros((n, 0), device=device), regions
    if head is None:
        logp = _full_pass_logp(model, ids, mask, pos, first, temperature)
        return logp * valid, regions * valid
    hidden = None
    groups = prompt_groups([r.prompt for r in rollouts])
    if share and min(starts) > 0 and groups[-1] + 1 < n:  # some prompt repeats
        hidden = _shared_hidden(model, rollouts, groups, targets, valid, pad_id)  # [n, C, H]
    if hidden is None:
        full = _final_hidden(model, ids, mask)  # [n, width, H]
        hidden = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1]))  # [n, C, H]
    h = hidden[valid]  # [K, H]
    temp = temperature[:, None].expand_as(valid)[valid]  # [K]
    out = selective_log_softmax(h, head, targets[valid], temp)
    logp = torch.zeros((n, comp_len), dtype=out.dtype, device=device).masked_scatter(valid, out)
    return logp * valid, regions * valid


def _full_pass_logp(model, ids, mask, pos, first: int, temperature: Tensor) -> Tensor:
    """The reference pass: the model's own logits [n, positions, V] from position `first` on."""
    keep = ids.shape[1] - first
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # models without logits_to_keep
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -keep:]
    logits = logits[:, :-1].float() / temperature[:, None, None]  # index m: position first + m
    tok_logp = logits.gather(-1, ids[:, first + 1 :, None]).squeeze(-1) - logits.logsumexp(-1)
    return tok_logp.gather(1, (pos - first).clamp(max=keep - 2))


@dataclass
class _Head:
    """The output head as a function of final hidden states, and the vocabulary size."""

    fn: Callable[[Tensor], Tensor]
    vocab: int


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside DDP and peft wrappers (LoRA layers stay injected in it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _output_head(model: torch.nn.Module) -> _Head | None:
    """logits = head(final hidden state), with the config's logit scaling/soft-capping; None if unknown."""
    base = _unwrap(model)
    emb = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if emb is None or weight is None or decoder is None or decoder is base:
        return None
    cfg = base.config
    scale = getattr(cfg, "logit_scale", None)  # Cohere: logits * scale
    divide = getattr(cfg, "logits_scaling", None)  # Granite: logits / scaling
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3: cap * tanh(logits / cap)

    def head(h: Tensor) -> Tensor:
        x = emb(h)
        if scale:
            x = x * scale
        if divide:
            x = x / divide
        if cap:
            x = torch.tanh(x / cap) * cap
        return x

    return _Head(head, int(weight.shape[0]))


def _final_hidden(model: torch.nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """Final (normed) hidden states [n, width, H], without the vocabulary projection."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):  # keep DDP's gradient sync
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1]
    decoder = _unwrap(model).get_decoder()
    return decoder(input_ids=ids, attention_mask=mask).last_hidden_state


def selective_log_softmax(
    hidden: Tensor, head: _Head, targets: Tensor, temperature: Tensor
) -> Tensor:
    """log softmax(head(hidden) / T)[target] per row: hidden [K, H], targets [K], T [K] -> [K].

    In float32, or float64 for float64 hidden states. Vocabulary logits exist for one chunk of rows
    at a time; under grad each chunk is recomputed in the backward pass (activation
    checkpointing), so no [K, V] tensor is ever kept.
    """
    chunk = max(1, LOGIT_CHUNK_ELEMENTS // head.vocab)
    dtype = torch.promote_types(hidden.dtype, torch.float32)

    def part(h: Tensor, t: Tensor, temp: Tensor) -> Tensor:
        logits = head.fn(h).to(dtype) / temp[:, None]
        return logits.gather(-1, t[:, None]).squeeze(-1) - logits.logsumexp(-1)

    parts = []
    for s in range(0, hidden.shape[0], chunk):
        args = (hidden[s : s + chunk], targets[s : s + chunk], temperature[s : s + chunk])
        if torch.is_grad_enabled():
            parts.append(torch.utils.checkpoint.checkpoint(part, *args, use_reentrant=False))
        else:
            parts.append(part(*args))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Prompt sharing: a group's prompt runs once; its key/value cache is expanded to the group's rows


def micro_batch_slices(rollouts: Sequence[Rollout], micro_batch: int, share: bool) -> list[slice]:
    """The rows scored together, at most `micro_batch` each (all rows when micro_batch >= N).

    Without sharing: every `micro_batch` rows, as always. With sharing: as many whole groups as fit
    in `micro_batch` rows; a group larger than that is cut into parts of `micro_batch` rows, each
    running the prompt again (measured by bench/prefix_sharing.py: whole groups are much faster, and
    a micro-batch never holds more rows than asked, so its memory stays within today's bound). The
    slicing depends on the group sizes only, so DDP ranks with equal groups run equal passes.
    """
    n, step = len(rollouts), max(int(micro_batch), 1)
    if not share or step >= n:
        return [slice(s, min(s + step, n)) for s in range(0, n, step)]
    groups = prompt_groups([r.prompt for r in rollouts])
    starts = [i for i in range(n) if i == 0 or groups[i] != groups[i - 1]] + [n]
    out: list[slice] = []
    open_at = 0  # first row of the micro-batch being filled
    for a, b in zip(starts, starts[1:]):
        if b - a > step:  # a group larger than a micro-batch: close the open one, cut the group
            if open_at < a:
                out.append(slice(open_at, a))
            out += [slice(s, min(s + step, b)) for s in range(a, b, step)]
            open_at = b
        elif b - open_at > step:  # the group does not fit: it opens the next micro-batch
            out.append(slice(open_at, a))
            open_at = a
    if open_at < n:
        out.append(slice(open_at, n))
    return out


def prompt_groups(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The group index of each row: consecutive rows with equal prompts form one group."""
    out: list[int] = []
    for i, p in enumerate(prompts):
        out.append(0 if i == 0 else out[-1] + (list(p) != list(prompts[i - 1])))
    return out


def can_share_prompt(model: torch.nn.Module) -> bool:
    """Whether `model`'s prompt cache can be computed once and expanded (else: one pass per row).

    Needs a transformers decoder that takes a `Cache` object (transformers >= 5), full attention in
    every layer (no sliding windows) and, under gradient checkpointing, the non-reentrant kind
    (the reentrant kind runs the layer without grad, so the cached keys/values would lose theirs).
    """
    if _output_head(model) is None or _cache_kwarg(model) is None:
        return False
    base = _unwrap(model)
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return False
    if layer_types is None and getattr(cfg, "sliding_window", None):
        if getattr(cfg, "use_sliding_window", True):
            return False
    for m in _checkpointed_layers(base.get_decoder()):
        if not hasattr(type(m), "_can_checkpoint_with_cache"):
            return False  # checkpointed some other way: it may drop or replay our cache
        fn = getattr(m, "_gradient_checkpointing_func", None)
        if getattr(fn, "keywords", {}).get("use_reentrant", True):
            return False
    return True


def _checkpointed_layers(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers that checkpoint themselves (not the model, whose flag only mirrors theirs)."""
    return [
        m
        for m in decoder.modules()
        if getattr(m, "gradient_checkpointing", False) is True
        and not isinstance(m, PreTrainedModel)
    ]


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    """The decoder's cache argument ("cache" from transformers 5.4x, "past_key_values" before)."""
    if Cache is None:
        return None
    params = inspect.signature(_unwrap(model).get_decoder().forward).parameters
    names = [k for k in ("cache", "past_key_values") if k in params]
    return names[0] if names and "position_ids" in params else None


def _shared_hidden(
    model, rollouts: Sequence[Rollout], groups: list[int], targets: Tensor, valid: Tensor,
    pad_id: int,
) -> Tensor | None:  # fmt: skip
    """Final hidden states [n, C, H] predicting each completion token, each group's prompt run once.

    targets [n, C]: the completion tokens (right-padded), valid [n, C]: real tokens. One forward over
    the G distinct prompts (left-padded, with grad when enabled) records their keys/values; the
    completions then run over that cache expanded to their rows, so the prompt's gradient is the
    sum over its group. None when the model did not fill or read the cache (fall back).
    """
    device, key = targets.device, _cache_kwarg(model)
    firsts = [i for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    p_ids, p_mask = _left_pad([rollouts[i].prompt for i in firsts], pad_id, device)  # [G, Lp]
    p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
    rows = torch.tensor(groups, device=device)  # [n]
    decoder = _unwrap(model).get_decoder()
    n_layers = len(getattr(decoder, "layers", [])) or _unwrap(model).config.num_hidden_layers
    record = Cache(layers=[_RecordLayer() for _ in range(n_layers)])
    with _cache_through_checkpointing(decoder):
        h_prompt = decoder(
            input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=False,
            **{key: record},
        ).last_hidden_state  # fmt: skip
    if not all(
        layer.keys is not None and layer.keys.shape[0] == len(firsts) for layer in record.layers
    ):
        _fallback_warning(model)
        return None
    sizes = [groups.count(g) for g in range(len(firsts))]
    repeat = sizes[0] if all(s == sizes[0] for s in sizes) else None
    prefix = Cache(layers=[_PrefixLayer(x.keys, x.values, rows, repeat) for x in record.layers])
    mask = torch.cat([p_mask[rows], valid.long()], dim=1)  # [n, Lp + C]
    pos = p_mask.sum(-1)[rows][:, None] + torch.arange(targets.shape[1], device=device)  # [n, C]
    args = dict(input_ids=targets, attention_mask=mask, position_ids=pos, use_cache=False)
    with _cache_through_checkpointing(decoder):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):  # DDP's gradient sync
            out = model(**args, output_hidden_states=True, logits_to_keep=1, **{key: prefix})
            h_comp = out.hidden_states[-1]
        else:
            h_comp = decoder(**args, **{key: prefix}).last_hidden_state  # [n, C, H]
    if not all(layer.reads for layer in prefix.layers):
        _fallback_warning(model)
        return None
    # completion token 0 is predicted by the prompt's last position, token j by completion j - 1
    return torch.cat([h_prompt[rows, -1:], h_comp[:, :-1]], dim=1)


def _fallback_warning(model: torch.nn.Module) -> None:
    warnings.warn(
        f"{type(_unwrap(model)).__name__} did not use the prompt cache; scoring each rollout with "
        "its own prompt (share_prompt falls back)",
        stacklevel=3,
    )


class _RecordLayer(DynamicLayer):
    """A prompt pass's layer cache: keeps the latest keys/values (a checkpoint replay overwrites)."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        self.keys, self.values = key_states, value_states
        self.device, self.is_initialized = key_states.device, True
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """A continuation's layer cache: the prompt's keys/values [G, h, Lp, d] expanded to its rows.

    `update` returns [prompt | new] per row and stores nothing, so a checkpoint replay sees the
    same values. Groups of equal size `repeat` are expanded as a view (no copy of the prompt).
    """

    def __init__(self, keys: Tensor, values: Tensor, rows: Tensor, repeat: int | None) -> None:
        super().__init__()
        self.keys, self.values, self.rows, self.repeat = keys, values, rows, repeat
        self.device, self.is_initialized, self.reads = keys.device, True, 0

    def _join(self, prefix: Tensor, new: Tensor) -> Tensor:
        if self.repeat is None:
            return torch.cat([prefix.index_select(0, self.rows), new], dim=-2)
        g, m = prefix.shape[0], self.repeat
        wide = prefix[:, None].expand(g, m, *prefix.shape[1:])  # [G, M, h, Lp, d], a view
        joined = torch.cat([wide, new.view(g, m, *new.shape[1:])], dim=-2)
        return joined.view(g * m, *joined.shape[2:])

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        self.reads += 1
        return self._join(self.keys, key_states), self._join(self.values, value_states)


@contextlib.contextmanager
def _cache_through_checkpointing(decoder: torch.nn.Module):
    """Let checkpointed layers take our replay-safe caches (transformers drops caches otherwise)."""
    layers = _checkpointed_layers(decoder)
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache
