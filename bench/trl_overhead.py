"""Step time of TsallisGRPOTrainer against TRL's GRPOTrainer, alternated in one run (CPU, tiny model).

    OMP_NUM_THREADS=1 .venv/bin/python bench/trl_overhead.py            # ~2 min on 2 cores
    .venv/bin/python bench/trl_overhead.py --steps 30 --completion-length 64

Each round runs one optimiser step (generation + reward + loss + backward + AdamW) of every trainer
in turn, on the same tiny model, prompts and generation length; the table gives the median step time
and its ratio to GRPO. Targets: <= 1.15 for tsallis_weight="reward", <= 1.3 for "answer_likelihood"
(one extra teacher-forced forward pass without gradient).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tsallis_rl.integrations.trl import TsallisGRPOConfig, TsallisGRPOTrainer
from tsallis_rl.models.tiny import build_char_tokenizer, build_tiny_causal_lm


def exact_match(completions, answer, **kwargs):
    return [float(c.split("</think>")[-1].strip() == a) for c, a in zip(completions, answer)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--steps", type=int, default=20, help="timed rounds (each trainer steps once per round)"
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    ap.add_argument("--num-generations", type=int, default=8, help="completions per prompt (M)")
    ap.add_argument("--completion-length", type=int, default=32, help="max_completion_length")
    ap.add_argument("--hidden", type=int, default=128, help="tiny model hidden size")
    ap.add_argument("--layers", type=int, default=4, help="tiny model layers")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    cli = ap.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)

    tok = build_char_tokenizer()
    prompts = [f"{a}+{b}=?" for a, b in [(12, 34), (50, 17), (7, 11), (90, 3), (25, 25), (8, 9)]]
    prompts = (prompts * cli.prompts)[: cli.prompts]
    answers = [str(eval(p[:-2])) for p in prompts]  # noqa: S307 - fixed arithmetic strings
    dataset = Dataset.from_dict({"prompt": prompts, "answer": answers})
    batch = [
        {"prompt": p, "answer": a}
        for p, a in zip(prompts, answers)
        for _ in range(cli.num_generations)
    ]
    common = dict(
        output_dir="/tmp/tsallis-bench-trl",
        per_device_train_batch_size=len(batch),
        num_generations=cli.num_generations,
        max_completion_length=cli.completion_length,
        learning_rate=1e-6,  # keep the models (and so the completion lengths) alike
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )

    def model():
        return build_tiny_causal_lm(
            len(tok), hidden_size=cli.hidden, num_layers=cli.layers, num_heads=4, seed=0
        )

    trainers = {
        "grpo": GRPOTrainer(
            model(),
            exact_match,
            args=GRPOConfig(**common),
            train_dataset=dataset,
            processing_class=tok,
        )
    }
    for weight in ("reward", "answer_likelihood"):
        args = TsallisGRPOConfig(**common, tsallis_weight=weight, tsallis_q=0.75)
        trainers[f"garl/{weight}"] = TsallisGRPOTrainer(
            model(), exact_match, args=args, train_dataset=dataset, processing_class=tok
        )
    for tr in trainers.values():
        tr.create_optimizer_and_scheduler(num_training_steps=cli.steps + cli.warmup)
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we drive by hand

    times: dict[str, list[float]] = {name: [] for name in trainers}
    lengths: dict[str, list[float]] = {name: [] for name in trainers}
    for r in range(cli.warmup + cli.steps):
        order = list(trainers.items())
        if r % 2:
            order.reverse()  # alternate who goes first
        for name, tr in order:
            t0 = time.perf_counter()
            tr.training_step(tr.model, batch, None)
            tr.optimizer.step()
            tr.optimizer.zero_grad()
            dt = time.perf_counter() - t0
            if r >= cli.warmup:
                times[name].append(dt)
                lengths[name].append(tr._metrics["train"]["completions/mean_length"][-1])

    base = statistics.median(times["grpo"])
    print(
        f"B={cli.prompts} M={cli.num_generations} max_completion_length={cli.completion_length} "
        f"hidden={cli.hidden} layers={cli.layers} threads={torch.get_num_threads()} rounds={cli.steps}"
    )
    print(f"{'trainer':<28}{'median step (s)':>16}{'ratio':>8}{'mean len':>10}")
    for name in trainers:
        med = statistics.median(times[name])
        print(f"{name:<28}{med:>16.4f}{med / base:>8.3f}{statistics.mean(lengths[name]):>10.1f}")


if __name__ == "__main__":
    main()
