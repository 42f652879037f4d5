"""`tsallis-rl eval`: p@1 / p@k / m@k of a saved model on a task split, with per-example records.

    tsallis-rl eval --model runs/default/garl_q0.75/best --task chainsum --k 16
    tsallis-rl eval --model runs/default/garl_q0.75/checkpoints/step-000300   # tokenizer from its run
    tsallis-rl eval --model Qwen/Qwen3-0.6B --task hotpotqa --data dev.jsonl --regime warm --split all

p@k: some of k samples is correct; m@k: the majority answer of k samples is correct. Prints a
labelled summary (model, task, split, regime, k); --json prints the summary as JSON instead.
Flags mean what they mean for `train`, with the same defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tsallis_rl.config import default_of, finite_float, parse_bool


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' layout and show every default."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model: p@1, p@k, m@k (majority of k)",
        description=__doc__,
        formatter_class=_Help,
    )
    p.add_argument(
        "--model",
        help="HF model name, model folder, or a run's checkpoints/step-N (default: the chain-sum base model)",
    )
    p.add_argument("--task", default=default_of("task"), help="task name")
    p.add_argument("--data", help="data file or directory of the task")
    p.add_argument(
        "--regime",
        default=default_of("regime"),
        choices=("warm", "cold"),
        help="prompt regime: warm (instructions) or cold (no format cue)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split (all = every example of --data)",
    )
    p.add_argument("--k", type=int, default=default_of("eval_k"), help="samples per example")
    p.add_argument("--limit", type=int, default=200, help="at most this many examples (0 = all)")
    p.add_argument(
        "--temperature",
        type=finite_float,
        default=default_of("eval_temperature"),
        help="sampling temperature (0 = greedy)",
    )
    p.add_argument(
        "--thinking-budget",
        type=int,
        default=default_of("thinking_budget"),
        help="max rationale tokens",
    )
    p.add_argument(
        "--answer-budget", type=int, default=default_of("answer_budget"), help="max answer tokens"
    )
    p.add_argument(
        "--chat-template",
        default=default_of("chat_template"),
        choices=("auto", "on", "off"),
        help="wrap prompts in the tokenizer's chat template",
    )
    p.add_argument("--device", default=default_of("device"), help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--seed", type=int, default=default_of("seed"), help="sampling seed")
    p.add_argument(
        "--progress",
        type=parse_bool,
        nargs="?",
        const=True,
        default=default_of("progress"),
        metavar="BOOL",
        help="show progress bars (as train: --progress false)",
    )
    p.add_argument("--out", help="write summary.json and records.jsonl here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (for machines)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from tsallis_rl.config import ConfigError, TrainConfig
    from tsallis_rl.experiment import check_model, load_model, make_splits, resolve_device
    from tsallis_rl.rundir import json_safe, write_atomic
    from tsallis_rl.tasks import get_task
    from tsallis_rl.trainer import Trainer

    if args.limit < 0:
        raise ConfigError(f"flags: limit = {args.limit}: must be >= 0 (0 = all)")
    cfg = TrainConfig(
        model=args.model,
        task=args.task,
        data=args.data,
        regime=args.regime,
        eval_k=args.k,
        eval_temperature=args.temperature,
        thinking_budget=args.thinking_budget,
        answer_budget=args.answer_budget,
        chat_template=args.chat_template,
        device=args.device,
        seed=args.seed,
        progress=args.progress,
        estimator="garl",
        val_size=args.limit,
        test_size=args.limit,
        out=args.out or default_of("out"),
    ).validate("flags")
    task = get_task(cfg.task)
    if args.split == "all":
        if task.needs_path and not cfg.data:
            raise ConfigError(f"task {cfg.task!r} needs --data (a file or directory)")
        examples = task.load(cfg.data) if task.needs_path else task.load(None)
        examples = examples[: args.limit] if args.limit else examples
        splits = {"train": examples, "all": examples}
    else:
        splits = make_splits(task, cfg)
    check_model(cfg, task, {args.split: splits[args.split]})  # loadable, prompts fit: before work
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
    summary = json_safe(res.summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(render_summary(summary, args))
    if args.out:
        out = Path(args.out)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
        write_atomic(
            out / "records.jsonl", "".join(json.dumps(json_safe(r)) + "\n" for r in res.records)
        )
    return 0


def render_summary(summary: dict, args: argparse.Namespace) -> str:
    """A labelled, human-readable result: what was evaluated, then one metric a line."""
    head = (
        f"model {args.model or 'chain-sum base model'}  task {args.task}  split {args.split}  "
        f"regime {args.regime}  k {args.k}  temperature {args.temperature}"
    )
    names = {"p@1": "p@1 (one sample correct)", f"p@{args.k}": f"p@{args.k} (any of {args.k})"}
    names[f"m@{args.k}"] = f"m@{args.k} (majority of {args.k})"
    lines = [head]
    for key, value in summary.items():
        label = names.get(key, key)
        lines.append(
            f"  {label:28s} {value:.4f}" if isinstance(value, float) else f"  {label:28s} {value}"
        )
    return "\n".join(lines)
