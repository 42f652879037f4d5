"""Scoring memory: chunked selective log-softmax vs the naive full-logits pass, side by side.

Scores `--rows` rollouts of `--completion` tokens (after a `--prompt`-token prompt) with a
Qwen3-style model of vocabulary 151,936 (random weights), forward and backward (what a training step
does), once per variant, each in a fresh subprocess. Peak memory is the growth of the process's peak
resident set (ru_maxrss) over its resident set just before scoring on CPU, or
torch.cuda.max_memory_allocated over the allocated memory before scoring on CUDA.

    python bench/score_memory.py                    # CPU, 1 x 1k tokens
    python bench/score_memory.py --rows 4 --completion 4096 --hidden 1024 --layers 28 --out m.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from tsallis_rl.rollout import Rollout, token_logps

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def measure(args) -> dict[str, float]:
    """One variant in this process: peak memory growth and time of score + backward."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
        head_dim=args.hidden // 4, tie_word_embeddings=True,
    )  # fmt: skip
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(cfg).to(dtype)
    g = torch.Generator().manual_seed(0)
    rolls = [
        Rollout(
            torch.randint(2, args.vocab, (args.prompt,), generator=g).tolist(),
            torch.randint(2, args.vocab, (args.completion - 8,), generator=g).tolist(),
            [3],
            torch.randint(2, args.vocab, (7,), generator=g).tolist(),
        )
        for _ in range(args.rows)
    ]
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    t0 = time.perf_counter()
    logp, _ = token_logps(
        model, rolls, pad_id=0, micro_batch=args.rows, full_logits=args.variant == "full"
    )
    logp.sum().backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "variant": args.variant,
        "seconds": time.perf_counter() - t0,
        "peak_bytes": max(peak - before, 0),
        "logp_sum": float(logp.detach().sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--completion", type=int, default=1024)
    ap.add_argument("--variant", choices=("full", "chunked"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.variant:  # child process: one measurement
        print(json.dumps(measure(args)))
        return
    results = {}
    for variant in ("full", "chunked"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    full, chunked = results["full"], results["chunked"]
    summary = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "vocab": args.vocab, "hidden": args.hidden, "layers": args.layers, "rows": args.rows,
        "tokens_per_row": args.prompt + args.completion,
        "full": full, "chunked": chunked,
        "peak_ratio_chunked_over_full": chunked["peak_bytes"] / max(full["peak_bytes"], 1),
        "time_ratio_chunked_over_full": chunked["seconds"] / full["seconds"],
        "logp_abs_diff": abs(chunked["logp_sum"] - full["logp_sum"]),
    }  # fmt: skip
    for name in ("full", "chunked"):
        r = results[name]
        print(f"{name:8s} peak {r['peak_bytes'] / 2**20:9.1f} MiB   {r['seconds']:.2f} s")
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
