"""TrainConfig: every option of `tsallis-rl train`, with its default, in one dataclass.

The defaults are the embedded CPU cold-start experiment (chain-sum task, cold regime, the project's
own base model); CLI flags are generated from the fields, so each default lives only here. Configs
load from YAML (`yaml.safe_load`) and flags override them; `validate()` runs before any model is
loaded and names the field at fault.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the field (and file) at fault."""


def _opt(default: Any, help: str, choices: tuple | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


DEFAULT_SUITE = "grpo,garl:0,garl:0.75,garl:1,paft:0.75"


@dataclass
class TrainConfig:
    """Options of one training run (and, with `estimators`, of a suite of runs that share them)."""

    # what to train
    model: str | None = _opt(
        None,
        "HF model name or local path; default: the project's pretrained chain-sum base model (built and cached on first use)",
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
        "training examples: how many a generated task makes (chainsum: 2000), a cap for file tasks (default: all)",
    )
    val_size: int = _opt(50, "validation examples")
    test_size: int = _opt(200, "test examples")
    # estimator
    estimator: str = _opt("garl", "estimator: garl, paft, grpo, rb_rloo (or a registered name)")
    estimators: str | None = _opt(
        None,
        f"comma list of NAME[:q] runs that share all other options; default without --model/--task: {DEFAULT_SUITE}",
    )
    q: float = _opt(0.75, "commitment q in [0, 1] (0 = RLVR, 1 = log marginal likelihood)")
    q_schedule: str = _opt("constant", "q schedule", ("constant", "step", "linear", "cosine"))
    q_end: float | None = _opt(None, "final q of a step/linear/cosine schedule")
    q_switch_step: int = _opt(
        0, "step schedule: q until this step, q_end after (SFT-then-RLVR analogue)"
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
    lr: float = _opt(1e-4, "learning rate")
    optimizer: str = _opt("adam", "optimizer", ("adam", "adamw", "sgd"))
    weight_decay: float = _opt(0.0, "weight decay")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up steps (constant afterwards)")
    batch_size: int = _opt(8, "B: prompts per optimizer step (per process)")
    grad_accum: int = _opt(1, "micro-steps of B prompts accumulated per optimizer step")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 = off)")
    steps: int = _opt(300, "optimizer steps")
    seed: int = _opt(0, "random seed (data order, sampling, resampling)")
    # evaluation
    eval_every: int = _opt(
        25, "evaluate on the validation split every N steps (0 = only at the end)"
    )
    eval_k: int = _opt(16, "samples per example for p@k / m@k")
    eval_temperature: float = _opt(1.0, "sampling temperature for evaluation")
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
    device: str = _opt("auto", "device: auto, cpu, cuda, cuda:N")
    micro_batch: int = _opt(64, "sequences per forward pass when computing log-probs")
    gen_batch_size: int = _opt(256, "sequences sampled at once")
    threads: int = _opt(2, "CPU threads for torch (split between --workers)")
    workers: int = _opt(
        2,
        "runs of a suite trained side by side in separate processes (CPU only; tiny models are overhead-bound, so 2 processes x 1 thread beat 1 x 2)",
    )
    gradient_checkpointing: bool = _opt(False, "trade compute for memory in the training forward")
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
    def validate(self, source: str = "config") -> TrainConfig:
        """Raise ConfigError naming the first bad field; returns self."""
        from tsallis_rl.estimators import list_estimators

        def bad(name: str, why: str) -> None:
            raise ConfigError(f"{source}: {name} = {getattr(self, name)!r}: {why}")

        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, f"must be one of {', '.join(choices)}")
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
            "q_switch_step",
        ):
            if int(getattr(self, name)) < 0:
                bad(name, "must be >= 0")
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
        known = list_estimators()
        for name, q in self.runs():
            if name not in known:
                raise ConfigError(
                    f"{source}: estimator {name!r} is unknown; known: {', '.join(known)}"
                )
            if q is not None and not (0.0 <= q <= 1.0):
                raise ConfigError(f"{source}: estimators: q = {q} for {name!r} must lie in [0, 1]")
            if (
                name in ("garl", "rb_rloo", "grpo")
                and self.baseline == "rloo"
                and self.num_rollouts < 2
            ):
                bad("num_rollouts", f"{name} with a leave-one-out/group baseline needs M >= 2")
            if name == "grpo" and self.answer_budget < 1:
                bad("answer_budget", "GRPO samples its answer: needs >= 1")
        if self.eval_every and self.answer_budget < 1:
            bad("answer_budget", "evaluation samples answers: needs >= 1")
        if self.resume and self.overwrite:
            bad("resume", "cannot be combined with overwrite")
        return self

    def runs(self) -> list[tuple[str, float | None]]:
        """(estimator, q) of every run: from `estimators`, the default suite, or the single estimator."""
        spec = self.estimators
        if spec is None and self.model is None and self.task == "chainsum" and self.data is None:
            spec = DEFAULT_SUITE
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

    def for_run(self, name: str, q: float | None) -> TrainConfig:
        """This config specialised to one run of the suite."""
        return dataclasses.replace(
            self, estimator=name, q=self.q if q is None else q, estimators=None
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_tag(name: str, q: float | None, uses_q: bool) -> str:
    """Directory/legend name of one run, e.g. garl_q0.75 or grpo."""
    return f"{name}_q{q:g}" if uses_q and q is not None else name


# --------------------------------------------------------------------------------------------------
# YAML and CLI


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of TrainConfig fields; unknown keys are errors that name the file and key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of options, got {type(data).__name__}")
    names = {f.name for f in fields(TrainConfig)}
    for key in data:
        if str(key).replace("-", "_") not in names:
            raise ConfigError(f"{p}: unknown key {key!r}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (defaults shown from the dataclass), plus --config."""
    parser.add_argument("--config", help="YAML file of options (flags override it)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata['help']} (default: {default})"
        kind = type(default) if default is not None else None
        if f.name in ("q_end", "q"):
            kind = float
        if f.name in ("num_samples", "train_size"):
            kind = int
        if kind is bool:
            parser.add_argument(
                flag,
                type=_parse_bool,
                nargs="?",
                const=True,
                default=None,
                metavar="BOOL",
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                type=kind or str,
                default=None,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from YAML (if --config) overridden by the flags that were given."""
    values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    source = args.config if getattr(args, "config", None) else "flags"
    try:
        cfg = TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _coerce_types(cfg, source)
    return cfg.validate(source)


def _coerce_types(cfg: TrainConfig, source: str) -> None:
    """YAML values of the wrong type (e.g. q: 'high') become ConfigErrors naming the field."""
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if v is None or default is None:
            continue
        want = type(default)
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, f.name, float(v))
        elif not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"{source}: {f.name} = {v!r}: expected {want.__name__}")
