"""TrainConfig: every option of `tsallis-rl train`, with its default, in one dataclass.

The defaults are the embedded CPU cold-start experiment (chain-sum task, cold regime, the project's
own base model); CLI flags are generated from the fields, so each default lives only here. Configs
load from YAML (`io.read_yaml`: `yaml.safe_load`) and flags override them; `validate()` runs
before any model is loaded and names the field at fault.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tsallis_rl.errors import ConfigError, RecipeError
from tsallis_rl.estimators import get_estimator_spec, list_estimators
from tsallis_rl.io import looks_like_path, read_yaml
from tsallis_rl.recipes import load_recipe


def _opt(default: Any, help: str, choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


DEFAULT_SUITE = "grpo,garl:0,garl:0.75,garl:1,paft:0.75"
"""The cold-start suite: what `tsallis-rl train` runs unless --estimator, --q or --estimators says
otherwise (applied by `from_args`, recorded in the run's config.yaml)."""


@dataclass
class TrainConfig:
    """Options of one training run (and, with `estimators`, of a suite of runs that share them)."""

    # what to train
    recipe: str | None = _opt(
        None,
        "start from a packaged recipe (`tsallis-rl recipes` lists them); any other option given overrides its value",
    )
    model: str | None = _opt(
        None,
        "HF model name or local path, or tiny:random (a local random model for smoke tests); default: the project's pretrained chain-sum base model (built and cached on first use)",
    )
    task: str = _opt(
        "chainsum",
        "task name: chainsum (synthetic default), finqa, hotpotqa, musique, jsonl, rg:<name>?<options>",
    )
    data: str | None = _opt(
        None, "data file or directory of the task (not needed for generated tasks)"
    )
    regime: str = _opt(
        "cold",
        "prompt regime: warm (instructions) or cold (linearised, no format cue)",
        ("warm", "cold"),
    )
    train_size: int | None = _opt(
        None,
        "training examples: how many a generated task makes (default None = the task's own: chainsum 2000, every example of a file task), or a cap",
    )
    val_size: int = _opt(50, "validation examples")
    test_size: int = _opt(200, "test examples")
    # estimator
    estimator: str = _opt("garl", "estimator: garl, paft, grpo, rb_rloo (or a registered name)")
    estimators: str | None = _opt(
        None,
        f"comma list of NAME[:q] runs that share all other options (a YAML list works too); default when neither --estimator nor --q is given: the cold-start suite {DEFAULT_SUITE}",
    )
    q: float = _opt(0.75, "commitment q in [0, 1] (0 = RLVR, 1 = log marginal likelihood)")
    q_schedule: str = _opt("constant", "q schedule", ("constant", "step", "linear", "cosine"))
    q_end: float | None = _opt(None, "final q of a step/linear/cosine schedule")
    q_switch_step: int | None = _opt(
        None,
        "step schedule (required there): q until this step, q_end after (SFT-then-RLVR analogue)",
    )
    num_rollouts: int = _opt(8, "M: rationales sampled per prompt")
    num_samples: int | None = _opt(None, "K: PAFT resampled rationales per prompt (default M)")
    baseline: str = _opt(
        "rloo", "GARL baseline: rloo (Algorithm 1) or none (plug-in, Eq. 9)", ("rloo", "none")
    )
    pathwise: bool = _opt(True, "GARL: keep the pathwise (answer-likelihood) gradient term")
    normalize: bool = _opt(True, "keep the 1/M^q factor of GARL/PAFT")
    clip_eps: float = _opt(0.2, "GRPO: PPO clip range")
    scale_rewards: bool = _opt(True, "GRPO: divide advantages by the group std")
    rlpr_std_beta: float = _opt(
        0.5,
        "rlpr: adaptive std filter, groups whose reward std is below beta x the EMA of past steps' mean reward std get advantage 0 (RLPR's std_filter_beta; its Qwen recipe 0.5; 0 = off)",
    )
    rlpr_std_ema: float = _opt(
        0.99, "rlpr: weight of the old value in that EMA (RLPR's filter_ema_ratio)"
    )
    rlpr_filter_start: int = _opt(
        10,
        "rlpr: first step (0-based) the std filter applies; the EMA collects from step 0 (RLPR's filter_start_step 11, 1-based)",
    )
    # rollouts
    thinking_budget: int = _opt(
        24, "max rationale tokens; then </think> is forced (budget forcing)"
    )
    answer_budget: int = _opt(6, "max sampled answer tokens (GRPO and evaluation)")
    answer_prefix: str = _opt(
        "auto",
        "text between </think> and the answer: auto = '\\n\\n' with a chat template, '' without",
    )
    chat_template: str = _opt(
        "auto", "wrap prompts in the tokenizer's chat template", ("auto", "on", "off")
    )
    temperature: float = _opt(1.0, "sampling temperature of training rollouts")
    top_p: float = _opt(1.0, "nucleus sampling of training rollouts")
    sampler: str = _opt(
        "auto",
        "rollout sampler: generate (transformers' generate), loop (hand-written KV-cache loop); auto = loop on CPU (faster there for small models, bench/rollout_speed.py), generate elsewhere",
        ("auto", "generate", "loop"),
    )
    # optimisation
    lr: float = _opt(
        5e-5,
        "learning rate (low by default: at 1e-4 the CPU default's answers decoupled from their chains on some seeds)",
    )
    optimizer: str = _opt("adam", "optimizer", ("adam", "adamw", "sgd"))
    weight_decay: float = _opt(0.0, "weight decay")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up steps (constant afterwards)")
    batch_size: int = _opt(8, "B: prompts per optimizer step (per process)")
    grad_accum: int = _opt(1, "micro-steps of B prompts accumulated per optimizer step")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)")
    steps: int = _opt(300, "optimizer steps")
    seed: int = _opt(0, "random seed (data order, sampling, resampling)")
    seeds: str | None = _opt(
        None,
        "comma list of seeds (a YAML list works too): every run of the suite repeats once per seed (splits, data order, sampling; same base model) in OUT/<tag>/seed-<s>/, and the report adds mean, sd and a 95-percent t-interval over seeds; replaces --seed (one seed = --seed)",
    )
    # evaluation
    eval_every: int = _opt(
        25, "evaluate on the validation split every N steps (0 = only at the end)"
    )
    eval_k: int = _opt(16, "samples per example for p@k / m@k")
    eval_temperature: float = _opt(1.0, "sampling temperature for evaluation")
    select_metric: str = _opt(
        "m@k",
        "validation metric that picks the checkpoint tested at the end (best/): m@k = majority "
        "vote over eval_k samples; p@1; log_p_hat = mean log P-hat of the gold answer, which "
        "moves long before any accuracy does in a cold start (ties keep the earlier step)",
        ("m@k", "p@1", "log_p_hat"),
    )
    match: str = _opt(
        "default",
        "matching (metrics.MATCH_MODES): default = the task's exact match as reward and its "
        "relaxed match (never stricter) for evaluation; paper = the paper's literal definitions "
        "(reward 1[answer == y*], evaluation 'y* is a substring of the answer')",
        ("default", "paper"),
    )
    # model and compute
    lora: bool = _opt(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_targets: str = _opt("all-linear", "LoRA target modules (peft syntax, comma list)")
    dtype: str = _opt(
        "auto",
        "model dtype: auto = bf16 on CUDA, fp32 on CPU",
        ("auto", "float32", "bfloat16", "float16"),
    )
    device: str = _opt("auto", "device: auto, cpu, cuda, cuda:N, mps")
    micro_batch: int = _opt(64, "sequences per forward pass when computing log-probs")
    gen_batch_size: int = _opt(256, "sequences sampled at once")
    threads: int = _opt(2, "CPU threads for torch (split between --workers)")
    workers: int = _opt(
        2,
        "runs of a suite trained side by side in separate processes (CPU only; tiny models are overhead-bound, so 2 processes x 1 thread beat 1 x 2)",
    )
    gradient_checkpointing: bool = _opt(False, "trade compute for memory in the training forward")
    share_prompt: bool = _opt(
        True,
        "run each prompt once for its M rollouts (scoring with and without grad, evaluation, "
        "sampling's prefill) and continue from its expanded key/value cache: the same log-probs "
        "and gradient; false, or a model whose cache cannot be expanded (config.yaml then records "
        "false), runs the prompt once per rollout",
    )
    # output
    out: str = _opt("runs/default", "run directory")
    save_every: int = _opt(50, "checkpoint every N steps (0 = only at the end)")
    resume: bool = _opt(False, "continue the run in --out from its latest checkpoint")
    overwrite: bool = _opt(False, "delete an existing --out directory first")
    tensorboard: bool = _opt(False, "also log to TensorBoard (needs tensorboard)")
    wandb: bool = _opt(False, "also log to Weights & Biases (needs wandb)")
    wandb_project: str = _opt("tsallis-rl", "W&B project")
    progress: bool = _opt(True, "show progress bars")

    # ----------------------------------------------------------------------------------------------
    def validate(
        self, source: str = "config", sources: dict[str, str] | None = None
    ) -> TrainConfig:
        """Raise ConfigError naming the first bad field (and where it came from); returns self.

        Pure checks of values and of the local file system only (no model is loaded, nothing is
        written): `sources` maps a field to the file or "flags" that set it, default `source`.
        """

        def bad(name: str, why: str) -> None:
            where = (sources or {}).get(name, source)
            raise ConfigError(f"{where}: {name} = {getattr(self, name)!r}: {why}")

        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, f"must be one of {', '.join(choices)}")
        for f in fields(self):  # NaN/inf pass every comparison below, so refuse them first
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                bad(f.name, "must be a finite number")
        for name, low, strict in (
            ("clip_eps", 0.0, True),
            ("eval_temperature", 0.0, False),
            ("max_grad_norm", 0.0, False),
            ("weight_decay", 0.0, False),
            ("rlpr_std_beta", 0.0, False),
            ("rlpr_std_ema", 0.0, False),
            ("lora_r", 1, False),
            ("lora_alpha", 1, False),
        ):
            v = getattr(self, name)
            if v < low or (strict and v == low):
                bad(name, f"must be {'>' if strict else '>='} {low}")
        self._validate_paths(bad)
        for name in ("q", "q_end"):
            v = getattr(self, name)
            if v is not None and not (0.0 <= float(v) <= 1.0):
                bad(name, "must lie in [0, 1]")
        for name in (
            "num_rollouts",
            "batch_size",
            "grad_accum",
            "thinking_budget",
            "eval_k",
            "micro_batch",
            "gen_batch_size",
            "threads",
        ):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        for name in (
            "steps",
            "answer_budget",
            "eval_every",
            "save_every",
            "val_size",
            "test_size",
            "warmup_steps",
        ):
            if int(getattr(self, name)) < 0:
                bad(name, "must be >= 0")
        if self.rlpr_std_ema >= 1.0:
            bad("rlpr_std_ema", "must be < 1 (the EMA must take in new steps)")
        if self.rlpr_filter_start < 0:
            bad("rlpr_filter_start", "must be >= 0")
        if self.q_switch_step is not None and self.q_switch_step < 0:
            bad("q_switch_step", "must be >= 0")
        if self.train_size is not None and self.train_size < 1:
            bad("train_size", "must be >= 1")
        if self.num_samples is not None and self.num_samples < 1:
            bad("num_samples", "K must be >= 1")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.temperature <= 0:
            bad("temperature", "training rollouts need temperature > 0")
        if not (0 < self.top_p <= 1):
            bad("top_p", "must lie in (0, 1]")
        if self.top_p < 1:  # the estimators' log-probs must be those of the sampling distribution
            bad(
                "top_p",
                "the estimators need on-policy log-probs of the sampled rationales, which nucleus "
                "sampling truncates; use top_p = 1 (and --temperature to sharpen sampling)",
            )
        if self.q_schedule != "constant" and self.q_end is None:
            bad("q_end", f"the {self.q_schedule} schedule needs q_end")
        if self.q_schedule == "constant" and self.q_end is not None:
            bad(
                "q_end", "only a step/linear/cosine --q-schedule uses it (the schedule is constant)"
            )
        if self.q_schedule == "step" and self.q_switch_step is None:
            bad("q_switch_step", "the step schedule needs it: the step at which q becomes q_end")
        if self.q_schedule != "step" and self.q_switch_step not in (None, 0):  # 0: old configs
            bad(
                "q_switch_step",
                f"only the step schedule uses it (the schedule is {self.q_schedule})",
            )
        if self.q_switch_step is not None and self.q_switch_step > self.steps:
            bad(
                "q_switch_step", f"lies after the last step ({self.steps}): q_end would never apply"
            )
        known = list_estimators()
        for name, q in self.runs():
            if name not in known:
                raise ConfigError(
                    f"{source}: estimator {name!r} is unknown; known: {', '.join(known)}"
                )
            if q is not None and not (0.0 <= q <= 1.0):
                raise ConfigError(f"{source}: estimators: q = {q} for {name!r} must lie in [0, 1]")
            spec = get_estimator_spec(name)
            need = spec.required_rollouts({"baseline": self.baseline})
            if self.num_rollouts < need:
                bad("num_rollouts", f"{name} (leave-one-out/group baseline) needs M >= {need}")
            if spec.needs_sampled_rewards and self.answer_budget < 1:
                bad("answer_budget", f"{name} samples its answer: needs >= 1")
        if self.eval_every and self.answer_budget < 1:
            bad("answer_budget", "evaluation samples answers: needs >= 1")
        if self.resume and self.overwrite:
            bad("resume", "cannot be combined with overwrite")
        if self.seeds is not None:
            try:
                self.seed_list()
            except ConfigError as exc:
                bad("seeds", str(exc))
            if self.seed != default_of("seed"):
                bad("seeds", f"and seed = {self.seed} both given: seeds lists every seed; keep one")
        return self

    def _validate_paths(self, bad: Any) -> None:
        """Device syntax and availability, a path-like --model that exists, --out not a file."""
        if not _DEVICE.fullmatch(self.device):
            bad("device", "expected auto, cpu, cuda, cuda:N or mps")
        if self.device.startswith("cuda") or self.device == "mps":
            import torch

            if self.device.startswith("cuda") and not torch.cuda.is_available():
                bad("device", "CUDA is not available here (use --device cpu or auto)")
            if (
                self.device.startswith("cuda:")
                and int(self.device[5:]) >= torch.cuda.device_count()
            ):
                bad("device", f"this machine has {torch.cuda.device_count()} CUDA device(s)")
            if self.device == "mps" and not torch.backends.mps.is_available():
                bad("device", "MPS is not available here (use --device cpu or auto)")
        if self.model is not None and not self.model.startswith("tiny:"):  # tiny: see models.tiny
            if not self.model.strip():
                bad("model", "is empty")
            if looks_like_path(self.model) and not Path(self.model).expanduser().exists():
                bad("model", "no such directory (a local model path must exist)")
            if Path(self.model).expanduser().is_file():
                bad("model", "is a file; pass the model's directory (config.json + weights)")
        out = Path(self.out).expanduser()
        if out.is_file():
            bad("out", "is a file; the run directory must be a directory")
        for parent in out.parents:
            if parent.exists():
                if not parent.is_dir():
                    bad("out", f"{parent} is a file, so the run directory cannot be made")
                break

    def runs(self) -> list[tuple[str, float | None]]:
        """(estimator, q) of every run: one per item of `estimators`, else the single estimator."""
        spec = self.estimators
        if spec is None:
            return [(self.estimator.lower(), self.q)]
        out = []
        for item in [s.strip() for s in spec.split(",") if s.strip()]:
            name, _, qs = item.partition(":")
            try:
                out.append((name.lower(), float(qs) if qs else None))
            except ValueError:
                raise ConfigError(
                    f"estimators: bad q in {item!r} (expected NAME or NAME:q)"
                ) from None
        if not out:
            raise ConfigError("estimators: empty list")
        return out

    def seed_list(self) -> list[int]:
        """The seeds every run repeats with: those of `seeds` (distinct, >= 0), else [seed]."""
        if self.seeds is None:
            return [self.seed]
        items = [s.strip() for s in str(self.seeds).split(",")]
        if len(items) > 1 and "" in items:  # "0,,1" or "0,1,": a typo, not a list of seeds
            raise ConfigError(f"an empty item in {self.seeds!r}; expected e.g. 0,1,2")
        items = [s for s in items if s]
        try:
            seeds = [int(s) for s in items]
        except ValueError:
            raise ConfigError("expected a comma list of integers, e.g. 0,1,2") from None
        if not seeds:
            raise ConfigError("empty list")
        if min(seeds) < 0 or len(set(seeds)) != len(seeds):
            raise ConfigError("seeds must be distinct integers >= 0")
        return seeds

    def for_run(self, name: str, q: float | None, seed: int | None = None) -> TrainConfig:
        """This config specialised to one run of the suite (and one of its seeds)."""
        return dataclasses.replace(
            self,
            estimator=name,
            q=self.q if q is None else q,
            estimators=None,
            seed=self.seed if seed is None else seed,
            seeds=None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


# --------------------------------------------------------------------------------------------------
# YAML and CLI


def load_yaml(path: str | Path, cls: type = None) -> dict[str, Any]:  # type: ignore[assignment]
    """A YAML mapping of fields of `cls` (default TrainConfig); unknown keys are errors that name
    the file and key."""
    p = Path(path)
    data = read_yaml(p) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of options, got {type(data).__name__}")
    names = {f.name for f in fields(cls or TrainConfig)}
    for key in data:
        if str(key).replace("-", "_") not in names:
            raise ConfigError(f"{p}: unknown key {key!r}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def field_type(name: str, cls: type = None) -> type:  # type: ignore[assignment]
    """The value type of a config field from its annotation (`int | None` -> int); `cls` defaults
    to TrainConfig."""
    hint = typing.get_type_hints(cls or TrainConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def finite_float(s: str) -> float:
    """A float flag's value: a finite number (the message names no internal type)."""
    try:
        value = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(value):  # argparse would accept nan/inf; no option means them
        raise argparse.ArgumentTypeError(f"expected a finite number, got {s!r}")
    return value


def list_parser(item: type) -> Callable[[str], list]:
    """A flag value "a,b,c" as a list of `item` (floats finite); an empty item among values
    ("0,,1") is a typo, not a value, and is refused; "" is the empty list."""
    convert = finite_float if item is float else item

    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):  # "" or ",": an empty list (the config's check says what it needs)
            return []
        if "" in parts:
            raise argparse.ArgumentTypeError(f"expected a comma list such as 1,2,3, got {text!r}")
        try:
            return [convert(p) for p in parts]
        except (ValueError, argparse.ArgumentTypeError):
            what = {float: "numbers", int: "integers"}.get(item, "names")
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


def mapping_parser(text: str) -> dict[str, float]:
    """A flag value "sgd=0.01,adam=1e-4" as {"sgd": 0.01, "adam": 0.0001}."""
    out = {}
    for part in (p.strip() for p in text.split(",")):
        name, eq, value = part.partition("=")
        try:
            out[name.strip()] = finite_float(value)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected NAME=NUMBER,..., got {part!r}") from None
        if not eq or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=NUMBER,..., got {part!r}")
    return out


def flag_parser(kind: Any) -> Callable[[str], Any]:
    """How a flag's text becomes a field's value, from the field's type: floats must be finite,
    list[X] is a comma list, dict[str, float] NAME=NUMBER pairs; anything else is `kind(text)`."""
    origin = typing.get_origin(kind)
    if origin is list:
        return list_parser(typing.get_args(kind)[0])
    if origin is dict:
        return mapping_parser
    return finite_float if kind is float else kind


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    flags: dict[str, str] | None = None,
    *,
    default_note: str = "",
    helps: dict[str, str] | None = None,
) -> None:
    """The one flag generator of every subcommand: a flag per dataclass field of `cls`, its type
    from the annotation (`flag_parser`; bools take an optional true/false), its help and choices
    from the field's metadata (or `helps`, by field name, for a dataclass without metadata), its
    default shown (`default_note` appended). Every flag defaults to None, so "given" and "left
    out" stay apart (a left-out flag keeps the YAML's, the recipe's or the run's value). `flags`
    maps flag name -> field (default: every field, same name).
    """
    by_name = {f.name: f for f in fields(cls)}
    for flag, name in (flags or {n: n for n in by_name}).items():
        f = by_name[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        what = (helps or {}).get(name) or f.metadata.get("help", name)
        help_text = f"{what} (default: {default}{default_note})"
        kind = field_type(name, cls)
        option = "--" + flag.replace("_", "-")
        if kind is bool:
            add_bool_flag(parser, option, help_text, dest=flag)
        else:
            parser.add_argument(
                option, dest=flag, type=flag_parser(kind), default=None,
                choices=f.metadata.get("choices"), help=help_text,
            )  # fmt: skip


def add_bool_flag(
    parser: argparse.ArgumentParser,
    option: str,
    help_text: str,
    *,
    dest: str | None = None,
    default: bool | None = None,
) -> None:
    """The one form of an on/off flag in every subcommand: `--x` alone means true, `--x false`
    (or true/yes/no/1/0) says it outright; `default` None means "not given"."""
    parser.add_argument(
        option, dest=dest or option.lstrip("-").replace("-", "_"), type=parse_bool, nargs="?",
        const=True, default=default, metavar="BOOL", help=help_text,
    )  # fmt: skip


def given_fields(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    """{field: value} of the flags (flag name -> field) that were given on the command line."""
    return {
        field: getattr(args, flag)
        for flag, field in flags.items()
        if getattr(args, flag, None) is not None
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tsallis-rl train`'s flags: one per TrainConfig field (`add_field_flags`), plus --config."""
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    add_field_flags(parser, TrainConfig)


def from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from YAML (if --config) overridden by the flags that were given.

    Which runs: `estimators` if given, else the single `estimator`/`q` if either was given, else
    the cold-start suite (DEFAULT_SUITE). A flag overrides the same choice made in the YAML.
    """
    config = getattr(args, "config", None)
    from_yaml: dict[str, Any] = load_yaml(config) if config else {}
    flags = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    recipe_name = flags.get("recipe", from_yaml.get("recipe"))
    from_recipe = recipe_options(recipe_name) if recipe_name else {}
    if {"estimator", "estimators"} & set(from_yaml):  # the YAML's choice of runs wins
        from_recipe = {k: v for k, v in from_recipe.items() if k not in ("estimator", "estimators")}
    sources = {
        **{k: f"recipe {recipe_name}" for k in from_recipe},
        **{k: str(config) for k in from_yaml},
        **{k: "flags" for k in flags},
    }
    own_yaml, from_yaml = from_yaml, {**from_recipe, **from_yaml}
    # A saved config.yaml lists every field; there, estimator/q at their defaults chose nothing.
    # (a recipe's values are defaults, not choices: `--estimator garl` may drop its PAFT K)
    chosen = {k for k, v in own_yaml.items() if v is not None and v != default_of(k)}
    for given, where in ((chosen, str(config)), (set(flags), "flags")):
        if "estimators" in given and "estimator" in given:
            raise ConfigError(
                f"{where}: estimator and estimators both given: estimator names one run, "
                "estimators a suite; keep one"
            )
    values = {**from_yaml, **flags}
    if "estimator" in flags:  # the command line's single run replaces the YAML's suite
        values.pop("estimators", None)
    elif "estimators" in flags:
        values.pop("estimator", None)
    # `estimators: null` in a YAML (as a single run's saved config.yaml has) chooses one run
    if not {"estimator", "estimators", "q"} & (
        chosen | set(flags) | set(from_yaml) & {"estimators"}
    ):
        values["estimators"] = DEFAULT_SUITE
        sources["estimators"] = "default suite"
    cfg = TrainConfig(**values)
    _coerce_types(cfg, sources)
    _one_seed_choice(cfg, chosen | set(flags), sources)
    cfg.validate("flags", sources)
    given = chosen | set(flags)
    if "q" in given:
        _refuse_unused_q(cfg, sources)
    _refuse_unused_options(cfg, given, sources)
    absolute_paths(cfg)
    return cfg


PATH_FIELDS = ("data", "model")
"""Fields that may name a local file or folder: recorded absolute (see `absolute_paths`)."""


def absolute_paths(cfg: TrainConfig) -> None:
    """Local paths of `cfg` (--data, a local --model) made absolute, so that the run's
    config.yaml (and `eval --run`) works from any folder, not only the one it was started in.
    Called after validation, so every message about a path still shows it as typed."""
    for name in PATH_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, str) and not value.startswith("tiny:"):
            path = Path(value).expanduser()
            if path.exists():
                setattr(cfg, name, os.path.abspath(path))


def recipe_options(name: str) -> dict[str, Any]:
    """The options of the packaged recipe `name`, checked to be TrainConfig fields (RecipeError
    naming the recipe file and option, or the known recipes if `name` is unknown)."""
    recipe = load_recipe(str(name))
    known = {f.name for f in fields(TrainConfig)}
    for key in recipe.options:
        if key not in known:
            raise RecipeError(f"{recipe.source}: unknown option {key!r}")
    return dict(recipe.options)


ESTIMATOR_OPTIONS = (
    "baseline",
    "pathwise",
    "normalize",
    "num_samples",
    "clip_eps",
    "scale_rewards",
)
"""Fields an estimator takes when its function's signature names them (bound by the trainer)."""


def _refuse_unused_options(cfg: TrainConfig, given: set[str], sources: dict[str, str]) -> None:
    """An option given explicitly that no run of this config would read is an error, not ignored."""
    names = sorted({n for n, _ in cfg.runs()})
    for option in ESTIMATOR_OPTIONS:
        if option not in given:
            continue
        users = [
            n for n in names if option in inspect.signature(get_estimator_spec(n).fn).parameters
        ]
        if not users:
            raise ConfigError(
                f"{sources.get(option, 'flags')}: {option} = {getattr(cfg, option)!r}: no run "
                f"uses it (the estimators here: {', '.join(names)})"
            )
    for option in ("rlpr_std_beta", "rlpr_std_ema", "rlpr_filter_start"):
        if option in given and not any(
            "min_reward_std" in get_estimator_spec(n).options for n in names
        ):
            raise ConfigError(
                f"{sources.get(option, 'flags')}: {option} = {getattr(cfg, option)!r}: no run "
                f"uses it (rlpr's std filter; the estimators here: {', '.join(names)})"
            )
    for option in ("lora_r", "lora_alpha", "lora_targets"):
        if option in given and not cfg.lora:
            raise ConfigError(
                f"{sources.get(option, 'flags')}: {option} = {getattr(cfg, option)!r}: "
                "applies only with lora = true (--lora)"
            )


def default_of(name: str) -> Any:
    """The default of a TrainConfig field (the one source of every subcommand's defaults)."""
    f = TrainConfig.__dataclass_fields__[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _coerce_types(cfg: TrainConfig, sources: dict[str, str]) -> None:
    """YAML values of the wrong type (e.g. q: 'high') become ConfigErrors naming the field and file."""
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if v is None:
            continue
        want = field_type(f.name)
        where = sources.get(f.name, "config")
        if f.name == "estimators" and isinstance(v, list) and all(isinstance(x, str) for x in v):
            setattr(cfg, f.name, ",".join(v))  # YAML list form: [grpo, "garl:0.75"]
        elif f.name == "seeds" and isinstance(v, (int, list)) and not isinstance(v, bool):
            items = v if isinstance(v, list) else [v]  # YAML forms: [0, 1, 2] or a single 3
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
                raise ConfigError(f"{where}: seeds = {v!r}: expected a list of integers")
            setattr(cfg, f.name, ",".join(str(x) for x in items))
        elif want is float and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, f.name, float(v))
        elif not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"{where}: {f.name} = {v!r}: expected {want.__name__}")


def _refuse_unused_q(cfg: TrainConfig, sources: dict[str, str]) -> None:
    """An explicit q with a suite whose every run names its own q (or has none) would be ignored."""
    if cfg.estimators is None:
        if not get_estimator_spec(cfg.estimator).uses_q:
            raise ConfigError(
                f"{sources['q']}: q = {cfg.q}: estimator {cfg.estimator!r} takes no q; drop q"
            )
        return

    if not any(q is None and get_estimator_spec(n).uses_q for n, q in cfg.runs()):
        raise ConfigError(
            f"{sources['q']}: q = {cfg.q}: no run of estimators = {cfg.estimators!r} uses it "
            "(each names its own q or takes none); drop q or write NAME without :q"
        )


def _one_seed_choice(cfg: TrainConfig, given: set[str], sources: dict[str, str]) -> None:
    """seed and seeds both given is an error; seeds with one seed becomes that seed (same run)."""
    if cfg.seeds is None:
        return
    if "seed" in given and "seeds" in given:
        raise ConfigError(
            f"{sources.get('seeds', 'flags')}: seed and seeds both given: seed names one seed, "
            "seeds the list every run repeats with; keep one"
        )
    try:
        seeds = cfg.seed_list()
    except ConfigError as exc:
        raise ConfigError(
            f"{sources.get('seeds', 'flags')}: seeds = {cfg.seeds!r}: {exc}"
        ) from None
    if len(seeds) == 1:
        cfg.seed, cfg.seeds = seeds[0], None
