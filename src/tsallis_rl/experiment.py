"""Run a suite of (estimator, q) trainings that share one config, then write the report.

`tsallis-rl train` with no arguments runs the embedded default: the cold-start chain-sum experiment
(GRPO, GARL q = 0 / 0.75 / 1, PAFT q = 0.75 from the project's own base model). With --model/--task
it runs the estimators asked for on any HF causal LM and task. Each run lives in OUT/<tag>/; OUT holds
report.md, summary.json, metrics.jsonl (all runs, tagged), config.yaml and the plots.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from tsallis_rl.config import ConfigError, TrainConfig, run_tag
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.rundir import check_out, prepare_out, read_jsonl
from tsallis_rl.tasks import Example, Task, get_task
from tsallis_rl.trainer import Trainer


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Device and dtype from cfg: auto = CUDA + bf16 when available, else CPU + fp32."""
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = names.get(cfg.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def load_model(
    cfg: TrainConfig, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, Any]:
    """The policy and tokenizer: cfg.model, or the cached default base model; LoRA when asked."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.model is None:
        from tsallis_rl.basemodel import ensure_base_model

        path: str | Path = ensure_base_model(progress=cfg.progress)
    else:
        path = cfg.model
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = True
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        targets = (
            cfg.lora_targets
            if cfg.lora_targets == "all-linear"
            else [t.strip() for t in cfg.lora_targets.split(",")]
        )
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
    return model, tokenizer


def make_splits(task: Task, cfg: TrainConfig) -> dict[str, list[Example]]:
    """train/val/test examples of the task (seeded), checked before any model is loaded.

    val_size / test_size / train_size go to the task's `splits`; for file tasks they are caps
    (a seeded subsample of a split that has its own file, see `Task.splits`). A task whose
    `splits` takes no train_size gets its training split capped here by the same seeded rule.
    """
    from tsallis_rl.tasks.base import subsample

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


def run_suite(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Train every (estimator, q) of cfg.runs() and write OUT/report.md, summary.json and plots.

    On CPU, up to cfg.workers runs train side by side in spawned processes (threads split between
    them); on GPU or under accelerate they run one after another in this process.
    """
    cfg.validate()
    task = get_task(cfg.task)
    make_splits(task, cfg)  # fail on bad data before anything is built
    check_out(cfg)  # --out usable as asked (and a --resume's config unchanged); writes nothing
    accelerator = _maybe_accelerator(cfg)
    is_main = accelerator is None or accelerator.is_main_process
    out = Path(cfg.out)
    device, _ = resolve_device(cfg)
    model_path = cfg.model
    if model_path is None:
        from tsallis_rl.basemodel import BaseModelConfig, ensure_base_model

        base_cfg = BaseModelConfig(threads=cfg.threads)
        if is_main:  # built once; the other ranks then find it cached
            ensure_base_model(base_cfg, progress=cfg.progress)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        model_path = str(ensure_base_model(base_cfg, progress=False))
    else:
        _check_model(model_path)
    if is_main:  # every check passed: only now is --out created, replaced or reopened
        out = prepare_out(cfg)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    jobs = []
    for name, q in cfg.runs():
        spec = get_estimator_spec(name)
        run_cfg = cfg.for_run(name, q)
        jobs.append((run_cfg, run_tag(name, run_cfg.q, spec.uses_q)))
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for run_cfg, tag in jobs:
        done = out / tag / "final.json"
        finished = json.loads(done.read_text()) if cfg.resume and done.exists() else None
        # a finished run is kept; a larger --steps extends it from its last checkpoint
        if finished and finished.get("steps", 0) >= run_cfg.steps:
            results[tag] = {"tag": tag, **finished}
        else:
            pending.append((run_cfg, tag))
    workers = min(cfg.workers, len(pending)) if device.type == "cpu" and accelerator is None else 1
    if workers > 1:
        threads = max(1, cfg.threads // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                tag: pool.submit(
                    train_run, run_cfg.to_dict(), model_path, str(out / tag), threads, i % workers
                )
                for i, (run_cfg, tag) in enumerate(pending)
            }
            for tag, fut in futures.items():
                results[tag] = {"tag": tag, **fut.result()}
    else:
        for run_cfg, tag in pending:
            res = train_run(
                run_cfg.to_dict(), model_path, str(out / tag), cfg.threads, 0, accelerator
            )
            results[tag] = {"tag": tag, **res}
    if not is_main:
        return []  # rank > 0 under accelerate: the main process reports
    ordered = [results[tag] for _, tag in jobs]
    from tsallis_rl.report import write_report

    write_report(out, cfg, ordered)
    return ordered


def train_run(
    cfg_dict: dict[str, Any],
    model_path: str,
    run_dir: str,
    threads: int,
    position: int = 0,
    accelerator: Any = None,
) -> dict[str, Any]:
    """Train one run (picklable entry point for worker processes); returns its final.json content."""
    cfg = TrainConfig(**cfg_dict)
    torch.set_num_threads(threads)
    task = get_task(cfg.task)
    splits = make_splits(task, cfg)
    device, dtype = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(dataclasses.replace(cfg, model=model_path), device, dtype)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        cfg,
        model=model,
        tokenizer=tokenizer,
        task=task,
        splits=splits,
        run_dir=Path(run_dir),
        device=device,
        accelerator=accelerator,
        bar_position=position,
    )
    return trainer.fit()


def _check_model(path: str) -> None:
    """A ConfigError naming --model if its config or tokenizer cannot be loaded (cheap, no weights)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(path)
        AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: cannot load {path!r}: {str(exc).splitlines()[0]}") from None


def _maybe_accelerator(cfg: TrainConfig) -> Any:
    """An accelerate.Accelerator when launched with several processes, else None (plain loop)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    device, _ = resolve_device(cfg)
    return Accelerator(cpu=device.type == "cpu")  # cpu=True selects gloo (MULTI_CPU)


def combined_metrics(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run's metrics.jsonl records, tagged with their run."""
    rows = []
    for res in results:
        for rec in read_jsonl(out / res["tag"] / "metrics.jsonl"):
            rows.append({"method": res["tag"], **rec})
    return rows
