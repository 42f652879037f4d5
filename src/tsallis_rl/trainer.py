"""The training loop: rollouts -> estimator (by name) -> optimizer step, with eval, checkpoints, logs.

One step: sample M rationales for each of B prompts; GARL/PAFT teacher-force the gold answer after
each rationale, GRPO samples its answer and scores it by exact match; the registered estimator turns
the per-rollout log-probs into a surrogate loss; its gradient is applied in micro-batches:

  * if all B*M rollouts fit in one micro-batch, one forward with grad feeds the estimator directly;
  * otherwise a no-grad scoring pass gives the log-probs, autograd gives d loss / d log-prob from
    the estimator on those values, and each micro-batch is recomputed with grad and back-propagated
    with those fixed coefficients. Both give the estimator's gradient exactly (tested). This plumbing
    lives in `tsallis_rl.gradient`, driven by the estimator's `EstimatorSpec`.

Run directory (written through tsallis_rl.rundir, which owns its layout, atomic swaps and recovery):
config.yaml, metrics.jsonl, checkpoints/step-N (HF weights + optimizer/scheduler/per-rank RNG state),
best/ (HF model + tokenizer, from_pretrained-loadable), final.json.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsallis_rl import rundir
from tsallis_rl.config import TrainConfig
from tsallis_rl.estimators import get_estimator_spec
from tsallis_rl.evaluation import EvalResult, eval_seed, evaluate
from tsallis_rl.gradient import apply_gradient, no_rationale_rows, stack_rows, target_mask_rows
from tsallis_rl.io import fault_point, read_jsonl, write_json, write_jsonl
from tsallis_rl.loggers import Loggers
from tsallis_rl.metrics import get_match_mode
from tsallis_rl.models.loading import load_weights
from tsallis_rl.prompts import PromptFormatter, sampling_settings
from tsallis_rl.rollout import Rollout, SamplingSettings, can_share_prompt, sample
from tsallis_rl.tasks.base import Example, Task
from tsallis_rl.tasks.noise import noise_records

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
        if cfg.share_prompt and not can_share_prompt(model):  # config.yaml records what runs
            warnings.warn(
                f"{type(model).__name__}: its prompt cache cannot be shared; share_prompt=false",
                stacklevel=2,
            )
            cfg = dataclasses.replace(cfg, share_prompt=False)
        self.cfg, self.model, self.tokenizer, self.task = cfg, model, tokenizer, task
        self.splits, self.run_dir, self.device = splits, Path(run_dir), device
        self.accelerator = accelerator
        self.spec = get_estimator_spec(cfg.estimator)
        self.match = get_match_mode(cfg.match)
        self.formatter = PromptFormatter.build(tokenizer, task, cfg)
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
        self.best: dict[str, Any] = {"step": -1, "score": float("-inf")}
        self._saved_step = -1  # the step of the newest checkpoint written or loaded
        self.loggers = Loggers(self.run_dir, cfg, self.run_dir.name) if self.is_main else None
        self._gold_cache: dict[str, list[int]] = {}
        self._target_cache: dict[str, list[int]] = {}
        # RLPR's adaptive std filter: EMA of each step's mean group reward std (None before step 0)
        self.reward_std_ema: float | None = None
        self._prompt_cache: dict[str, list[int]] = {}
        # RLPR-style baselines: scored once per training example here, before any step and before
        # a resume loads its checkpoint, so they always come from the starting weights.
        self._no_rationale: dict[str, Tensor] = {}
        if self.spec.needs_no_rationale:
            self._no_rationale = self._score_without_rationale(self.splits["train"])

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

    def prompt_ids(self, ex: Example) -> list[int]:
        """The token ids of `ex`'s prompt, exactly as the model sees it (cached)."""
        if ex.id not in self._prompt_cache:
            self._prompt_cache[ex.id] = self.formatter.prompt(ex)
        return self._prompt_cache[ex.id]

    def gold_ids(self, ex: Example) -> list[int]:
        """The token ids of `ex`'s gold answer y* (answer prefix + answer + end token; cached)."""
        if ex.id not in self._gold_cache:
            self._gold_cache[ex.id] = self.formatter.gold(ex)
        return self._gold_cache[ex.id]

    def target_mask(self, ex: Example) -> list[int]:
        """1 on the y* tokens of `gold_ids(ex)` (no answer prefix, no end token; cached)."""
        if ex.id not in self._target_cache:
            self._target_cache[ex.id] = self.formatter.gold_target_mask(ex)
        return self._target_cache[ex.id]

    def reward_std_threshold(self) -> float:
        """RLPR's std filter at this step: beta x the EMA of past mean reward stds (0 = no filter)."""
        cfg = self.cfg
        if self.reward_std_ema is None or self.step < cfg.rlpr_filter_start:
            return 0.0
        return cfg.rlpr_std_beta * self.reward_std_ema

    def _update_reward_std_ema(self, stds: list[float]) -> None:
        """Fold this step's mean group reward std into the EMA (RLPR: new x (1 - r) + old x r)."""
        finite = [v for v in stds if math.isfinite(v)]
        if not finite:
            return
        new = sum(finite) / len(finite)
        r = self.cfg.rlpr_std_ema
        old = self.reward_std_ema
        self.reward_std_ema = new if old is None else new * (1.0 - r) + old * r

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
        return sampling_settings(
            self.formatter, self.cfg, answer_budget=answer_budget, temperature=temperature
        )

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
        reward_stds: list[float] = []
        call = self._estimator_call(q)
        for micro in range(cfg.grad_accum):
            examples = self.batch_examples(self.step, micro)
            B = len(examples)
            prompts = [self.prompt_ids(ex) for ex in examples for _ in range(M)]
            teacher = not self.spec.needs_sampled_rewards
            rollouts = self._sample(
                prompts,
                answer_budget=0 if teacher else cfg.answer_budget,
                temperature=cfg.temperature,
                gen=self.gen,
            )
            rewards, data = None, None
            if teacher:
                rollouts = [
                    r.with_answer(self.gold_ids(examples[i // M])) for i, r in enumerate(rollouts)
                ]
            else:
                correct = [  # the training reward of --match (default: the task's exact match)
                    self.match.reward_correct(
                        self.task,
                        self.task.extract_answer(self.formatter.decode(r)),
                        examples[i // M],
                    )
                    for i, r in enumerate(rollouts)
                ]
                rewards = torch.tensor(correct, dtype=torch.float64).view(B, M)
            if self.spec.needs_no_rationale:
                data = stack_rows([self._no_rationale[ex.id] for ex in examples])
            if self.spec.needs_target_span:
                data = dict(data or {})
                data["answer_target_mask"] = target_mask_rows(
                    [self.target_mask(ex) for ex in examples]
                )
            out = apply_gradient(
                self.model, self.spec, rollouts, B, M, call,
                pad_id=self.formatter.pad_id, micro_batch=cfg.micro_batch, rewards=rewards, data=data,
                backward=self._backward, loss_scale=1.0 / cfg.grad_accum,
                skip_zero=self.accelerator is None,  # under DDP every rank must run the same backwards
                share_prompt=cfg.share_prompt,
            )  # fmt: skip
            if "reward_std" in out.extras:
                reward_stds += [float(v) for v in out.extras["reward_std"]]
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
        if "min_reward_std" in self.spec.options:
            totals["min_reward_std"] = self.reward_std_threshold()
            self._update_reward_std_ema(reward_stds)
        return totals

    def _estimator_call(self, q: float) -> Callable[..., Any]:
        """The registered estimator with q (if it uses one) and every config option it takes bound."""
        cfg = self.cfg
        available = {
            "baseline": cfg.baseline, "pathwise": cfg.pathwise, "normalize": cfg.normalize,
            "num_samples": cfg.num_samples, "generator": self.resample_gen,
            "clip_eps": cfg.clip_eps, "scale_rewards": cfg.scale_rewards,
            "min_reward_std": self.reward_std_threshold(),
        }  # fmt: skip
        return self.spec.bind(q, available)

    def _score_without_rationale(self, examples: list[Example]) -> dict[str, Tensor]:
        """Per-token log-probs of each example's gold answer with an empty rationale (current weights)."""
        policy, was = self.policy, self.policy.training
        policy.eval()
        try:
            rows = no_rationale_rows(
                policy, [self.prompt_ids(ex) for ex in examples], [self.gold_ids(ex) for ex in examples],
                self.formatter.think_close, pad_id=self.formatter.pad_id, micro_batch=self.cfg.micro_batch,
                temperature=self.cfg.temperature, share_prompt=self.cfg.share_prompt,
            )  # fmt: skip
        finally:
            policy.train(was)
        return {ex.id: row for ex, row in zip(examples, rows)}

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
        seed = eval_seed(cfg.seed, self.step if step is None else step, split)
        return evaluate(
            self.policy if model is None else model, self.task, examples,
            [self.prompt_ids(ex) for ex in examples], [self.gold_ids(ex) for ex in examples],
            self.formatter.decode,
            self._sampling(answer_budget=cfg.answer_budget, temperature=cfg.eval_temperature),
            k=cfg.eval_k, seed=seed, micro_batch=cfg.micro_batch,
            accelerator=self.accelerator if model is None else None, match=cfg.match,
            share_prompt=cfg.share_prompt,
        )  # fmt: skip

    # -- checkpoints --------------------------------------------------------------------------------
    def _rng_state(self) -> dict[str, Any]:
        return {
            "gen": self.gen.get_state(),
            "resample_gen": self.resample_gen.get_state(),
            "torch": torch.get_rng_state(),
            "python": list(random.getstate()[1]),
        }

    def _gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's sampling RNG state, indexed by rank (all ranks must call this)."""
        state = self._rng_state()
        if self.accelerator is None or self.accelerator.num_processes <= 1:
            return [state]
        from accelerate.utils import gather_object

        return list(gather_object([state]))

    def save_checkpoint(self) -> Path | None:
        """checkpoints/step-N (HF weights + trainer_state.pt with every rank's RNG), swapped in
        beside the old one (see rundir.save_checkpoint). Called on every rank; main writes."""
        rngs = self._gather_rng()
        if not self.is_main:
            self._saved_step = self.step
            return None
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs,
            "best_step": self.best["step"],
            "best_score": float(self.best["score"]),
            "elapsed": self.elapsed_before + time.time() - self._started,
            "reward_std_ema": self.reward_std_ema,
        }

        def write(tmp: Path) -> None:
            self.policy.save_pretrained(tmp)
            fault_point("ckpt:weights")
            torch.save(state, tmp / "trainer_state.pt")

        path = rundir.save_checkpoint(self.run_dir / "checkpoints", self.step, write)
        self._saved_step = self.step
        return path

    def load_checkpoint(self) -> bool:
        """Restore the newest intact checkpoint (damaged ones are skipped, with a warning); False if
        there is none. Each rank restores its own sampling RNG."""
        found = rundir.load_checkpoint(
            self.run_dir / "checkpoints",
            lambda d: (rundir.read_trainer_state(d), rundir.read_weights(d)),
        )
        if found is None:
            return False
        ckpt, (state, weights) = found
        load_weights(self.policy, weights, ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rank, world = 0, 1
        if self.accelerator is not None:
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) == world:
            rng = ranks[rank]
            self.gen.set_state(rng["gen"])
            self.resample_gen.set_state(rng["resample_gen"])
            torch.set_rng_state(rng["torch"])
            random.setstate((3, tuple(rng["python"]), None))
        else:  # another number of processes: the saved streams do not map onto these ranks
            warnings.warn(
                f"{ckpt}: saved with {len(ranks)} processes, resumed with {world}; "
                "sampling restarts from fresh per-rank seeds",
                stacklevel=2,
            )
        self.step = int(state["step"])
        self._saved_step = self.step
        self.best = {"step": int(state["best_step"]), "score": float(state["best_score"])}
        self.elapsed_before, self._started = float(state["elapsed"]), time.time()
        self.reward_std_ema = state.get("reward_std_ema")
        if self.loggers:
            self.loggers.truncate_after(self.step)
        return True

    def save_best(self) -> None:
        """best/: a from_pretrained-loadable model (LoRA merged) and its tokenizer, swapped in whole."""
        model = self.policy
        if hasattr(
            model, "merge_and_unload"
        ):  # peft: save a merged copy, keep training the adapter
            import copy

            model = copy.deepcopy(model).merge_and_unload()

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        rundir.save_best(self.run_dir, write)

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to cfg.steps (resuming if asked), select by val m@k, evaluate best on test."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        self._started = time.time()
        if self.is_main:
            rundir.clean_stale(self.run_dir)
            rundir.start_run_dir(self.run_dir, cfg.to_dict(), resume=cfg.resume)
        resumed = cfg.resume and self.load_checkpoint()
        if cfg.resume and not resumed and self.is_main:  # say it: the user asked to continue
            print(f"{self.run_dir}: no checkpoint yet; starting from step 0", file=sys.stderr)
        if (
            not resumed and self.loggers
        ):  # a fresh start (e.g. one killed before its first checkpoint)
            self.loggers.truncate_after(-1)
        mkey = f"m@{cfg.eval_k}" if cfg.select_metric == "m@k" else cfg.select_metric
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
            last = self.step == cfg.steps  # always evaluated, then saved once (after the eval)
            if self.splits.get("val") and (
                last or (cfg.eval_every and self.step % cfg.eval_every == 0)
            ):
                self._eval_and_log(mkey)
            if last or (cfg.save_every and self.step % cfg.save_every == 0):
                self.save_checkpoint()
        bar.close()
        if self.step != self._saved_step:  # steps = 0: nothing trained, nothing saved yet
            self.save_checkpoint()
        return self._finish(mkey)

    def _eval_and_log(self, mkey: str) -> None:
        """Every rank evaluates its share; rank 0 decides on a new best and tells the others."""
        res = self.evaluate("val")
        score_ = float(res.summary[mkey])
        better = [score_ > self.best["score"]]
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            better = broadcast_object_list(better, from_process=0)
        if better[0]:
            self.best = {"step": self.step, "score": score_}
            if self.is_main:
                self.save_best()
        if self.is_main:  # what was counted right: every example's sampled answers, per eval
            write_jsonl(self.run_dir / "records" / f"val-step-{self.step:06d}.jsonl", res.records)
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
            "context_note": self.task.context_note,  # what the task's context variant dropped
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
            write_jsonl(self.run_dir / "test_records.jsonl", res.records)
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
        if self.task.noise:  # `?noise=`: how many training answers were corrupted (RUN/noise.jsonl)
            result["noise"] = self.task.noise
            result["noisy_train"] = len(noise_records(self.splits["train"]))
        if self.loggers:
            self.loggers.close()
        write_json(self.run_dir / "final.json", result)
        return result
