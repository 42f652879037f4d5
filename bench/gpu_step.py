"""GPU figures for one GARL training step of a Qwen3-0.6B-shaped model (random weights, no download).

One step = what `Trainer.train_step` does: sample M rationales per prompt (`--sampler`, default the
device's `auto` choice) up to the thinking budget (a random model never closes `</think>`, so every
rollout spends the whole budget: the worst case), teacher-force a gold answer after each, score
log-probs in micro-batches and apply the GARL gradient (`apply_gradient`), then an AdamW step.
Prints the time split (sampling; scoring = one no-grad chunked scoring pass, timed by itself;
backward = the rest of the gradient pass: forward with grad + backward + optimizer step), peak
memory and tokens/s, and writes them as JSON. Sampler comparisons: bench/rollout_speed.py.

    python bench/gpu_step.py --budget 2048 --rollouts 32 --prompts 1 --micro-batch 4 --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tsallis_rl.estimators import garl_loss, get_estimator_spec
from tsallis_rl.rollout import SamplingSettings, resolve_sampler, sample, token_logps
from tsallis_rl.trainer import apply_gradient

QWEN3_06B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip
THINK_CLOSE, EOS = 151668, 151645
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def one_step(
    model, opt, args, budget: int, gen: torch.Generator, sample_gen: torch.Generator
) -> dict[str, float]:
    B, M = args.prompts, args.rollouts
    prompts = [
        torch.randint(0, 150000, (args.prompt_len,), generator=gen).tolist() for _ in range(B)
    ]
    answers = [
        torch.randint(0, 150000, (args.answer_len,), generator=gen).tolist() + [EOS]
        for _ in range(B)
    ]
    _sync()
    t0 = time.perf_counter()
    settings = SamplingSettings(
        think_close=(THINK_CLOSE,), eos_ids=(EOS,), pad_id=EOS, thinking_budget=budget,
        batch_size=args.gen_batch, sampler=args.sampler,
    )  # fmt: skip
    model.eval()
    rolls = sample(model, [p for p in prompts for _ in range(M)], settings, generator=sample_gen)
    _sync()
    t1 = time.perf_counter()
    rolls = [r.with_answer(answers[i // M]) for i, r in enumerate(rolls)]
    with torch.no_grad():
        token_logps(model, rolls, pad_id=EOS, micro_batch=args.micro_batch)
    _sync()
    t_score = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    model.train()
    out = apply_gradient(model, get_estimator_spec("garl"), rolls, B, M, lambda r, a: garl_loss(r, a, 0.75),
                         pad_id=EOS, micro_batch=args.micro_batch)  # fmt: skip
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync()
    t2 = time.perf_counter()
    gen_tokens = sum(len(r.rationale) for r in rolls)
    trained_tokens = sum(
        len(r.prompt) + len(r.rationale) + len(r.forced) + len(r.answer) for r in rolls
    )
    return {
        "budget": budget, "sample_s": t1 - t0, "score_s": t_score - t1,
        "backward_s": t2 - t_score, "step_s": t2 - t0 - (t_score - t1),
        "generated_tokens": gen_tokens, "trained_tokens": trained_tokens,
        "gen_tokens_per_s": gen_tokens / (t1 - t0), "train_tokens_per_s": trained_tokens / (t2 - t_score),
        "step_tokens_per_s": (gen_tokens + trained_tokens) / (t2 - t0 - (t_score - t1)),
        "mean_log_w_bar": out.stats["mean_log_w_bar"], "max_adv": out.stats["max_adv"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=int, default=2048)
    ap.add_argument("--rollouts", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--answer-len", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--gen-batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sampler", default="auto", choices=("auto", "generate", "loop"))
    ap.add_argument(
        "--tiny", action="store_true", help="a 2-layer model with a small vocab (CPU smoke test)"
    )
    args = ap.parse_args()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    shape = (
        dict(
            QWEN3_06B,
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
        )
        if args.tiny
        else QWEN3_06B
    )
    cfg = Qwen3Config(**shape, attn_implementation="sdpa")
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sample_gen = torch.Generator(device=DEVICE).manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)
    warm = one_step(model, opt, args, 32, cpu_gen, sample_gen)  # warm-up: kernels, allocator
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = [one_step(model, opt, args, args.budget, cpu_gen, sample_gen) for _ in range(args.steps)]
    peak_train = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    peak = peak_train
    result = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
        "params": n_params, "dtype": str(dtype), "M": args.rollouts, "B": args.prompts, "micro_batch": args.micro_batch,
        "gradient_checkpointing": args.gradient_checkpointing, "warmup": warm, "steps": rows,
        "sampler": resolve_sampler(args.sampler, torch.device(DEVICE)),
        "peak_memory_gib": peak,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
