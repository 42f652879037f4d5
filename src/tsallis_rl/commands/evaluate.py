"""`tsallis-rl eval`: p@1 / p@k / m@k of a saved model on a task split, with per-example records.

    tsallis-rl eval --run runs/default                       # every method's best/, as the run did
    tsallis-rl eval --run runs/default --method garl_q0.75 --split val --k 32
    tsallis-rl eval --model runs/default/garl_q0.75/best --task chainsum --k 16
    tsallis-rl eval --model runs/default/garl_q0.75/checkpoints/step-000300   # tokenizer from its run
    tsallis-rl eval --model Qwen/Qwen3-0.6B --task hotpotqa --data dev.jsonl --regime warm --split all

--run evaluates a trained run's best checkpoint(s) with that run's own task, data, splits, regime,
budgets, prompt format, answer prefix, matching and seed (from its config.yaml): on the test split
it reproduces the run's own test numbers. Any flag given overrides the run's value. Without --run,
every flag means what it means for `train`, with the same default.

p@k: some of k samples is correct; m@k: the majority answer of k samples is correct. Prints a
labelled summary (what was evaluated: model or run and checkpoint, task, split, regime, matching,
k); --json prints it as JSON. --out writes summary.json and records.jsonl (per example: the gold,
the k sampled answers, which were counted correct, the majority answer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from tsallis_rl.config import TrainConfig, default_of, finite_float, parse_bool
from tsallis_rl.errors import ConfigError
from tsallis_rl.evaluation import eval_seed, evaluate
from tsallis_rl.io import read_yaml, write_json, write_jsonl
from tsallis_rl.models import loading
from tsallis_rl.prompts import PromptFormatter, sampling_settings
from tsallis_rl.rundir import check_out_dir, claim_out_dir, is_run_dir
from tsallis_rl.suite import check_model, make_splits
from tsallis_rl.tasks import get_task

# eval flag -> TrainConfig field it sets (a flag left out keeps the run's value, or the default)
FIELDS = {
    "model": "model", "task": "task", "data": "data", "regime": "regime", "k": "eval_k",
    "temperature": "eval_temperature", "thinking_budget": "thinking_budget",
    "answer_budget": "answer_budget", "chat_template": "chat_template", "match": "match",
    "device": "device", "seed": "seed", "progress": "progress", "sampler": "sampler",
}  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model or a trained run: p@1, p@k, m@k (majority of k)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def opt(flag: str, field: str | None, help: str, **kw: Any) -> None:
        shown = f" (default: {default_of(field)}, or the run's)" if field else ""
        p.add_argument(flag, default=None, help=help + shown, **kw)

    p.add_argument("--run", help="a run directory of `tsallis-rl train` (a suite or one method)")
    p.add_argument("--method", help="with --run: only this method (e.g. garl_q0.75)")
    p.add_argument(
        "--checkpoint",
        default="best",
        help="with --run: best (default) or a checkpoint name such as step-000300",
    )
    opt("--model", "model", "HF model name, model folder, or a run's checkpoints/step-N")
    opt("--task", "task", "task name")
    opt("--data", "data", "data file or directory of the task")
    opt(
        "--regime",
        "regime",
        "prompt regime: warm (instructions) or cold (no format cue)",
        choices=("warm", "cold"),
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test", "all"),
        help="which split (all = every example of --data) (default: test)",
    )
    opt("--k", "eval_k", "samples per example", type=int)
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many examples of the split (0 = no cap beyond the split's own size: "
        "the run's val_size / test_size, or train's defaults; default: 200 without --run, the "
        "whole split with --run). --split all takes every example of --data",
    )
    opt("--temperature", "eval_temperature", "sampling temperature", type=finite_float)
    opt("--thinking-budget", "thinking_budget", "max rationale tokens", type=int)
    opt("--answer-budget", "answer_budget", "max answer tokens", type=int)
    opt("--chat-template", "chat_template", "chat template", choices=("auto", "on", "off"))
    opt("--match", "match", "matching mode (default or paper)", choices=("default", "paper"))
    opt("--sampler", "sampler", "rollout sampler", choices=("auto", "generate", "loop"))
    opt("--device", "device", "auto, cpu, cuda, cuda:N, mps")
    opt("--seed", "seed", "sampling seed", type=int)
    opt("--progress", "progress", "show progress bars", type=parse_bool, nargs="?", const=True)
    p.add_argument("--out", help="write summary.json and records.jsonl here")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an --out folder this command wrote before"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON (for machines)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# What to evaluate


@dataclasses.dataclass
class Target:
    """One model to evaluate, with the config that says how (and where its numbers come from)."""

    cfg: TrainConfig
    model_ref: str | None  # None: the default base model
    label: str  # "model X" or "run DIR, method M, checkpoint best (step N)"
    step: int  # the optimizer step whose evaluation seed is used (a run's best step)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        field: getattr(args, flag)
        for flag, field in FIELDS.items()
        if getattr(args, flag) is not None
    }


def _run_targets(args: argparse.Namespace) -> list[Target]:
    """The methods of `--run` (one run dir, or every method of a suite), checked before any work."""
    root = Path(args.run).expanduser()
    if not root.is_dir():
        raise ConfigError(f"run: {root} is not a directory")
    if (root / "final.json").exists() or (root / "best").is_dir():
        dirs = [root]
    else:
        dirs = sorted(
            d for d in root.iterdir() if (d / "config.yaml").exists() and (d / "best").is_dir()
        )
        dirs += sorted(  # a multi-seed suite: OUT/<method>/seed-<s>/
            s
            for d in root.iterdir()
            if d.is_dir()
            for s in d.glob("seed-*")
            if (s / "best").is_dir()
        )
        if not dirs:
            what = "a tsallis-rl run directory" if is_run_dir(root) else "a run directory"
            raise ConfigError(f"run: {root} is {what} with no trained method (no <method>/best)")
    if args.method:
        names = {d.relative_to(root).as_posix() if d != root else d.name: d for d in dirs}
        chosen = [d for n, d in names.items() if n == args.method or n.split("/")[0] == args.method]
        if not chosen:
            raise ConfigError(f"method: {args.method!r} not in {root}; there: {', '.join(names)}")
        dirs = chosen
    overrides = _overrides(args)
    if "model" in overrides:
        raise ConfigError("model: --run evaluates the run's own checkpoints; drop --model or --run")
    targets = []
    for d in dirs:
        cfg = _load_run_config(d / "config.yaml")
        ckpt, step = _checkpoint(d, args.checkpoint)
        cfg = dataclasses.replace(
            cfg, **overrides, model=str(ckpt), lora=False, gradient_checkpointing=False,
            resume=False, overwrite=False, estimators=None,
        )  # fmt: skip
        label = f"run {d}, checkpoint {ckpt.name} (step {step})"
        targets.append(Target(cfg, str(ckpt), label, step))
    return targets


def _load_run_config(path: Path) -> TrainConfig:
    """A run's saved config.yaml as a TrainConfig (its fields only; a clear error otherwise)."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the run's config is not a mapping")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: not a config of this version (unknown fields {unknown})")
    return TrainConfig(**data)


def _checkpoint(run_dir: Path, name: str) -> tuple[Path, int]:
    """(folder, step) of the checkpoint `name` of a run: best (its best validation step) or step-N."""
    if name == "best":
        best = run_dir / "best"
        if not best.is_dir():
            raise ConfigError(f"checkpoint: {run_dir} has no best/ (did the run evaluate?)")
        final = run_dir / "final.json"
        step = json.loads(final.read_text())["best_step"] if final.exists() else 0
        return best, int(step)
    ckpt = run_dir / "checkpoints" / name
    if not ckpt.is_dir() or not name.startswith("step-"):
        there = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
        raise ConfigError(f"checkpoint: {name!r} not in {run_dir}; there: best, {', '.join(there)}")
    return ckpt, int(name.split("-")[1])


def _model_target(args: argparse.Namespace) -> Target:
    cfg = dataclasses.replace(TrainConfig(estimator="garl"), **_overrides(args))
    if args.limit is None:  # eval's own default: at most 200 examples of a split
        cfg = dataclasses.replace(cfg, val_size=200, test_size=200)
    return Target(cfg, cfg.model, f"model {cfg.model or 'chain-sum base model'}", 0)


# --------------------------------------------------------------------------------------------------
# Evaluating


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"flags: limit = {args.limit}: must be >= 0 (0 = all)")
    if args.method and not args.run:
        raise ConfigError("method: only with --run (the methods of a run directory)")
    if args.out:
        check_out_dir(Path(args.out), overwrite=args.overwrite)  # before any work
    targets = _run_targets(args) if args.run else [_model_target(args)]
    prepared = [_prepare(t, args) for t in targets]  # every check before any model is loaded
    results = []
    for target, (task, examples) in zip(targets, prepared):
        summary, records = _evaluate(target, task, examples, args.split)
        results.append((target, summary, records))
        if args.json:
            print(json.dumps({"evaluated": _describe(target, args, len(examples)), **summary}))
        else:
            print(render_summary(summary, target, args, len(examples)))
    if args.out:
        out = claim_out_dir(Path(args.out), overwrite=args.overwrite, kind="eval")
        for target, summary, records in results:
            dest = out if len(results) == 1 else out / _slug(target, Path(args.run))
            head = {"evaluated": _describe(target, args, len(records))}
            write_json(dest / "summary.json", {**head, **summary})
            write_jsonl(dest / "records.jsonl", records)
    return 0


def _prepare(target: Target, args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The task and the examples of the split, validated (data, model, lengths) before any work."""
    cfg = target.cfg.validate("flags")
    task = get_task(cfg.task)
    if args.split == "all":
        if task.needs_path and not cfg.data:
            raise ConfigError(f"task {cfg.task!r} needs --data (a file or directory)")
        examples = task.load(cfg.data) if task.needs_path else task.load(None)
    else:
        examples = make_splits(task, cfg)[args.split]
    if args.limit:
        examples = examples[: args.limit]
    if not examples:
        raise ConfigError(f"split: {args.split!r} of task {cfg.task!r} has no examples")
    check_model(cfg, task, {args.split: examples})  # loadable, prompts fit: before any model work
    return task, examples


def _evaluate(target: Target, task: Any, examples: list[Any], split: str) -> tuple[dict, list]:
    """Evaluate like the trainer does (same prompts, sampling settings, seed and matching)."""
    cfg = target.cfg
    device, dtype = loading.resolve_device(cfg)
    model, tokenizer = loading.load_model(cfg, device, dtype)
    fmt = PromptFormatter.build(tokenizer, task, cfg)
    settings = sampling_settings(
        fmt, cfg, answer_budget=cfg.answer_budget, temperature=cfg.eval_temperature
    )
    res = evaluate(
        model, task, examples, [fmt.prompt(ex) for ex in examples],
        [fmt.gold(ex) for ex in examples], fmt.decode, settings, k=cfg.eval_k,
        seed=eval_seed(cfg.seed, target.step, split), micro_batch=cfg.micro_batch, match=cfg.match,
    )  # fmt: skip
    return res.summary, res.records


def _slug(target: Target, root: Path) -> str:
    run_dir = Path(target.model_ref).parent if target.model_ref else root
    if run_dir.name == "checkpoints":
        run_dir = run_dir.parent
    return run_dir.relative_to(root).as_posix().replace("/", "_") or run_dir.name


def _describe(target: Target, args: argparse.Namespace, n: int) -> dict[str, Any]:
    cfg = target.cfg
    return {
        "what": target.label, "task": cfg.task, "data": cfg.data, "split": args.split,
        "examples": n, "regime": cfg.regime, "match": cfg.match, "k": cfg.eval_k,
        "temperature": cfg.eval_temperature, "thinking_budget": cfg.thinking_budget,
        "answer_budget": cfg.answer_budget, "seed": cfg.seed,
    }  # fmt: skip


def render_summary(summary: dict, target: Target, args: argparse.Namespace, n: int) -> str:
    """A labelled, human-readable result: what was evaluated, then one metric a line."""
    d = _describe(target, args, n)
    k = d["k"]
    head = (
        f"{d['what']}\n  task {d['task']}  split {d['split']} ({n} examples)  regime {d['regime']}"
        f"  matching {d['match']} (eval {summary.get('eval_match')}, reward "
        f"{summary.get('reward_match')})  k {k}  temperature {d['temperature']}"
    )
    names = {"p@1": "p@1 (one sample correct)", f"p@{k}": f"p@{k} (any of {k})"}
    names[f"m@{k}"] = f"m@{k} (majority of {k})"
    lines = [head]
    for key, value in summary.items():
        if key in ("match", "eval_match", "reward_match"):
            continue
        label = names.get(key, key)
        lines.append(
            f"  {label:28s} {value:.4f}" if isinstance(value, float) else f"  {label:28s} {value}"
        )
    return "\n".join(lines)
