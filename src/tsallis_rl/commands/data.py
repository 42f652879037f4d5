"""`tsallis-rl data stats|show`: look at a task's data exactly as the trainer will see it.

    tsallis-rl data stats --task hotpotqa --data ../shared/data/hotpotqa/dev_300.jsonl
    tsallis-rl data stats --task finqa --data data/finqa/ --tokenizer Qwen/Qwen3-0.6B
    tsallis-rl data show --task finqa --data ../shared/data/finqa/dev_200.json -n 2
    tsallis-rl data show --task "rg:chain_sum?min_terms=3" -n 2

The flags mean what they mean for `train` (same names and defaults: --task, --data, --regime cold,
--chat-template), and `show` renders through the trainer's own prompt formatter, so it prints the
very prompt `train` builds for the same flags: with --tokenizer (or --model) as that model sees it
(chat template + open <think>), without one as a model without a chat template sees it (the
default base model). `stats` prints counts (per split when --data is a directory of
train/val/test files), how many rows were skipped (with --skip-invalid), field checks (empty
context, answer lengths, aliases) and prompt-length percentiles in characters, and in tokens of
the rendered prompt when --tokenizer is given (a local path or a name already in the Hugging Face
cache; the hub is tried only when reachable). A malformed file stops with the file, line and field
at fault; --skip-invalid skips bad rows and reports how many. `--path` is a deprecated alias of
--data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tsallis_rl.config import TrainConfig, default_of
from tsallis_rl.errors import ConfigError
from tsallis_rl.models.loading import load_tokenizer, locate_model, quiet_transformers
from tsallis_rl.prompts import PromptFormatter
from tsallis_rl.tasks import get_task
from tsallis_rl.tasks.base import REGIMES, Example, Task, find_split_files


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect task data: counts, checks, rendered prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="data_command", metavar="{stats,show}")
    for name, func, helptext in (
        ("stats", cmd_stats, "counts, field checks, prompt length percentiles"),
        ("show", cmd_show, "print rendered prompts and targets"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument(
            "--task",
            default=default_of("task"),
            help='chainsum, finqa, hotpotqa, musique, jsonl, "rg:<spec>" (default: %(default)s)',
        )
        p.add_argument(
            "--data", default=None, help="data file, or directory of train/val/test files"
        )
        p.add_argument("--path", default=None, help="deprecated alias of --data")
        p.add_argument(
            "--tokenizer",
            "--model",
            dest="tokenizer",
            default=None,
            help="model (its tokenizer) to render and count tokens for; default: none (plain text)",
        )
        p.add_argument(
            "--regime",
            choices=REGIMES,
            default=default_of("regime"),
            help="prompt regime (default: %(default)s)",
        )
        p.add_argument(
            "--chat-template",
            choices=("auto", "on", "off"),
            default=default_of("chat_template"),
            help="wrap prompts in the tokenizer's chat template (default: %(default)s)",
        )
        p.add_argument(
            "--skip-invalid", action="store_true", help="skip malformed rows, report count"
        )
        p.add_argument("--split", default=None, help="only this split (train/val/test)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            p.add_argument("-n", type=int, default=2, help="how many examples to print")
        p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
        p.set_defaults(func=func)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _data_flag(args: argparse.Namespace) -> str | None:
    """--data, or the deprecated --path (with a warning); both at once is an error."""
    if args.path is not None:
        if args.data is not None:
            raise ConfigError("--path is a deprecated alias of --data; pass only --data")
        print("warning: --path is deprecated; use --data", file=sys.stderr)
        return args.path
    return args.data


def _load(args: argparse.Namespace) -> tuple[Task, dict[str, list[Example]]]:
    task = get_task(args.task)
    args.data = _data_flag(args)
    path = Path(args.data) if args.data else None
    if path is None and task.needs_path:
        raise ConfigError(f"task {args.task!r} needs --data (a data file or directory)")
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    skipped = 0
    if path is None:
        splits = task.splits(None)
    elif path.is_dir():  # the conventional split files as they are (nothing carved)
        files = find_split_files(path)
        if not files:
            raise ConfigError(f"{path}: no train/val/test .json(l) files")
        splits = {}
        for name, f in files.items():
            splits[name] = task.load(f, skip_invalid=args.skip_invalid)
            skipped += task.last_skipped
        task.last_skipped = skipped
    else:
        splits = {"all": task.load(path, skip_invalid=args.skip_invalid)}
    if args.split:
        if args.split not in splits:
            raise ConfigError(f"no split {args.split!r}; have {sorted(splits)}")
        splits = {args.split: splits[args.split]}
    return task, splits


def _tokenizer(name: str | None) -> Any:
    """The tokenizer of a model name/path, located like `train --model` (fast, clear errors)."""
    if not name:
        return None
    quiet_transformers(False)
    if Path(name).expanduser().is_dir():  # a tokenizer folder needs no model config
        return load_tokenizer(str(Path(name).expanduser()))
    return load_tokenizer(locate_model(name))


def formatter(args: argparse.Namespace, task: Task, tokenizer: Any) -> PromptFormatter:
    """The trainer's prompt formatter for these flags (no tokenizer: plain text, no template)."""
    cfg = TrainConfig(task=args.task, regime=args.regime, chat_template=args.chat_template)
    if tokenizer is None:
        if args.chat_template == "on":
            raise ConfigError("--chat-template on needs --tokenizer (the template is the model's)")
        return PromptFormatter(None, task, args.regime, chat=False, answer_prefix="")
    return PromptFormatter.build(tokenizer, task, cfg)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def pct(q: float) -> float:
        return float(v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))])

    return {"min": float(v[0]), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": float(v[-1])}


def split_stats(task: Task, examples: list[Example], fmt: PromptFormatter) -> dict[str, Any]:
    prompts = [fmt.prompt_text(ex) for ex in examples]
    tokenizer = fmt.tokenizer
    stats: dict[str, Any] = {
        "examples": len(examples),
        "empty_context": sum(1 for ex in examples if not ex.context.strip()),
        "empty_answer": sum(1 for ex in examples if not task.target(ex).strip()),
        "with_aliases": sum(1 for ex in examples if ex.aliases),
        "distinct_answers": len({task.normalize(ex.answer) for ex in examples}),
        "answer_chars": _percentiles([len(task.target(ex)) for ex in examples]),
        "prompt_chars": _percentiles([len(p) for p in prompts]),
    }
    if tokenizer is not None:
        stats["prompt_tokens"] = _percentiles([len(fmt.prompt(ex)) for ex in examples])
        stats["target_tokens"] = _percentiles(
            [
                len(tokenizer(task.target(ex), add_special_tokens=False)["input_ids"])
                for ex in examples
            ]
        )
    return stats


def cmd_stats(args: argparse.Namespace) -> int:
    task, splits = _load(args)
    fmt = formatter(args, task, _tokenizer(args.tokenizer))
    report = {
        "task": args.task,
        "data": args.data,
        "regime": args.regime,
        "context_note": task.context_note,
        "skipped_invalid": task.last_skipped,
        "splits": {name: split_stats(task, exs, fmt) for name, exs in splits.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"task {args.task}  data {args.data}  regime {args.regime}")
    if task.context_note:
        print(f"context variant: {task.context_note}")
    if args.skip_invalid:
        print(f"skipped invalid rows: {task.last_skipped}")
    for name, st in report["splits"].items():
        print(f"[{name}] {st['examples']} examples")
        for key, value in st.items():
            if key == "examples":
                continue
            if isinstance(value, dict):
                value = "  ".join(f"{k} {v:g}" for k, v in value.items())
            print(f"  {key:18s} {value}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    task, splits = _load(args)
    fmt = formatter(args, task, _tokenizer(args.tokenizer))
    shown = []
    for name, exs in splits.items():
        for ex in exs[: max(args.n, 0)]:
            prompt = fmt.prompt_text(ex)
            shown.append({"split": name, "id": ex.id, "prompt": prompt, "target": task.target(ex)})
    if args.json:  # the note is each item's, so a list consumer sees it without a wrapper
        for item in shown:
            item["context_note"] = task.context_note
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    bar = "=" * 72
    if task.context_note:
        print(f"task {args.task}, context variant: {task.context_note}")
    for item in shown:
        print(f"{bar}\n[{item['split']}] id {item['id']}  regime {args.regime}\n--- prompt ---")
        print(item["prompt"])
        print(f"--- target y* ---\n{item['target']}")
    if args.skip_invalid:
        print(f"{bar}\nskipped invalid rows: {task.last_skipped}")
    return 0
