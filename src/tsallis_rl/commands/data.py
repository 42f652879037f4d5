"""`tsallis-rl data stats|show`: look at a task's data exactly as the trainer will see it.

    tsallis-rl data stats --task hotpotqa --path ../shared/data/hotpotqa/dev_300.jsonl
    tsallis-rl data stats --task finqa --path data/finqa/ --tokenizer Qwen/Qwen3-0.6B
    tsallis-rl data show --task finqa --path ../shared/data/finqa/dev_200.json --regime cold -n 2
    tsallis-rl data show --task "rg:chain_sum?min_terms=3" -n 2

`stats` prints counts (per split when --path is a directory of train/val/test files), how many
rows were skipped (with --skip-invalid), field checks (empty context, answer lengths, aliases)
and prompt-length percentiles in characters, and in tokens of the rendered model prompt when
--tokenizer is given (a local path or a name already in the Hugging Face cache; no download is
forced). `show` prints the rendered prompt (chat template + open <think> when a tokenizer is
given) and the target y* for the first n examples. A malformed file stops with the file, line and
field at fault; --skip-invalid skips bad rows and reports how many.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tsallis_rl.tasks.base import (
    REGIMES,
    Example,
    Task,
    find_split_files,
    format_for_model,
    get_task,
)


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
        p.add_argument("--task", required=True, help='finqa, hotpotqa, musique, jsonl, "rg:<spec>"')
        p.add_argument(
            "--path", default=None, help="data file, or directory of train/val/test files"
        )
        p.add_argument("--tokenizer", default=None, help="tokenizer name or path for token counts")
        p.add_argument("--regime", choices=REGIMES, default="warm", help="prompt regime")
        p.add_argument(
            "--skip-invalid", action="store_true", help="skip malformed rows, report count"
        )
        p.add_argument("--split", default=None, help="only this split (train/val/test)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            p.add_argument("-n", type=int, default=2, help="how many examples to print")
        p.set_defaults(func=func)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _load(args: argparse.Namespace) -> tuple[Task, dict[str, list[Example]]]:
    task = get_task(args.task)
    path = Path(args.path) if args.path else None
    if path is None and task.needs_path:
        raise ValueError(f"task {args.task!r} needs --path (a data file or directory)")
    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    skipped = 0
    if path is None:
        splits = task.splits(None)
    elif path.is_dir():  # the conventional split files as they are (nothing carved)
        files = find_split_files(path)
        if not files:
            raise ValueError(f"{path}: no train/val/test .json(l) files")
        splits = {}
        for name, f in files.items():
            splits[name] = task.load(f, skip_invalid=args.skip_invalid)
            skipped += task.last_skipped
        task.last_skipped = skipped
    else:
        splits = {"all": task.load(path, skip_invalid=args.skip_invalid)}
    if args.split:
        if args.split not in splits:
            raise ValueError(f"no split {args.split!r}; have {sorted(splits)}")
        splits = {args.split: splits[args.split]}
    return task, splits


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def pct(q: float) -> float:
        return float(v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))])

    return {"min": float(v[0]), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": float(v[-1])}


def split_stats(task: Task, examples: list[Example], regime: str, tokenizer: Any) -> dict[str, Any]:
    prompts = [task.build_prompt(ex, regime) for ex in examples]
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
        lengths = [len(tokenizer(format_for_model(p, tokenizer))["input_ids"]) for p in prompts]
        stats["prompt_tokens"] = _percentiles(lengths)
        stats["target_tokens"] = _percentiles(
            [
                len(tokenizer(task.target(ex), add_special_tokens=False)["input_ids"])
                for ex in examples
            ]
        )
    return stats


def cmd_stats(args: argparse.Namespace) -> int:
    task, splits = _load(args)
    tok = _tokenizer(args.tokenizer)
    report = {
        "task": args.task,
        "path": args.path,
        "regime": args.regime,
        "skipped_invalid": task.last_skipped,
        "splits": {name: split_stats(task, exs, args.regime, tok) for name, exs in splits.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"task {args.task}  path {args.path}  regime {args.regime}")
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
    tok = _tokenizer(args.tokenizer)
    shown = []
    for name, exs in splits.items():
        for ex in exs[: max(args.n, 0)]:
            prompt = format_for_model(task.build_prompt(ex, args.regime), tok)
            shown.append({"split": name, "id": ex.id, "prompt": prompt, "target": task.target(ex)})
    if args.json:
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return 0
    bar = "=" * 72
    for item in shown:
        print(f"{bar}\n[{item['split']}] id {item['id']}  regime {args.regime}\n--- prompt ---")
        print(item["prompt"])
        print(f"--- target y* ---\n{item['target']}")
    if args.skip_invalid:
        print(f"{bar}\nskipped invalid rows: {task.last_skipped}")
    return 0
