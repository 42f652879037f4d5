"""`tsallis-rl eval`: p@1 / p@k / m@k of a saved model on a task split, with per-example records.

tsallis-rl eval --model runs/default/garl_q0.75/best --task chainsum --k 16
tsallis-rl eval --model Qwen/Qwen3-0.6B --task hotpotqa --data dev.jsonl --regime warm --split all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: p@1, p@k, maj@k",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="HF model name or path (default: the chain-sum base model)")
    p.add_argument("--task", default="chainsum", help="task name (default: chainsum)")
    p.add_argument("--data", help="data file or directory")
    p.add_argument("--regime", default="cold", choices=("warm", "cold"))
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split (all = every example of --data)",
    )
    p.add_argument("--k", type=int, default=16, help="samples per example")
    p.add_argument("--limit", type=int, default=200, help="at most this many examples (0 = all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--thinking-budget", type=int, default=None, help="default: train's default")
    p.add_argument("--answer-budget", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write summary.json and records.jsonl here")
    p.add_argument("--debug", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from tsallis_rl.config import TrainConfig
    from tsallis_rl.experiment import load_model, make_splits, resolve_device
    from tsallis_rl.rundir import json_safe, write_atomic
    from tsallis_rl.tasks import get_task
    from tsallis_rl.trainer import Trainer

    cfg = TrainConfig(
        model=args.model,
        task=args.task,
        data=args.data,
        regime=args.regime,
        eval_k=args.k,
        eval_temperature=args.temperature,
        seed=args.seed,
        estimator="garl",
        val_size=args.limit,
        test_size=args.limit,
    )
    if args.thinking_budget:
        cfg.thinking_budget = args.thinking_budget
    if args.answer_budget:
        cfg.answer_budget = args.answer_budget
    cfg.validate("flags")
    task = get_task(cfg.task)
    if args.split == "all":
        examples = task.load(cfg.data) if task.needs_path else task.load(None)
        examples = examples[: args.limit] if args.limit else examples
        splits = {"train": examples, "all": examples}
    else:
        splits = make_splits(task, cfg)
    device, dtype = resolve_device(cfg)
    model, tok = load_model(cfg, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            cfg,
            model=model,
            tokenizer=tok,
            task=task,
            splits=splits,
            run_dir=Path(tmp),
            device=device,
        )
        res = trainer.evaluate(args.split)
    print(json.dumps(json_safe(res.summary), indent=2))
    if args.out:
        out = Path(args.out)
        write_atomic(out / "summary.json", json.dumps(json_safe(res.summary), indent=2))
        write_atomic(
            out / "records.jsonl", "".join(json.dumps(json_safe(r)) + "\n" for r in res.records)
        )
    return 0
