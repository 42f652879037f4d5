"""Rollout speed: our sampler vs HF `generate` vs today's (pre-generate) sampler, side by side.

Same prompts, lengths, M and seed for every variant; a close marker that cannot be sampled makes
every row spend the whole thinking budget (what a random model does), so each variant generates
exactly M x B x budget tokens. Prints tokens/s and ratios; on CUDA also the memory-bandwidth bound
(parameter bytes read once per decode step at the device's measured copy bandwidth) and the fraction
of it each variant reaches. `legacy_sample` is a verbatim copy of the hand-written sampler this
project used before, kept here (not in the library) for comparison and for the equality tests.

    python bench/rollout_speed.py                      # CPU: the default experiment's base model
    python bench/rollout_speed.py --qwen3 --budget 2048 --rollouts 32 --out r.json   # GPU
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from tsallis_rl.rollout import SamplingSettings, resolve_sampler, sample

QWEN3_06B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# Today's sampler (verbatim but for names)


@dataclass
class _LegacyRollout:
    prompt: list[int]
    rationale: list[int]
    forced: list[int]
    answer: list[int]

    @property
    def hit_budget(self) -> bool:
        return bool(self.forced)


def _ends_with(seq: list[int], suffix: Sequence[int]) -> bool:
    n = len(suffix)
    return n > 0 and len(seq) >= n and seq[-n:] == list(suffix)


@torch.no_grad()
def legacy_sample(
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
) -> list[Any]:
    """Sample one rollout per prompt (repeat a prompt M times for M rollouts), `batch_size` rows at once.

    With answer_budget == 0 sampling stops after the rationale (GARL/PAFT teacher-force the answer).
    Otherwise `answer_prefix` is forced after `</think>` and the answer is sampled until an end token.
    """
    out: list[Any] = []
    for start in range(0, len(prompts), batch_size):
        out += _legacy_batch(
            model, prompts[start : start + batch_size], list(think_close), set(eos_ids), pad_id,
            thinking_budget, answer_budget, list(answer_prefix), temperature, top_p, generator,
        )  # fmt: skip
    return out


def _legacy_pick(
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


def _legacy_batch(
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
    rows = [_LegacyRollout(list(p), [], [], []) for p in prompts]
    queue: list[list[int]] = [[] for _ in range(n)]  # tokens still to force per row
    phase = ["rationale"] * n  # rationale -> (force) -> answer -> done
    for _ in range(budget + len(close) + len(ans_prefix) + ans_budget + 1):
        picked = _legacy_pick(logits, temp, top_p, gen).tolist()
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


# --------------------------------------------------------------------------------------------------
# The benchmark


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy of a 1 GiB tensor (read + write), best of 5."""
    x = torch.empty(1 << 28, dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    best = min(_timed(lambda: y.copy_(x)) for _ in range(5))
    return 2 * x.numel() * 4 / best


def build_model(args) -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    if args.qwen3:
        shape = QWEN3_06B
    else:  # the default experiment's base model shape (basemodel.py) over a char vocabulary
        shape = dict(
            vocab_size=80, hidden_size=96, intermediate_size=288, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, head_dim=24, tie_word_embeddings=True,
        )  # fmt: skip
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(Qwen3Config(**shape, attn_implementation="sdpa")).to(dtype)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--qwen3", action="store_true", help="Qwen3-0.6B shape (random weights)")
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--rollouts", type=int, default=16, help="M")
    ap.add_argument("--prompts", type=int, default=50, help="B")
    ap.add_argument("--prompt-len", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds; best time is kept")
    ap.add_argument("--variants", default="ours,generate,loop,hf_generate,legacy")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = build_model(args)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(2, vocab, (args.prompt_len - i % 3,), generator=g).tolist()
        for i in range(args.prompts)
    ]
    rows = [p for p in prompts for _ in range(args.rollouts)]
    never = vocab + 7  # an unsampleable close marker: every row spends the whole budget
    s = SamplingSettings(
        think_close=(never,),
        eos_ids=(),
        pad_id=0,
        thinking_budget=args.budget,
        batch_size=len(rows),
    )
    ids = torch.full((len(rows), args.prompt_len), 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, args.prompt_len - len(r) :] = torch.tensor(r)
        mask[i, args.prompt_len - len(r) :] = 1
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)

    def hf_generate(budget: int) -> None:
        torch.manual_seed(0)
        with torch.no_grad():
            model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                temperature=1.0, max_new_tokens=budget + 1, min_new_tokens=budget + 1,
                eos_token_id=[], pad_token_id=0,
            )  # fmt: skip

    def run(sampler: str):
        return lambda budget: sample(
            model, rows, replace(s, sampler=sampler, thinking_budget=budget),
            generator=torch.Generator(device=DEVICE).manual_seed(0),
        )  # fmt: skip

    def legacy(budget: int) -> None:
        legacy_sample(
            model, rows, think_close=[never], eos_ids=[], pad_id=0, thinking_budget=budget,
            generator=torch.Generator(device=DEVICE).manual_seed(0), batch_size=len(rows),
        )  # fmt: skip

    fns = {"ours": run("auto"), "generate": run("generate"), "loop": run("loop"),
           "hf_generate": hf_generate, "legacy": legacy}  # fmt: skip
    names = [v for v in args.variants.split(",") if v]
    for name in names:  # warm-up (kernels, allocator) at a short budget
        fns[name](min(args.budget, 8))
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            times[name].append(_timed(lambda f=fns[name]: f(args.budget)))
    tokens = len(rows) * (args.budget + 1)  # budget rationale tokens + the forced close
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__, "params": sum(p.numel() for p in model.parameters()),
        "rows": len(rows), "budget": args.budget, "prompt_len": args.prompt_len,
        "ours_is": resolve_sampler("auto", torch.device(DEVICE)), "threads": torch.get_num_threads(),
        "seconds": {n: min(t) for n, t in times.items()},
        "tokens_per_s": {n: tokens / min(t) for n, t in times.items()},
    }  # fmt: skip
    if "hf_generate" in times:
        hf = min(times["hf_generate"])
        result["time_over_hf_generate"] = {n: min(t) / hf for n, t in times.items()}
    if "legacy" in times:
        old = min(times["legacy"])
        result["speedup_over_legacy"] = {n: old / min(t) for n, t in times.items()}
    if DEVICE == "cuda":
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bw = copy_bandwidth()
        bound = len(rows) * bw / param_bytes  # tokens/s if each decode step only read the weights
        result["bandwidth_bytes_per_s"] = bw
        result["bandwidth_bound_tokens_per_s"] = bound
        result["fraction_of_bound"] = {n: tokens / min(t) / bound for n, t in times.items()}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
