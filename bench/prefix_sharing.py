"""Prompt sharing (issue 20): one step's gradient pass, each prompt once vs once per rollout.

The gradient pass is `gradient.apply_gradient` on one step's B x M teacher-forced rollouts with the
GARL estimator (q = 0.75) at the trainer's micro-batch: "today" runs the prompt once per rollout
(`share_prompt=False`), "shared" once per group. Each measurement runs in a fresh subprocess (peak
memory is the growth of the process's peak resident set over its resident set before the first pass
on CPU; torch.cuda.max_memory_allocated over the memory allocated before it on CUDA); the two arms
alternate, `--rounds` times, and the ratios of the medians are printed side by side. Both arms use
one CPU thread (torch.set_num_threads(1)), so other load on the machine slows them alike. Each child
also reports the gradient's checksum: both arms must agree (to float32 summation order).

Cases (`--cases`):
  chainsum  the default experiment's step: its base model (cached, else random weights of the same
            shape), B = 8 chain-sum prompts x M = 8 rationales sampled by that model at the default
            thinking budget, micro-batch 64;
  smollm2   the CPU real-model step: a SmolLM2-135M-shaped Llama (random weights), B = 2 prompts of
            242 and 258 tokens, M = 8 rationales of 48 tokens, `</think>` + a 5-token gold answer;
  qwen3     the paper's shape on a GPU: a Qwen3-0.6B-shaped model (bf16, random weights), B = 1
            prompt of 1,024 tokens, M = 32 rationales of 2,048 tokens, micro-batch 8 with gradient
            checkpointing (CUDA only; bench/gpu_rollout.sh runs it).

    python bench/prefix_sharing.py                        # chainsum and smollm2, on CPU
    python bench/prefix_sharing.py --cases qwen3 --rounds 2 --out bench/results/prefix_qwen3.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.gradient import apply_gradient
from tsallis_rl.rollout import Rollout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
    max_position_embeddings=8192,
)  # fmt: skip
QWEN3_06B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
)  # fmt: skip


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _random_rollouts(
    vocab: int, prompt_lens: list[int], M: int, rationale: int, answer: int, seed: int = 0
) -> list[Rollout]:
    """B groups of M teacher-forced rollouts: random prompt / rationale / `</think>` / y* + eos."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    out = []
    for n in prompt_lens:
        prompt, gold = ids(n), ids(answer - 1) + [2]
        out += [Rollout(prompt, ids(rationale), [1], gold) for _ in range(M)]
    return out


def build_case(case: str):
    """(model, rollouts, B, M, micro_batch, pad_id) for one case, deterministic."""
    torch.manual_seed(0)
    if case == "chainsum":
        return _chainsum_case()
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if case == "smollm2":
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).float()
        return model, _random_rollouts(49152, [242, 258], 8, 48, 5), 2, 8, 64, 0
    if case == "qwen3":
        with torch.device(DEVICE):
            model = Qwen3ForCausalLM(Qwen3Config(**QWEN3_06B)).to(torch.bfloat16)
        model.gradient_checkpointing_enable()
        return model, _random_rollouts(151936, [1024], 32, 2048, 5), 1, 32, 8, 0
    raise SystemExit(f"unknown case {case!r}")


def _chainsum_case():
    """The default experiment's first step: its base model and rollouts sampled by it."""
    from tsallis_rl.config import TrainConfig
    from tsallis_rl.models.basemodel import BaseModelConfig, cached_base_model
    from tsallis_rl.suite import build_trainer

    cfg = TrainConfig(progress=False, threads=1, val_size=0)
    shape = BaseModelConfig()
    base = cached_base_model(shape)
    if not (base / "base_model.json").exists():  # not built yet: random weights, same shape
        from tsallis_rl.models.tiny import save_tiny_model
        from tsallis_rl.tasks.chainsum import ALPHABET

        base = save_tiny_model(
            tempfile.mkdtemp(), ALPHABET, hidden_size=shape.hidden_size,
            num_layers=shape.num_layers, num_heads=shape.num_heads,
            intermediate_size=shape.intermediate_size, max_positions=256,
        )  # fmt: skip
    cfg = TrainConfig(**{**cfg.to_dict(), "model": str(base)}).validate()
    tr = build_trainer(cfg, tempfile.mkdtemp())
    B, M = cfg.batch_size, cfg.num_rollouts
    examples = tr.batch_examples(0)
    prompts = [tr.prompt_ids(ex) for ex in examples for _ in range(M)]
    rolls = tr._sample(prompts, answer_budget=0, temperature=cfg.temperature, gen=tr.gen)
    rolls = [r.with_answer(tr.gold_ids(examples[i // M])) for i, r in enumerate(rolls)]
    return tr.model, rolls, B, M, cfg.micro_batch, tr.formatter.pad_id


def measure(case: str, arm: str, passes: int, micro_batch: int = 0) -> dict[str, float]:
    """One arm in this process: median seconds of `passes` gradient passes and the peak memory."""
    torch.set_num_threads(1)
    model, rolls, B, M, default_micro_batch, pad_id = build_case(case)
    micro_batch = micro_batch or default_micro_batch
    spec = get_estimator_spec("garl")
    call = spec.bind(0.75, {})
    model.train()

    def sync() -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    times = []
    for _ in range(passes):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        apply_gradient(
            model, spec, rolls, B, M, call, pad_id=pad_id, micro_batch=micro_batch,
            share_prompt=arm == "shared",
        )  # fmt: skip
        sync()
        times.append(time.perf_counter() - t0)
    if DEVICE == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grads = [p.grad.float() for p in model.parameters() if p.grad is not None]
    return {
        "seconds": statistics.median(times),
        "peak_bytes": max(peak - before, 0),
        "grad_norm": float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))),
        "prompt_tokens": sum(len(r.prompt) for r in rolls),
        "completion_tokens": sum(len(r.completion) for r in rolls),
        "rows": len(rolls),
    }


def run_case(case: str, rounds: int, passes: int, micro_batch: int = 0) -> dict:
    """Alternate the two arms `rounds` times, each in a fresh subprocess; ratios of the medians."""
    runs: dict[str, list[dict]] = {"today": [], "shared": []}
    for _ in range(rounds):
        for arm in ("today", "shared"):
            cmd = [sys.executable, __file__, "--child", case, arm, "--passes", str(passes)]
            cmd += ["--micro-batch", str(micro_batch)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{case}/{arm} failed:\n{out.stderr[-3000:]}")
            runs[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {
        arm: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_bytes")}
        for arm, rs in runs.items()
    }
    today, shared = runs["today"][0], runs["shared"][0]
    return {
        "case": case, "device": DEVICE, "rounds": rounds, "passes_per_round": passes,
        "micro_batch": micro_batch or "default",
        "rows": today["rows"], "prompt_tokens": today["prompt_tokens"],
        "completion_tokens": today["completion_tokens"],
        "today": med["today"], "shared": med["shared"],
        "time_ratio": med["shared"]["seconds"] / med["today"]["seconds"],
        "memory_ratio": med["shared"]["peak_bytes"] / max(med["today"]["peak_bytes"], 1),
        "grad_norm_rel_diff": abs(shared["grad_norm"] - today["grad_norm"]) / today["grad_norm"],
        "runs": runs,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default="chainsum,smollm2")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two arms")
    ap.add_argument("--passes", type=int, default=0, help="gradient passes per child (0: auto)")
    ap.add_argument("--micro-batch", type=int, default=0, help="override the case's micro-batch")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "ARM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, max(args.passes, 1), args.micro_batch)))
        return
    results = []
    for case in args.cases.split(","):
        if case == "qwen3" and DEVICE != "cuda":
            print("qwen3: not run (needs a CUDA device)")
            continue
        passes = args.passes or {"chainsum": 5, "smollm2": 1, "qwen3": 2}[case]
        res = run_case(case, args.rounds, passes, args.micro_batch)
        results.append(res)
        t, s = res["today"], res["shared"]
        print(
            f"{case:9s} rows {res['rows']:3d}  time today {t['seconds']:8.3f} s  shared "
            f"{s['seconds']:8.3f} s  ratio {res['time_ratio']:.3f}   peak today "
            f"{t['peak_bytes'] / 2**20:8.1f} MiB  shared {s['peak_bytes'] / 2**20:8.1f} MiB  "
            f"ratio {res['memory_ratio']:.3f}   |grad| rel diff {res['grad_norm_rel_diff']:.1e}",
            flush=True,
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
