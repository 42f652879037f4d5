"""The training loop: rollouts -> estimator (by name) -> optimizer step, with eval, checkpoints, logs.

One step: sample M rationales for each of B prompts; GARL/PAFT teacher-force the gold answer after
each rationale, GRPO samples its answer and scores it by exact match; the registered estimator turns
the per-rollout log-probs into a surrogate loss; its gradient is applied in micro-batches:

  * if all B*M rollouts fit in one micro-batch, one forward with grad feeds the estimator directly;
  * otherwise a no-grad scoring pass gives the log-probs, autograd gives d loss / d log-prob from
    the estimator on those values, and each micro-batch is recomputed with grad and back-propagated
    with those fixed coefficients. Both give the estimator's gradient exactly (tested).

Run directory: config.yaml, metrics.jsonl, checkpoints/step-N (HF weights + optimizer/scheduler/RNG
state, written atomically), best/ (HF model + tokenizer, from_pretrained-loadable), final.json.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from tsallis_rl.config import ConfigError, TrainConfig
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.evaluation import EvalResult, evaluate
from tsallis_rl.rollout import ANSWER, RATIONALE, Rollout, SamplingSettings, sample, score
from tsallis_rl.tasks.base import THINK_CLOSE, Example, Task, format_for_model

# --------------------------------------------------------------------------------------------------
# q schedules (pure)


def q_at(cfg: TrainConfig, step: int) -> float:
    """Commitment q at optimizer step `step` (0-based) under cfg.q_schedule."""
    q0, q1 = float(cfg.q), float(cfg.q if cfg.q_end is None else cfg.q_end)
    frac = min(max(step / max(cfg.steps - 1, 1), 0.0), 1.0)
    schedules: dict[str, Callable[[], float]] = {
        "constant": lambda: q0,
        "step": lambda: q0 if step < cfg.q_switch_step else q1,
        "linear": lambda: q0 + (q1 - q0) * frac,
        "cosine": lambda: q1 + (q0 - q1) * 0.5 * (1 + math.cos(math.pi * frac)),
    }
    return schedules[cfg.q_schedule]()


# --------------------------------------------------------------------------------------------------
# Prompt encoding


@dataclass
class Encoder:
    """Turns examples into token ids the way the model sees them (prompt, gold answer, markers)."""

    tokenizer: Any
    task: Task
    regime: str
    chat: bool
    answer_prefix: str

    @classmethod
    def build(cls, tokenizer: Any, task: Task, cfg: TrainConfig) -> Encoder:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        chat = {"auto": has_template, "on": True, "off": False}[cfg.chat_template]
        if chat and not has_template:
            raise ConfigError("chat_template = 'on' but the tokenizer has no chat template")
        prefix = ("\n\n" if chat else "") if cfg.answer_prefix == "auto" else cfg.answer_prefix
        return cls(tokenizer, task, cfg.regime, chat, prefix)

    def ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, ex: Example) -> str:
        return format_for_model(
            self.task.build_prompt(ex, self.regime), self.tokenizer, chat=self.chat
        )

    def prompt(self, ex: Example) -> list[int]:
        text = self.prompt_text(ex)
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def gold(self, ex: Example) -> list[int]:
        """The teacher-forced answer: prefix + y* + end token."""
        return self.ids(self.answer_prefix + self.task.target(ex)) + [self.tokenizer.eos_token_id]

    @property
    def think_close(self) -> list[int]:
        return self.ids(THINK_CLOSE)

    @property
    def eos_ids(self) -> list[int]:
        return [self.tokenizer.eos_token_id]

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def decode(self, r: Rollout) -> str:
        return self.tokenizer.decode(r.completion, skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------
# Gradient of one batch (the plumbing the tests pin down)


def sequence_logps(logp: Tensor, regions: Tensor, B: int, M: int) -> tuple[Tensor, Tensor]:
    """Per-rollout sums of rationale and answer token log-probs: [B*M, T] -> two [B, M]."""
    rat = (logp * (regions == RATIONALE)).sum(-1).view(B, M)
    ans = (logp * (regions == ANSWER)).sum(-1).view(B, M)
    return rat, ans


def estimator_inputs(spec, logp: Tensor, regions: Tensor, rewards: Tensor | None, B: int, M: int):
    """The positional inputs the registered estimator consumes, built from scored log-probs.

    The first `n_differentiable(spec)` of them carry the gradient (log-probs); the rest are data.
    """
    if spec.inputs == "teacher_forced":
        return sequence_logps(logp, regions, B, M)
    mask = (regions > 0).to(logp.dtype)
    return logp.view(B, M, -1), mask.view(B, M, -1), rewards


def n_differentiable(spec) -> int:
    """How many leading estimator inputs are log-probs: (rationale, answer) or (token_logp,)."""
    return 2 if spec.inputs == "teacher_forced" else 1


def apply_gradient(
    model: torch.nn.Module,
    spec,
    rollouts: Sequence[Rollout],
    B: int,
    M: int,
    call: Callable[..., Any],
    *,
    pad_id: int,
    micro_batch: int,
    rewards: Tensor | None = None,
    backward: Callable[[Tensor], None] = lambda t: t.backward(),
    loss_scale: float = 1.0,
    skip_zero: bool = True,
) -> Any:
    """Accumulate loss_scale * d(estimator loss)/d(params) into .grad; returns the estimator output."""
    if len(rollouts) <= micro_batch:  # one forward with grad
        logp, regions = score(model, rollouts, pad_id=pad_id, micro_batch=len(rollouts))
        out = call(*estimator_inputs(spec, logp, regions, rewards, B, M))
        no_signal = out.advantages is not None and not out.advantages.any()
        if out.loss.requires_grad and not (skip_zero and no_signal):
            backward(out.loss * loss_scale)
        return out
    with torch.no_grad():
        logp, regions = score(model, rollouts, pad_id=pad_id, micro_batch=micro_batch)
    inputs = estimator_inputs(spec, logp, regions, rewards, B, M)
    k = n_differentiable(spec)
    leaves = [t.detach().requires_grad_(True) for t in inputs[:k]]
    out = call(*leaves, *inputs[k:])
    grads = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
    if skip_zero and all(not g.any() for g in grads):
        return out  # e.g. GRPO with all-equal rewards: exactly zero gradient, skip the passes
    flat = [g.reshape(B * M, *g.shape[2:]) for g in grads]  # one row per rollout
    for s in range(0, len(rollouts), micro_batch):
        mb_logp, mb_regions = score(
            model, rollouts[s : s + micro_batch], pad_id=pad_id, micro_batch=micro_batch
        )
        n, width = mb_logp.shape
        mb_inputs = estimator_inputs(spec, mb_logp, mb_regions, None, n, 1)[:k]
        # token-level gradients beyond this micro-batch's width sit on padding and are zero
        coefs = [g[s : s + n, ..., :width] if g.dim() > 1 else g[s : s + n] for g in flat]
        surrogate = sum((c.view_as(x) * x).sum() for c, x in zip(coefs, mb_inputs))
        backward(surrogate * loss_scale)
    return out


# --------------------------------------------------------------------------------------------------
# Files


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temp file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Loggers:
    """metrics.jsonl always; TensorBoard and W&B when asked."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, name: str) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.closers: list[Callable[[], Any]] = []
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run_dir / "tensorboard"))
            self.closers.append(tb.close)
            self.sinks.append(
                lambda rec: [
                    tb.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])
                    for k, v in rec.items()
                    if isinstance(v, float | int) and k != "step"
                ]
            )
        if cfg.wandb:
            import wandb

            wb = wandb.init(
                project=cfg.wandb_project, name=name, config=cfg.to_dict(), dir=str(run_dir)
            )
            self.closers.append(wb.finish)
            self.sinks.append(
                lambda rec: wb.log(
                    {f"{rec['kind']}/{k}": v for k, v in rec.items() if isinstance(v, float | int)},
                    step=rec["step"],
                )
            )

    def close(self) -> None:
        """Flush and close the TensorBoard / W&B sinks."""
        for close in self.closers:
            close()

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")
        for sink in self.sinks:
            sink(record)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them)."""
        keep = [r for r in read_jsonl(self.path) if r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))


# --------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Trains one (estimator, q) run of `cfg` on `splits` of `task`, writing into `run_dir`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model: torch.nn.Module,
        tokenizer: Any,
        task: Task,
        splits: dict[str, list[Example]],
        run_dir: Path,
        device: torch.device,
        accelerator: Any = None,
        bar_position: int = 0,
    ) -> None:
        self.bar_position = bar_position
        self.cfg, self.model, self.tokenizer, self.task = cfg, model, tokenizer, task
        self.splits, self.run_dir, self.device = splits, Path(run_dir), device
        self.accelerator = accelerator
        self.spec = get_estimator_spec(cfg.estimator)
        self.enc = Encoder.build(tokenizer, task, cfg)
        rank = accelerator.process_index if accelerator is not None else 0
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed + 7919 * rank)  # rollouts
        self.resample_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)  # PAFT draws
        params = [p for p in model.parameters() if p.requires_grad]
        optimizers = {
            "adam": lambda: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            "adamw": lambda: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
            "sgd": lambda: torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        }
        self.optimizer = optimizers[cfg.optimizer]()
        warm = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        if accelerator is not None:
            self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.step = 0
        self.elapsed_before = 0.0  # seconds spent before a resume, so wall_seconds covers the run
        self._started = time.time()
        self.best: dict[str, Any] = {"step": -1, "score": -1.0}
        self.loggers = Loggers(self.run_dir, cfg, self.run_dir.name) if self.is_main else None
        self._gold_cache: dict[str, list[int]] = {}
        self._prompt_cache: dict[str, list[int]] = {}

    # -- helpers ------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def policy(self) -> torch.nn.Module:
        return (
            self.accelerator.unwrap_model(self.model)
            if self.accelerator is not None
            else self.model
        )

    def _prompt(self, ex: Example) -> list[int]:
        if ex.id not in self._prompt_cache:
            self._prompt_cache[ex.id] = self.enc.prompt(ex)
        return self._prompt_cache[ex.id]

    def _gold(self, ex: Example) -> list[int]:
        if ex.id not in self._gold_cache:
            self._gold_cache[ex.id] = self.enc.gold(ex)
        return self._gold_cache[ex.id]

    def batch_examples(self, step: int, micro: int = 0) -> list[Example]:
        """The B prompts of optimizer step `step` (deterministic: a seeded permutation per epoch)."""
        train = self.splits["train"]
        B, world, rank = self.cfg.batch_size, 1, 0
        if self.accelerator is not None:
            world, rank = self.accelerator.num_processes, self.accelerator.process_index
        start = (step * self.cfg.grad_accum + micro) * B * world + rank * B
        epoch, offset = divmod(start, len(train))
        order = list(range(len(train)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
        idx = [order[(offset + i) % len(train)] for i in range(B)]
        return [train[i] for i in idx]

    def _sampling(self, *, answer_budget: int, temperature: float) -> SamplingSettings:
        """The sampling settings of training (temperature) or evaluation (eval_temperature)."""
        cfg = self.cfg
        return SamplingSettings(
            think_close=tuple(self.enc.think_close), eos_ids=tuple(self.enc.eos_ids),
            pad_id=self.enc.pad_id, thinking_budget=cfg.thinking_budget,
            answer_budget=answer_budget, answer_prefix=tuple(self.enc.ids(self.enc.answer_prefix)),
            temperature=temperature, top_p=cfg.top_p, batch_size=cfg.gen_batch_size,
            sampler=cfg.sampler,
        )  # fmt: skip

    def _sample(
        self,
        prompts: list[list[int]],
        *,
        answer_budget: int,
        temperature: float,
        gen: torch.Generator,
        model: torch.nn.Module | None = None,
    ) -> list[Rollout]:
        """Rollouts of `prompts`, drawn from `gen`; each carries its temperature for scoring."""
        policy = self.policy if model is None else model
        was_training = policy.training
        policy.eval()
        try:
            settings = self._sampling(answer_budget=answer_budget, temperature=temperature)
            return sample(policy, prompts, settings, generator=gen)
        finally:
            policy.train(was_training)

    # -- one optimizer step -------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, M = self.cfg, self.cfg.num_rollouts
        q = q_at(cfg, self.step)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            examples = self.batch_examples(self.step, micro)
            B = len(examples)
            prompts = [self._prompt(ex) for ex in examples for _ in range(M)]
            teacher = self.spec.inputs == "teacher_forced"
            rollouts = self._sample(
                prompts,
                answer_budget=0 if teacher else cfg.answer_budget,
                temperature=cfg.temperature,
                gen=self.gen,
            )
            rewards = None
            if teacher:
                rollouts = [
                    r.with_answer(self._gold(examples[i // M])) for i, r in enumerate(rollouts)
                ]
            else:
                correct = [
                    self.task.exact_match(
                        self.task.extract_answer(self.enc.decode(r)), examples[i // M]
                    )
                    for i, r in enumerate(rollouts)
                ]
                rewards = torch.tensor(correct, dtype=torch.float64).view(B, M)
            call = self._estimator_call(q)
            out = apply_gradient(
                self.model, self.spec, rollouts, B, M, call, pad_id=self.enc.pad_id,
                micro_batch=cfg.micro_batch, rewards=rewards, backward=self._backward,
                loss_scale=1.0 / cfg.grad_accum,
                skip_zero=self.accelerator is None,  # under DDP every rank must run the same backwards
            )  # fmt: skip
            stats = dict(out.stats)
            stats["loss"] = float(out.loss.detach())
            stats["hit_budget"] = sum(r.hit_budget for r in rollouts) / len(rollouts)
            stats["rationale_tokens"] = sum(len(r.rationale) for r in rollouts) / len(rollouts)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v / cfg.grad_accum
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        )
        self.optimizer.step()
        self.scheduler.step()
        totals.update(grad_norm=float(norm), lr=self.scheduler.get_last_lr()[0])
        if self.spec.uses_q:
            totals["q"] = q
        return totals

    def _estimator_call(self, q: float) -> Callable[..., Any]:
        """The registered estimator with every config option its signature accepts bound."""
        cfg, fn = self.cfg, self.spec.fn
        available = {
            "baseline": cfg.baseline, "pathwise": cfg.pathwise, "normalize": cfg.normalize,
            "num_samples": cfg.num_samples, "generator": self.resample_gen,
            "clip_eps": cfg.clip_eps, "scale_rewards": cfg.scale_rewards,
        }  # fmt: skip
        accepted = inspect.signature(fn).parameters
        opts = {name: value for name, value in available.items() if name in accepted}
        if self.spec.inputs == "teacher_forced":
            return lambda r, a: fn(r, a, q if self.spec.uses_q else 0.0, **opts)
        return lambda t, m, rw: fn(t, m, rw, **opts)

    def _backward(self, loss: Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(
        self, split: str, *, step: int | None = None, model: torch.nn.Module | None = None
    ) -> EvalResult:
        """p@1 / p@k / m@k on `split` with k = eval_k samples, plus mean log P-hat of the gold answer.

        The training policy (model=None) is evaluated by every rank on its share of the examples
        (call it on all ranks); an explicit `model` is evaluated whole by the calling process.
        """
        cfg = self.cfg
        examples = self.splits[split]
        seed = cfg.seed * 7919 + (self.step if step is None else step)
        seed += 0 if split == "val" else 1_000_000
        return evaluate(
            self.policy if model is None else model, self.task, examples,
            [self._prompt(ex) for ex in examples], [self._gold(ex) for ex in examples],
            self.enc.decode,
            self._sampling(answer_budget=cfg.answer_budget, temperature=cfg.eval_temperature),
            k=cfg.eval_k, seed=seed, micro_batch=cfg.micro_batch,
            accelerator=self.accelerator if model is None else None,
        )  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        return {
            "gen": self.gen.get_state(),
            "resample_gen": self.resample_gen.get_state(),
            "torch": torch.get_rng_state(),
            "python": list(random.getstate()[1]),
        }

    def save_checkpoint(self) -> Path:
        """checkpoints/step-N: HF weights + trainer_state.pt, via a temp dir and a rename."""
        ckpts = self.run_dir / "checkpoints"
        ckpts.mkdir(parents=True, exist_ok=True)
        final = ckpts / f"step-{self.step:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=ckpts))
        self.policy.save_pretrained(tmp)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._rng_state(),
            "best_step": self.best["step"],
            "best_score": float(self.best["score"]),
            "elapsed": self.elapsed_before + time.time() - self._started,
        }
        torch.save(state, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(ckpts / "latest", final.name + "\n")
        for old in sorted(p for p in ckpts.glob("step-*") if ".tmp-" not in p.name)[:-2]:
            shutil.rmtree(old, ignore_errors=True)  # keep the two newest
        return final

    def load_checkpoint(self) -> bool:
        """Restore from checkpoints/latest; False if there is none."""
        pointer = self.run_dir / "checkpoints" / "latest"
        if not pointer.exists():
            return False
        ckpt = self.run_dir / "checkpoints" / pointer.read_text().strip()
        _load_weights(self.policy, ckpt)
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True, map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["rng"]["gen"])
        self.resample_gen.set_state(state["rng"]["resample_gen"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.step = int(state["step"])
        self.best = {"step": int(state["best_step"]), "score": float(state["best_score"])}
        self.elapsed_before, self._started = float(state["elapsed"]), time.time()
        if self.loggers:
            self.loggers.truncate_after(self.step)
        return True

    def save_best(self) -> None:
        """best/: a from_pretrained-loadable model (LoRA merged) and its tokenizer."""
        dest = self.run_dir / "best"
        tmp = Path(tempfile.mkdtemp(prefix="best.tmp-", dir=self.run_dir))
        model = self.policy
        if hasattr(
            model, "merge_and_unload"
        ):  # peft: save a merged copy, keep training the adapter
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to cfg.steps (resuming if asked), select by val m@k, evaluate best on test."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._started = time.time()
        if self.is_main:
            write_atomic(
                self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
            )
        resumed = cfg.resume and self.load_checkpoint()
        if (
            not resumed and self.loggers
        ):  # a fresh start (e.g. one killed before its first checkpoint)
            self.loggers.truncate_after(-1)
        mkey = f"m@{cfg.eval_k}"
        if not resumed and cfg.val_size and self.splits.get("val"):
            self._eval_and_log(mkey)  # step 0: the cold-start baseline
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=self.run_dir.name,
            position=self.bar_position,
            disable=not (cfg.progress and self.is_main),
            dynamic_ncols=True,
        )
        while self.step < cfg.steps:
            t0 = time.time()
            stats = self.train_step()
            self.step += 1
            stats["seconds"] = time.time() - t0
            if self.loggers:
                self.loggers.log({"kind": "train", "step": self.step, **stats})
            bar.update(1)
            live = {"q": f"{stats['q']:.2f}"} if self.spec.uses_q else {}
            if "mean_log_w_bar" in stats:  # teacher-forced estimators: batch log P-hat
                live["logP"] = f"{stats['mean_log_w_bar']:.1f}"
            if "reward" in stats:  # sampled-answer estimators: exact-match reward
                live["reward"] = f"{stats['reward']:.2f}"
            bar.set_postfix(**live, loss=f"{stats['loss']:.3g}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.splits.get("val"):
                self._eval_and_log(mkey)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.is_main:
                self.save_checkpoint()
        bar.close()
        if (not cfg.eval_every or self.step % cfg.eval_every) and self.splits.get("val"):
            self._eval_and_log(mkey)
        if self.is_main:
            self.save_checkpoint()
        return self._finish(mkey)

    def _eval_and_log(self, mkey: str) -> None:
        """Every rank evaluates its share; rank 0 decides on a new best and tells the others."""
        res = self.evaluate("val")
        score_ = res.summary.get(mkey, 0.0)
        better = [score_ > self.best["score"]]
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            better = broadcast_object_list(better, from_process=0)
        if better[0]:
            self.best = {"step": self.step, "score": score_}
            if self.is_main:
                self.save_best()
        if self.loggers:
            self.loggers.log({"kind": "eval", "split": "val", "step": self.step, **res.summary})

    def _finish(self, mkey: str) -> dict[str, Any]:
        if not self.is_main:
            return {}
        result: dict[str, Any] = {
            "estimator": self.cfg.estimator,
            "q": self.cfg.q if self.spec.uses_q else None,
            "best_step": self.best["step"],
            "steps": self.step,
        }
        if (self.run_dir / "best").exists() and self.splits.get("test"):
            from transformers import AutoModelForCausalLM

            dtype = next(self.policy.parameters()).dtype
            best = AutoModelForCausalLM.from_pretrained(self.run_dir / "best", dtype=dtype).to(
                self.device
            )
            res = self.evaluate("test", step=self.best["step"], model=best)
            del best
            result["test"] = res.summary
            write_atomic(
                self.run_dir / "test_records.jsonl",
                "".join(json.dumps(_json_safe(r)) + "\n" for r in res.records),
            )
        first = next(
            (
                r
                for r in read_jsonl(self.run_dir / "metrics.jsonl")
                if r["kind"] == "eval" and r["step"] == 0
            ),
            None,
        )
        result["initial_log_p"] = first.get("log_p_hat") if first else None
        result["wall_seconds"] = self.elapsed_before + time.time() - self._started
        if self.loggers:
            self.loggers.close()
        write_atomic(self.run_dir / "final.json", json.dumps(_json_safe(result), indent=2))
        return result


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load HF-format weights saved by save_pretrained into `model` in place (plain or peft)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
