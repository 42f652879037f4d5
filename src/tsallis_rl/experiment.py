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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tsallis_rl.config import ConfigError, TrainConfig, looks_like_path, run_tag
from tsallis_rl.errors import ModelError
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.io import read_jsonl, read_yaml
from tsallis_rl.rundir import check_out, prepare_out
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


def locate_model(name: str) -> str:
    """A loadable reference for `name`: a local directory, or a hub id found in (or fetched into)
    the local Hugging Face cache. Raises ModelError saying what was tried and how to fix it.

    Fast when offline: the local cache is tried first (no network); the hub only when
    HF_HUB_OFFLINE is unset and a 3-second connection to it succeeds.
    """
    from transformers import AutoConfig

    from tsallis_rl.tiny import ensure_tiny_model, is_tiny_model

    if is_tiny_model(name):  # built locally on first use (smoke recipes, tests): never the hub
        return str(ensure_tiny_model(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model: {name} is a directory without config.json (not an HF model)")
        return str(path)
    if looks_like_path(name):
        raise ModelError(f"model: {name}: no such directory")
    tried = [f"no local directory {name!r}", "not in the local Hugging Face cache"]
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name
    except (OSError, ValueError):
        pass
    reason = _hub_unreachable()
    if reason is None:
        try:
            AutoConfig.from_pretrained(name)
            return name
        except (OSError, ValueError) as exc:
            reason = f"the hub refused it ({' '.join(str(exc).split())[:160]})"
    tried.append(reason)
    raise ModelError(
        f"model: cannot load {name!r}: {'; '.join(tried)}. Fix: pass a local model directory, "
        f"or download it where there is network (`hf download {name}`) and copy the cache "
        "(HF_HOME), or check the name's spelling and access rights"
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached right now (None when it can)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return "hub not tried: offline mode (HF_HUB_OFFLINE)"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"hub {url.hostname} unreachable ({exc.__class__.__name__})"
    return None


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def tokenizer_source(model_ref: str) -> str:
    """Where the tokenizer of `model_ref` lives: itself, or for a checkpoint folder
    (RUN/<tag>/checkpoints/step-N, which holds weights only) its run's best/ or base model."""
    path = Path(model_ref)
    if not path.is_dir() or any((path / f).exists() for f in _TOKENIZER_FILES):
        return model_ref
    if (path / "adapter_config.json").exists():
        raise ModelError(
            f"model: {path} holds LoRA adapters only; evaluate {path.parent.parent / 'best'} "
            "(the merged model) instead"
        )
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and any((run_dir / "best" / f).exists() for f in _TOKENIZER_FILES):
        return str(run_dir / "best")
    if run_dir is not None and (run_dir / "config.yaml").exists():
        base = (read_yaml(run_dir / "config.yaml") or {}).get("model")
        if base is None:
            from tsallis_rl.basemodel import ensure_base_model

            return str(ensure_base_model(progress=False))
        return locate_model(str(base))
    raise ModelError(
        f"model: {path} has weights but no tokenizer and is not inside a run's checkpoints/; "
        "pass a folder with a tokenizer, e.g. RUN/<tag>/best"
    )


def quiet_transformers(progress: bool) -> None:
    """With progress off, silence transformers' and the hub's own loading/saving bars too."""
    if progress:
        return
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def load_tokenizer(model_ref: str) -> Any:
    """The tokenizer of a located model (pad = eos when it has no pad token)."""
    from transformers import AutoTokenizer

    source = tokenizer_source(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model: cannot load the tokenizer of {source}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    cfg: TrainConfig, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, Any]:
    """The policy and tokenizer: cfg.model, or the cached default base model; LoRA when asked."""
    from transformers import AutoModelForCausalLM

    quiet_transformers(cfg.progress)
    if cfg.model is None:
        from tsallis_rl.basemodel import ensure_base_model

        path = str(ensure_base_model(progress=cfg.progress))
    else:
        path = locate_model(cfg.model)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except OSError as exc:
        raise ModelError(f"model: cannot load the weights of {path}: {exc}") from None
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


def position_limit(model_ref: str) -> int | None:
    """The model's maximum sequence length, read from its config only (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_ref)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(
    cfg: TrainConfig, task: Task, splits: dict[str, list[Example]], model_ref: str
) -> None:
    """Refuse (ConfigError) when the longest prompt + thinking budget + answer does not fit the
    model's position limit; names the numbers and the flags that change them."""
    from tsallis_rl.prompts import PromptFormatter

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


def check_model(cfg: TrainConfig, task: Task, splits: dict[str, list[Example]]) -> None:
    """Before the run directory exists: the model loads its config and tokenizer, and the longest
    prompt fits it. The default base model is checked once it is cached (its first build is the
    run's own model work, so it is not started here)."""
    quiet_transformers(cfg.progress)
    if cfg.model is not None:
        model_ref = locate_model(cfg.model)
    else:
        from tsallis_rl.basemodel import cached_base_model

        cached = cached_base_model()
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
        from tsallis_rl.basemodel import BaseModelConfig, ensure_base_model

        base_cfg = BaseModelConfig(threads=cfg.threads)
        if is_main:  # built once; the other ranks then find it cached
            ensure_base_model(base_cfg, progress=cfg.progress)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        model_path = str(ensure_base_model(base_cfg, progress=False))
    if is_main:  # every check passed: only now is --out created, replaced or reopened
        out = prepare_out(cfg)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    jobs = suite_jobs(cfg)
    results: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        done = out / job.run / "final.json"
        finished = json.loads(done.read_text()) if cfg.resume and done.exists() else None
        # a finished run is kept; a larger --steps extends it from its last checkpoint
        if finished and finished.get("steps", 0) >= job.cfg.steps:
            results[job.run] = finished
        else:
            pending.append(job)
    workers = min(cfg.workers, len(pending)) if device.type == "cpu" and accelerator is None else 1
    if workers > 1:
        threads = max(1, cfg.threads // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {  # workers stay silent; this process draws one combined bar
                job.run: pool.submit(
                    train_run,
                    {**job.cfg.to_dict(), "progress": False},
                    model_path,
                    str(out / job.run),
                    threads,
                )
                for job in pending
            }
            _combined_progress(out, {j.run: j.cfg.steps for j in pending}, futures, cfg.progress)
            for run, fut in futures.items():
                results[run] = fut.result()
    else:
        for job in pending:
            results[job.run] = train_run(
                job.cfg.to_dict(), model_path, str(out / job.run), cfg.threads, 0, accelerator
            )
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
    from tsallis_rl.report import write_report

    write_report(out, cfg, ordered)
    return ordered


class Job(NamedTuple):
    """One (estimator, q, seed) training of a suite: its config, method tag, seed and run name."""

    cfg: TrainConfig
    tag: str
    seed: int
    run: str  # its directory under OUT: <tag>, or <tag>/seed-<s> when the suite has several seeds


def suite_jobs(cfg: TrainConfig) -> list[Job]:
    """Every (method, seed) run of cfg, methods in cfg.runs() order, each over cfg.seed_list()."""
    seeds = cfg.seed_list()
    jobs = []
    for name, q in cfg.runs():
        spec = get_estimator_spec(name)
        for seed in seeds:
            run_cfg = cfg.for_run(name, q, seed)
            tag = run_tag(name, run_cfg.q, spec.uses_q, run_cfg.q_schedule, run_cfg.q_end)
            run = f"{tag}/seed-{seed}" if len(seeds) > 1 else tag
            jobs.append(Job(run_cfg, tag, seed, run))
    return jobs


def _union(splits: Any) -> dict[str, list[Example]]:
    """The examples of several {split: examples} dicts merged split by split (for length checks)."""
    merged: dict[str, list[Example]] = {}
    for one in splits:
        for name, examples in one.items():
            merged.setdefault(name, []).extend(examples)
    return merged


def _combined_progress(
    out: Path, steps: dict[str, int], futures: dict[str, Any], progress: bool
) -> None:
    """One bar over all parallel runs (steps read from each run's metrics.jsonl) until all end.

    One bar is readable however many processes train; in a log file (not a TTY) it prints a
    plain line every 30 s instead of redrawing.
    """
    import sys
    from concurrent.futures import FIRST_EXCEPTION, wait

    from tqdm.auto import tqdm

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
        now = {tag: max(now[tag], _last_step(out / tag)) for tag in steps}
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
) -> Trainer:
    """A Trainer for one run of `cfg` (model from `model_path`, else cfg.model), not yet fitted."""
    task = get_task(cfg.task)
    splits = make_splits(task, cfg)
    device, dtype = resolve_device(cfg)
    torch.manual_seed(cfg.seed)
    model_cfg = cfg if model_path is None else dataclasses.replace(cfg, model=model_path)
    model, tokenizer = load_model(model_cfg, device, dtype)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Trainer(
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
) -> dict[str, Any]:
    """Train one run (picklable entry point for worker processes); returns its final.json content."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(**cfg_dict)
    trainer = build_trainer(
        cfg, run_dir, model_path=model_path, accelerator=accelerator, position=position
    )
    return trainer.fit()


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
        seed = {"seed": res["seed"]} if "run" in res else {}
        for rec in read_jsonl(out / res.get("run", res["tag"]) / "metrics.jsonl"):
            rows.append({"method": res["tag"], **seed, **rec})
    return rows
