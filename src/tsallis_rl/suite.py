"""Run a suite of (estimator, q) trainings that share one config, then write the report.

`tsallis-rl train` with no arguments runs the embedded default: the cold-start chain-sum experiment
(GRPO, GARL q = 0 / 0.75 / 1, PAFT q = 0.75 from the project's own base model; the suite is the
default of `estimators`, chosen in `config.from_args`). Any HF causal LM and task run the same
way. Each run lives in OUT/<tag>/, or OUT/<tag>/seed-<s>/ when `seeds` lists several (every method
once per seed); OUT holds report.md, summary.json, metrics.jsonl (all runs, tagged), config.yaml
and the plots.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tsallis_rl.config import ConfigError, TrainConfig, default_of
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.io import read_jsonl, write_jsonl
from tsallis_rl.models import basemodel
from tsallis_rl.models.loading import (
    load_model,
    load_tokenizer,
    locate_model,
    position_limit,
    quiet_transformers,
    resolve_device,
)
from tsallis_rl.prompts import PromptFormatter
from tsallis_rl.report import write_report
from tsallis_rl.rundir import check_out, prepare_out
from tsallis_rl.tasks import Example, Task, get_task
from tsallis_rl.tasks.base import subsample
from tsallis_rl.tasks.noise import noise_records
from tsallis_rl.trainer import Trainer


def check_lengths(
    cfg: TrainConfig, task: Task, splits: dict[str, list[Example]], model_ref: str
) -> None:
    """Refuse (ConfigError) when the longest prompt + thinking budget + answer does not fit the
    model's position limit; names the numbers and the flags that change them."""
    limit = position_limit(model_ref)
    if limit is None:
        return
    fmt = PromptFormatter.build(load_tokenizer(model_ref), task, cfg)
    examples = [ex for exs in splits.values() for ex in exs]
    if not examples:
        return
    # token counts of the 64 longest prompts in characters (all of them costs seconds on big sets)
    by_chars = sorted(examples, key=lambda ex: len(fmt.prompt_text(ex)), reverse=True)[:64]
    prompt, longest = max((len(fmt.prompt(ex)), ex.id) for ex in by_chars)
    answer = max(cfg.answer_budget, max(len(fmt.gold(ex)) for ex in examples))
    need = prompt + cfg.thinking_budget + len(fmt.think_close) + answer
    if need > limit:
        raise ConfigError(
            f"lengths: the longest prompt ({prompt} tokens, id {longest!r}) + thinking_budget "
            f"{cfg.thinking_budget} + </think> {len(fmt.think_close)} + answer {answer} = {need} "
            f"tokens, but the model takes at most {limit} (max_position_embeddings). Lower "
            "--thinking-budget/--answer-budget, use shorter prompts (--regime, the data), or a "
            "model with a longer context"
        )


def make_splits(task: Task, cfg: TrainConfig) -> dict[str, list[Example]]:
    """train/val/test examples of the task (seeded), checked before any model is loaded.

    val_size / test_size / train_size go to the task's `splits`; for file tasks they are caps
    (a seeded subsample of a split that has its own file, see `Task.splits`). A task whose
    `splits` takes no train_size gets its training split capped here by the same seeded rule.
    """
    if task.needs_path and not cfg.data:
        raise ConfigError(f"task {cfg.task!r} needs --data (a file or directory)")
    if cfg.data and not Path(cfg.data).exists():
        raise ConfigError(f"data: {cfg.data} does not exist")
    sizes = dict(val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)
    if cfg.train_size is not None:  # otherwise the task's own default (all examples of a file)
        sizes["train_size"] = cfg.train_size
    accepted = inspect.signature(task.splits).parameters
    splits = task.splits(cfg.data, **{k: v for k, v in sizes.items() if k in accepted})
    if cfg.train_size is not None and "train_size" not in accepted:
        splits["train"] = subsample(splits["train"], cfg.train_size, cfg.seed, "train")
    if not splits.get("train"):
        raise ConfigError(f"task {cfg.task!r}: no training examples in {cfg.data}")
    return splits


def check_model(cfg: TrainConfig, task: Task, splits: dict[str, list[Example]]) -> None:
    """Before the run directory exists: the model loads its config and tokenizer, and the longest
    prompt fits it. The default base model is checked once it is cached (its first build is the
    run's own model work, so it is not started here)."""
    quiet_transformers(cfg.progress)
    if cfg.model is not None:
        model_ref = locate_model(cfg.model)
    else:
        cached = basemodel.cached_base_model()
        if not (cached / "base_model.json").exists():
            return
        model_ref = str(cached)
    check_lengths(cfg, task, splits, model_ref)


def run_suite(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Train every (estimator, q) of cfg.runs(), once per seed of cfg.seed_list(), and write
    OUT/report.md, summary.json and plots. Returns one result per run (tag, seed, run, final.json).

    On CPU, up to cfg.workers runs train side by side in spawned processes (threads split between
    them); on GPU or under accelerate they run one after another in this process.
    """
    cfg.validate()
    task = get_task(cfg.task)
    # fail on bad data before anything is built; every seed's splits (they differ by seed)
    splits = {
        s: make_splits(task, dataclasses.replace(cfg, seed=s, seeds=None)) for s in cfg.seed_list()
    }
    check_out(cfg)  # --out usable as asked (and a --resume's config unchanged); writes nothing
    check_model(cfg, task, _union(splits.values()))  # a model that cannot load or fit the prompts
    accelerator = _maybe_accelerator(cfg)
    is_main = accelerator is None or accelerator.is_main_process
    out = Path(cfg.out)
    device, _ = resolve_device(cfg)
    model_path = cfg.model
    if model_path is None:
        base_cfg = basemodel.BaseModelConfig(threads=cfg.threads)
        if is_main:  # built once; the other ranks then find it cached
            basemodel.ensure_base_model(base_cfg, progress=cfg.progress)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        model_path = str(basemodel.ensure_base_model(base_cfg, progress=False))
    if is_main:  # every check passed: only now is --out created, replaced or reopened
        out = prepare_out(cfg)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    jobs = suite_jobs(cfg)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        finished = finished_result(out / job.run, job.cfg.steps) if cfg.resume else None
        if finished is not None:
            results[job.run] = finished
        else:
            pending.append(PoolJob(job.run, job.cfg, out / job.run))
    workers = cfg.workers if device.type == "cpu" and accelerator is None else 1
    results.update(
        train_pool(
            pending, model_path, workers=workers, threads=cfg.threads, progress=cfg.progress,
            accelerator=accelerator,
        )
    )  # fmt: skip
    if accelerator is not None:
        _close_process_group(accelerator)
    if not is_main:
        return []  # rank > 0 under accelerate: the main process reports
    ordered = [
        {
            "tag": j.tag,
            **({"seed": j.seed, "run": j.run} if j.run != j.tag else {}),
            **results[j.run],
        }
        for j in jobs
    ]
    write_report(out, cfg, ordered)
    return ordered


class Job(NamedTuple):
    """One (estimator, q, seed) training of a suite: its config, method tag, seed and run name."""

    cfg: TrainConfig
    tag: str
    seed: int
    run: str  # its directory under OUT: <tag>, or <tag>/seed-<s> when the suite has several seeds


def run_tag(
    name: str,
    q: float | None,
    uses_q: bool,
    schedule: str = "constant",
    q_end: float | None = None,
) -> str:
    """Directory/legend name of one run: garl_q0.75, grpo, or garl_q1to0.5-linear for a schedule."""
    if not uses_q or q is None:
        return name
    if schedule != "constant" and q_end is not None:
        return f"{name}_q{q:g}to{q_end:g}-{schedule}"
    return f"{name}_q{q:g}"


ABLATIONS = ("baseline", "pathwise", "normalize")
"""Estimator options whose non-default value makes a different method: named in the run's tag."""


def ablation_tag(cfg: TrainConfig, name: str) -> str:
    """The tag suffix of the ablations of `cfg` that estimator `name` takes, such as
    "_pathwise-false_baseline-none" ("" at the defaults), so that a run's name says what it ran."""
    takes = inspect.signature(get_estimator_spec(name).fn).parameters
    return "".join(
        f"_{option}-{str(getattr(cfg, option)).lower()}"
        for option in ABLATIONS
        if option in takes and getattr(cfg, option) != default_of(option)
    )


def suite_jobs(cfg: TrainConfig) -> list[Job]:
    """Every (method, seed) run of cfg, methods in cfg.runs() order, each over cfg.seed_list()."""
    seeds = cfg.seed_list()
    jobs = []
    for name, q in cfg.runs():
        spec = get_estimator_spec(name)
        for seed in seeds:
            run_cfg = cfg.for_run(name, q, seed)
            tag = run_tag(name, run_cfg.q, spec.uses_q, run_cfg.q_schedule, run_cfg.q_end)
            tag += ablation_tag(run_cfg, name)
            run = f"{tag}/seed-{seed}" if len(seeds) > 1 else tag
            jobs.append(Job(run_cfg, tag, seed, run))
    return jobs


class PoolJob(NamedTuple):
    """One run for `train_pool`: its name (the key of its result), config and run directory."""

    name: str
    cfg: TrainConfig
    run_dir: Path


def finished_result(run_dir: Path, steps: int) -> dict[str, Any] | None:
    """final.json of a run that has trained at least `steps` steps, else None.

    The one rule for "finished" (train --resume, the escape study --resume): such a run is kept;
    a run with fewer steps (or none) is trained, and a larger --steps extends it from its last
    checkpoint.
    """
    done = Path(run_dir) / "final.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    return result if result.get("steps", 0) >= steps else None


def train_pool(
    jobs: list[PoolJob],
    model_path: str,
    *,
    workers: int,
    threads: int,
    progress: bool = False,
    accelerator: Any = None,
    runner: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every job from `model_path`; returns final.json content by job name.

    The one worker pool: with `workers` > 1 (CPU only; callers pass 1 on GPU or under
    accelerate), up to that many runs train side by side in spawned processes with the
    `threads` split between them, silent, while this process draws one combined progress bar;
    otherwise they train one after another here with all `threads`. `runner` (default
    `train_run`; module level, so that it pickles) trains one job; a study that probes its runs
    passes its own (noise_study.noise_train_run).
    """
    workers = min(workers, len(jobs))
    runner = runner or train_run
    if workers <= 1:
        return {
            job.name: runner(
                job.cfg.to_dict(), model_path, str(job.run_dir), threads, 0, accelerator
            )
            for job in jobs
        }
    per_worker = max(1, threads // workers)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_signals)
    try:
        futures = {
            job.name: pool.submit(
                runner,
                {**job.cfg.to_dict(), "progress": False},
                model_path,
                str(job.run_dir),
                per_worker,
            )
            for job in jobs
        }
        _combined_progress({j.name: (j.run_dir, j.cfg.steps) for j in jobs}, futures, progress)
        results = {name: fut.result() for name, fut in futures.items()}
    except KeyboardInterrupt:  # Ctrl-C reaches this process alone (workers ignore it): stop them
        _stop_workers(pool)
        raise
    pool.shutdown()
    return results


def _worker_signals() -> None:
    """Worker initializer: Ctrl-C goes to the whole process group; only the parent handles it
    (it stops the workers), so no worker prints a traceback of its own. SIGTERM (the parent's
    stop) exits through Python, so the worker's own cleanup runs (no leaked semaphores)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool's workers now (SIGTERM: an atomic write cut short leaves the previous version,
    so each run keeps its last whole checkpoint) and drop the jobs not started."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _union(splits: Any) -> dict[str, list[Example]]:
    """The examples of several {split: examples} dicts merged split by split (for length checks)."""
    merged: dict[str, list[Example]] = {}
    for one in splits:
        for name, examples in one.items():
            merged.setdefault(name, []).extend(examples)
    return merged


def _combined_progress(
    runs: dict[str, tuple[Path, int]], futures: dict[str, Any], progress: bool
) -> None:
    """One bar over all parallel runs (steps read from each run's metrics.jsonl) until all end.

    One bar is readable however many processes train; in a log file (not a TTY) it prints a
    plain line every 30 s instead of redrawing.
    """
    import sys
    from concurrent.futures import FIRST_EXCEPTION, wait

    from tqdm.auto import tqdm

    steps = {name: n for name, (_, n) in runs.items()}
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=sum(steps.values()),
        desc=f"{len(steps)} runs",
        disable=not progress,
        dynamic_ncols=tty,
        mininterval=0.5 if tty else 30.0,
    )
    now = dict.fromkeys(steps, 0)
    while True:
        done, running = wait(list(futures.values()), timeout=2.0, return_when=FIRST_EXCEPTION)
        now = {tag: max(now[tag], _last_step(runs[tag][0])) for tag in steps}
        bar.update(sum(now.values()) - bar.n)
        bar.set_postfix_str("  ".join(f"{t} {now[t]}/{n}" for t, n in steps.items()), refresh=False)
        if not running or any(f.exception() for f in done):
            break
    bar.close()


def _last_step(run_dir: Path) -> int:
    """The last optimizer step a run has logged (0 before its first)."""
    try:
        rows = read_jsonl(run_dir / "metrics.jsonl")
    except (OSError, ValueError):
        return 0
    return max((int(r.get("step", 0)) for r in rows if r.get("kind") == "train"), default=0)


def build_trainer(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    model_path: str | None = None,
    accelerator: Any = None,
    position: int = 0,
    trainer_cls: type[Trainer] = Trainer,
) -> Trainer:
    """A Trainer (or `trainer_cls`) for one run of `cfg` (model from `model_path`, else
    cfg.model), not yet fitted. A task with `?noise=` gets its corrupted examples listed in
    RUN/noise.jsonl (index, id, clean and noisy answer)."""
    task = get_task(cfg.task)
    splits = make_splits(task, cfg)
    device, dtype = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    model_cfg = cfg if model_path is None else dataclasses.replace(cfg, model=model_path)
    model, tokenizer = load_model(model_cfg, device, dtype)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if task.noise and (accelerator is None or accelerator.is_main_process):
        write_jsonl(Path(run_dir) / "noise.jsonl", noise_records(splits["train"]))
    return trainer_cls(
        cfg, model=model, tokenizer=tokenizer, task=task, splits=splits, run_dir=Path(run_dir),
        device=device, accelerator=accelerator, bar_position=position,
    )  # fmt: skip


def train_run(
    cfg_dict: dict[str, Any],
    model_path: str,
    run_dir: str,
    threads: int,
    position: int = 0,
    accelerator: Any = None,
    trainer_cls: type[Trainer] = Trainer,
) -> dict[str, Any]:
    """Train one run (picklable entry point for worker processes; a study's runner is this with
    its own `trainer_cls`, via functools.partial); returns its final.json content."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(**cfg_dict)
    trainer = build_trainer(
        cfg, run_dir, model_path=model_path, accelerator=accelerator, position=position,
        trainer_cls=trainer_cls,
    )  # fmt: skip
    return trainer.fit()


def _close_process_group(accelerator: Any) -> None:
    """Every rank waits until all have finished training and saving, then leaves the process
    group: a rank that exits while another still uses gloo can abort it mid-save."""
    import torch.distributed as dist

    accelerator.wait_for_everyone()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _maybe_accelerator(cfg: TrainConfig) -> Any:
    """An accelerate.Accelerator when launched with several processes, else None (plain loop)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    device, _ = resolve_device(cfg)
    return Accelerator(cpu=device.type == "cpu")  # cpu=True selects gloo (MULTI_CPU)
