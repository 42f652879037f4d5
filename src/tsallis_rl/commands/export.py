"""`tsallis-rl export verl`: a task's splits as verl parquet files plus a verl reward function.

    tsallis-rl export verl --task jsonl --data qa.jsonl --regime cold --out data/qa_cold
    tsallis-rl export verl --task finqa --data ../shared/data/finqa --regime warm --out data/finqa

writes into OUT:
    train.parquet, val.parquet, test.parquet   verl's RL format, one row per example:
        data_source  the task name (verl groups validation metrics by it)
        prompt       [{"role": "user", "content": task.build_prompt(ex, regime)}]  (chat messages;
                     verl applies the model's chat template, Qwen3 opens the <think> block itself)
        ability      "reasoning"
        reward_model {"style": "rule", "ground_truth": task.target(ex)}
        extra_info   {"split", "index", "id", "task", "regime", "example": the Example as JSON}
    reward_fn.py     `compute_score(data_source, solution_str, ground_truth, extra_info)`: this
                     project's matching (exact match by default; see tsallis_rl.integrations.verl)
    export.json      the resolved settings and row counts (reward_fn.py reads it; no setting is
                     ever written into the code)
and prints the verl config lines that use them. Empty splits are not written, and a split file that
an earlier export into OUT wrote but this one does not is removed. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tsallis_rl.config import add_bool_flag
from tsallis_rl.errors import ConfigError
from tsallis_rl.io import write_atomic, write_json
from tsallis_rl.rundir import check_out_dir, claim_out_dir
from tsallis_rl.tasks import REGIMES, Example, Task, get_task

FORMATS = ("verl",)
SPLITS = ("train", "val", "test")
ABILITY = "reasoning"

# The generated module is this constant text: no user string (path, task, regime) is ever put into
# code that verl imports; the settings live in export.json beside it, which the module reads.
REWARD_FN = '''"""verl reward function written by `tsallis-rl export verl`; its settings are in export.json.

    reward.custom_reward_function.path=<this file>
    reward.custom_reward_function.name=compute_score
    # optional, the paper's evaluation match instead of exact match:
    # +reward.custom_reward_function.reward_kwargs.match=substring
"""

import json
from pathlib import Path

from tsallis_rl.integrations.verl import compute_score

SETTINGS = json.loads(Path(__file__).with_name("export.json").read_text(encoding="utf-8"))

__all__ = ["SETTINGS", "compute_score"]
'''


def _size(text: str) -> float | int:
    """A split size: a fraction in [0, 1) or a count."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction or a count, got {text!r}") from None
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1) or a count, got {text!r}")
    return int(value) if value >= 1 or text.strip().isdigit() else value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a task's data in another engine's format (verl)",
        description="Write a task's train/val/test splits in another RL engine's format.",
    )
    fmt = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    p = fmt.add_parser(
        "verl",
        help="verl parquet files + a compute_score reward function",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--task", required=True, help="task name: finqa, hotpotqa, musique, jsonl, rg:..."
    )
    p.add_argument("--data", default=None, help="data file or directory (tasks that read files)")
    p.add_argument("--regime", choices=REGIMES, default="cold", help="prompt regime (default cold)")
    p.add_argument("--out", required=True, help="output directory (created; a marked folder)")
    add_bool_flag(p, "--overwrite", "replace an --out folder `export` wrote before", default=False)
    p.add_argument("--val-size", type=_size, default=None, help="val split carved from train")
    p.add_argument("--test-size", type=_size, default=None, help="test split carved from train")
    p.add_argument("--seed", type=int, default=None, help="seed of the split (task default)")
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed rows (counted)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def verl_row(task: Task, task_name: str, ex: Example, regime: str, split: str, i: int) -> dict:
    """One example as a row of verl's RL parquet format."""
    return {
        "data_source": task_name,
        "prompt": [{"role": "user", "content": task.build_prompt(ex, regime)}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": task.target(ex)},
        "extra_info": {
            "split": split,
            "index": i,
            "id": ex.id,
            "task": task_name,
            "regime": regime,
            "example": json.dumps(asdict(ex), ensure_ascii=False, default=str),
        },
    }


def export_verl(
    task_name: str,
    data: str | Path | None,
    regime: str,
    out: str | Path,
    *,
    val_size: float | int | None = None,
    test_size: float | int | None = None,
    seed: int | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write OUT/{train,val,test}.parquet, OUT/reward_fn.py and OUT/export.json; return the manifest."""
    import pandas as pd

    if regime not in REGIMES:
        raise ConfigError(f"unknown regime {regime!r}; expected one of {REGIMES}")
    task = get_task(task_name)
    if data is None and getattr(task, "needs_path", True):
        raise ConfigError(f"task {task_name!r} reads files: pass --data FILE_OR_DIR")
    wanted: dict[str, Any] = {"skip_invalid": skip_invalid}
    for key, value in (("val_size", val_size), ("test_size", test_size), ("seed", seed)):
        if value is not None:
            wanted[key] = value
    splits = task.splits(data, **_accepted(task.splits, wanted))
    if not splits.get("train"):
        raise ConfigError(f"task {task_name!r} gave no training examples")
    out = Path(out)
    check_out_dir(out, kind="export", overwrite=overwrite)  # the one --out policy, before writing
    claim_out_dir(out, overwrite=overwrite, kind="export")  # --overwrite: a fresh folder, old gone
    counts: dict[str, int] = {}
    files: dict[str, str] = {}
    for split in SPLITS:
        examples = splits.get(split) or []
        counts[split] = len(examples)
        if not examples:
            continue
        rows = [verl_row(task, task_name, ex, regime, split, i) for i, ex in enumerate(examples)]
        path = out / f"{split}.parquet"
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        write_atomic(path, buf.getvalue())
        files[split] = str(path.resolve())
    reward_path = (out / "reward_fn.py").resolve()
    manifest = {
        "format": "verl",
        "task": task_name,
        "data": None if data is None else str(data),
        "regime": regime,
        "val_size": val_size,
        "test_size": test_size,
        "seed": seed,
        "skip_invalid": skip_invalid,
        "skipped_rows": int(getattr(task, "last_skipped", 0) or 0),
        "counts": counts,
        "files": files,
        "reward_fn": str(reward_path),
    }
    write_json(out / "export.json", manifest)
    write_atomic(reward_path, REWARD_FN)
    return manifest


def _accepted(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` that `fn`'s signature takes (all of them if it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def run(args: argparse.Namespace) -> int:
    m = export_verl(
        args.task,
        args.data,
        args.regime,
        args.out,
        val_size=args.val_size,
        test_size=args.test_size,
        seed=args.seed,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
    )
    c = m["counts"]
    print(
        f"wrote {c['train']} train / {c['val']} val / {c['test']} test rows to {args.out}"
        + (f" ({m['skipped_rows']} malformed rows skipped)" if m["skipped_rows"] else "")
    )
    val = m["files"].get("val") or m["files"].get("test") or m["files"]["train"]
    print("verl config lines:")
    print(f"  data.train_files={m['files']['train']}")
    print(f"  data.val_files={val}")
    print(f"  reward.custom_reward_function.path={m['reward_fn']}")
    print("  reward.custom_reward_function.name=compute_score")
    return 0
