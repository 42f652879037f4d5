"""GARL and PAFT inside Hugging Face TRL's `GRPOTrainer` (extra `[trl]`).

Switching from GRPO is a change of names; every GRPO argument keeps its meaning:

    >>> from tsallis_rl.integrations.trl import TsallisGRPOConfig, TsallisGRPOTrainer
    >>> args = TsallisGRPOConfig(output_dir="out", num_generations=8, tsallis_q=0.75)  # was GRPOConfig
    >>> trainer = TsallisGRPOTrainer(model, reward_funcs=exact_match, args=args,  # was GRPOTrainer
    ...                              train_dataset=dataset)  # with an "answer" column (y*)

Two weight sources (`tsallis_weight`):
  - "answer_likelihood" (default, the paper's estimator; needs the gold answer in
    `tsallis_answer_column`): the rationale z_m is the completion up to `tsallis_think_end` or an
    end token (kept in z and trained), whichever comes first; `</think>` is appended when the model
    did not write it (budget forcing; the rules are `tsallis_rl.sequences.close_rationale`); the gold answer y* (+ EOS) is
    teacher-forced after it and w_m = p(y* | x, z_m) from the policy. It trains even when every
    sampled answer is wrong (cold start). q = 0 is RB-RLOO (= VeriFree), q = 1 the self-normalised
    IWAE-like gradient of log P.
  - "reward": w_m is the reward of completion m (it must lie in [0, 1]); the whole completion is the
    "rationale" and the estimator's rationale coefficients replace TRL's advantages. With binary
    rewards q = 0 is plain RLOO and q = 1 gives c_m = R_m / R_bar - 1; an all-zero group gets no
    gradient (as in GRPO).
Every teacher-forced estimator whose inputs are the [B, M] sequence log-probs is accepted by name
(garl, paft, rb_rloo, verifree, loglik, iwae); rlpr needs per-token log-probs and a no-rationale
baseline from the starting model, which this adapter does not build.

This module only translates: TRL's gathered groups -> `[B, M]` log-weights -> the registered core
estimator (`tsallis_rl.estimators`) -> its per-sample derivatives `rationale_grad` / `answer_grad`,
which become the weights of a per-sequence linear surrogate (PPO-clipped on the rationale tokens, so
`num_iterations > 1` and vLLM importance sampling keep TRL's meaning). No estimator math lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from tsallis_rl.estimators import coef_underflow, get_estimator_spec, list_estimators
from tsallis_rl.sequences import teacher_forced_batch
from tsallis_rl.tasks.base import default_answer_prefix

__all__ = ["TsallisGRPOConfig", "TsallisGRPOTrainer", "group_coefficients", "build_teacher_forced"]

WEIGHT_SOURCES = ("reward", "answer_likelihood")


@dataclass
class TsallisGRPOConfig(GRPOConfig):
    """`GRPOConfig` plus the Tsallis (J_Q) estimator settings; all GRPO fields keep their meaning."""

    tsallis_estimator: str = field(
        default="garl",
        metadata={
            "help": "Registered teacher-forced estimator: garl (Algorithm 1), paft (Algorithm 2), rb_rloo, "
            "verifree, loglik or iwae."
        },
    )
    tsallis_q: float = field(
        default=0.75,
        metadata={
            "help": "Commitment q in [0, 1]: 0 = RB-RLOO / RL, 1 = IWAE / EM (0.75 escapes cold start)."
        },
    )
    tsallis_weight: str = field(
        default="answer_likelihood",
        metadata={
            "help": "'answer_likelihood' (default, the paper's): w = p(y*|x, z) with the gold answer "
            "teacher-forced after the rationale (needs tsallis_answer_column); 'reward': w = reward in "
            "[0, 1] of each completion."
        },
    )
    tsallis_answer_column: str = field(
        default="answer",
        metadata={"help": "Dataset column with the gold answer y* (answer_likelihood only)."},
    )
    tsallis_answer_prefix: str = field(
        default="auto",
        metadata={
            "help": "Text put between the rationale end and y*, scored with y*. 'auto': what tsallis-rl's "
            "own trainer uses for the tokenizer ('\\n\\n' with a chat template, '' without)."
        },
    )
    tsallis_think_end: str = field(
        default="</think>",
        metadata={
            "help": "Marker that ends the rationale; appended (budget forcing) when a completion lacks it."
        },
    )
    tsallis_num_samples: int | None = field(
        default=None,
        metadata={"help": "PAFT K: resampled rationales per prompt (default M = num_generations)."},
    )
    tsallis_pathwise: bool = field(
        default=True,
        metadata={
            "help": "GARL: keep the pathwise term grad w_m / w_bar^q (answer_likelihood only)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        spec = get_estimator_spec(self.tsallis_estimator)  # raises with the known names
        usable = ", ".join(n for n in list_estimators() if get_estimator_spec(n).sequence_only)
        if spec.inputs != "teacher_forced":
            raise ValueError(
                f"tsallis_estimator={self.tsallis_estimator!r} is a sampled-reward estimator; use TRL's own "
                f"GRPOTrainer for it. TsallisGRPOTrainer takes a teacher-forced one: {usable}."
            )
        if not spec.sequence_only:
            raise ValueError(
                f"tsallis_estimator={self.tsallis_estimator!r} needs per-token answer log-probs or a "
                "no-rationale baseline from the starting model, which the TRL adapter does not build; "
                f"use `tsallis-rl train --estimator {spec.name}` or one of: {usable}."
            )
        if not 0.0 <= float(self.tsallis_q) <= 1.0:
            raise ValueError(f"tsallis_q must lie in [0, 1], got {self.tsallis_q}")
        if self.tsallis_weight not in WEIGHT_SOURCES:
            raise ValueError(
                f"tsallis_weight must be one of {WEIGHT_SOURCES}, got {self.tsallis_weight!r}"
            )
        if self.tsallis_num_samples is not None and int(self.tsallis_num_samples) < 1:
            raise ValueError(
                f"tsallis_num_samples (PAFT K) must be >= 1, got {self.tsallis_num_samples}"
            )
        if self.tsallis_weight == "answer_likelihood" and not self.tsallis_think_end:
            raise ValueError("tsallis_think_end must be a non-empty marker such as '</think>'")


# --------------------------------------------------------------------------------------------------
# Pure translation helpers (tested directly; no trainer state)


def group_coefficients(
    log_w: Tensor,
    num_generations: int,
    estimator: str,
    q: float,
    *,
    local_slice: slice,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Per-sample estimator derivatives for one process from the gathered log-weights.

    log_w: [N] float log-weights of every completion of every process, in TRL's gathered order
    (the `num_generations` completions of a prompt are consecutive). Returns
    (rationale_grad, answer_grad, stats): the first two [len(local_slice)] float64, the core
    estimator's d loss / d log p(z) and d loss / d log p(y*|x,z) for the local completions.
    """
    M = int(num_generations)
    if log_w.dim() != 1 or log_w.numel() % M:
        raise ValueError(f"gathered weights {tuple(log_w.shape)} do not split into groups of {M}")
    answer_logp = log_w.detach().to(torch.float64).view(-1, M)  # [B, M]
    spec = get_estimator_spec(estimator)
    out = spec.bind(q, options or {})(torch.zeros_like(answer_logp), answer_logp)
    rat, ans = out.rationale_grad.reshape(-1), out.answer_grad.reshape(-1)
    return rat[local_slice], ans[local_slice], out.stats


def build_teacher_forced(
    completion_ids: list[list[int]],
    answer_ids: list[list[int]],
    think_end_ids: list[int],
    eos_ids: list[int],
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rebuild each completion as rationale + (forced) think-end + gold answer (`sequences`' rules).

    completion_ids: N unpadded sampled completions; answer_ids: N token lists of y* (with its end
    token). The rationale z ends at the first `think_end_ids` or the first end token, whichever comes
    first (a sampled end token is kept in z and trained); after an end token or a spent budget the
    marker is appended as forced context (scored by neither part). Returns right-padded
    (ids, attention_mask, rationale_mask, answer_mask) [N, T] and budget_forced [N] bool. Rationale
    tokens keep their completion positions.
    """
    batch = teacher_forced_batch(completion_ids, answer_ids, think_end_ids, eos_ids, pad_id)
    return (
        batch.ids, batch.attention_mask, batch.rationale_mask, batch.answer_mask,
        batch.budget_forced,
    )  # fmt: skip


@dataclass
class _Coefs:
    """The two coefficient vectors, in the shape `coef_underflow` reads."""

    rationale_grad: Tensor
    answer_grad: Tensor


def _missing_answer_column(col: str, available: Any, where: str = "train_dataset") -> str:
    return (
        f"{where} has no gold-answer column {col!r} (tsallis_answer_column), which "
        "tsallis_weight='answer_likelihood' (the default, the paper's estimator) teacher-forces after "
        f"each rationale; columns: {available}. Name the column with tsallis_answer_column=..., or set "
        "tsallis_weight='reward' to weight each completion by the reward functions instead."
    )


def _fit(t: Tensor, T: int, fill: float) -> Tensor:
    """Right-crop or right-pad the last dim of [N, T'] to T (a [N, 1] tensor is returned as is)."""
    if t.size(-1) == 1 or t.size(-1) == T:
        return t
    if t.size(-1) > T:
        return t[..., :T]
    return torch.nn.functional.pad(t, (0, T - t.size(-1)), value=fill)


# --------------------------------------------------------------------------------------------------
# Trainer


_UNSUPPORTED = (
    ("beta", lambda a: a.beta != 0.0, "a KL penalty to a reference model (beta != 0)"),
    (
        "loss_type",
        lambda a: a.loss_type in ("cispo", "sapo", "vespo"),
        "loss_type cispo/sapo/vespo",
    ),
    ("top_entropy_quantile", lambda a: a.top_entropy_quantile < 1.0, "entropy masking"),
    ("entropy_coef", lambda a: a.entropy_coef != 0.0 or a.use_adaptive_entropy, "an entropy bonus"),
    (
        "off_policy_mask_threshold",
        lambda a: a.off_policy_mask_threshold is not None,
        "off-policy masking",
    ),
)


class TsallisGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose update is the GARL / PAFT estimator of J_Q (see the module docstring).

    Generation, reward functions, vLLM, PEFT, gradient accumulation and several processes are TRL's;
    groups are TRL's (`num_generations` consecutive completions of the gathered batch). The loss is
    sum_i rationale_grad_i * log p(z_i) + answer_grad_i * log p(y*|x, z_i) with the core estimator's
    derivatives, scaled so the optimiser step sees the core gradient of the whole generation batch.
    """

    _tag_names = ["trl", "grpo", "tsallis-rl"]

    def __init__(self, model, reward_funcs=None, args: TsallisGRPOConfig | None = None, **kwargs):
        if not isinstance(args, TsallisGRPOConfig):
            raise TypeError(
                "TsallisGRPOTrainer needs args=TsallisGRPOConfig(...) (a GRPOConfig subclass)"
            )
        for name, bad, what in _UNSUPPORTED:
            if bad(args):
                raise ValueError(f"TsallisGRPOTrainer does not support {what}; unset `{name}`.")
        if args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "TsallisGRPOTrainer needs multi_objective_aggregation='sum_then_normalize': the weighted sum "
                "of the reward functions is the weight w in [0, 1]."
            )
        if args.tsallis_weight == "answer_likelihood":
            for name in ("tools", "rollout_func", "environment_factory"):
                if kwargs.get(name):
                    raise ValueError(
                        f"tsallis_weight='answer_likelihood' needs single-turn completions; `{name}` is not supported"
                    )
            if args.mask_truncated_completions:
                raise ValueError(
                    "mask_truncated_completions=True conflicts with tsallis_weight='answer_likelihood': "
                    "truncated completions are budget-forced rationales, not failures."
                )
            if args.remove_unused_columns:
                raise ValueError(
                    "remove_unused_columns=True would drop the gold-answer column "
                    f"{args.tsallis_answer_column!r}; set it to False."
                )
            ds = kwargs.get("train_dataset")
            cols = getattr(ds, "column_names", None)
            if cols is not None and args.tsallis_answer_column not in cols:
                raise ValueError(_missing_answer_column(args.tsallis_answer_column, cols))
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._tsallis_generator = torch.Generator().manual_seed(
            args.seed
        )  # same draws on every process
        self._tsallis_answer_cache: dict[str, list[int]] = {}
        prefix = args.tsallis_answer_prefix
        self._tsallis_answer_prefix = (
            default_answer_prefix(self._tokenizer) if prefix == "auto" else prefix
        )
        if args.tsallis_weight == "answer_likelihood":
            self._tsallis_think_end_ids = self._tokenizer(
                args.tsallis_think_end, add_special_tokens=False
            )["input_ids"]
            if not self._tsallis_think_end_ids:
                raise ValueError(
                    f"tsallis_think_end {args.tsallis_think_end!r} tokenizes to nothing"
                )

    # -- generation: weights and coefficients on TRL's gathered groups ------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._tsallis_rewards_per_func = rewards_per_func  # gathered over processes, [N_total, F]
        return rewards_per_func

    def _tsallis_gather(self, t: Tensor) -> Tensor:
        return self.accelerator.gather(t)

    def _tsallis_answer_ids(self, answer: Any) -> list[int]:
        text = self._tsallis_answer_prefix + str(answer)
        if text not in self._tsallis_answer_cache:
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
            self._tsallis_answer_cache[text] = [*ids, self._tokenizer.eos_token_id]
        return self._tsallis_answer_cache[text]

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        args, mode = self.args, ("train" if self.model.training else "eval")
        M = self.num_generations if mode == "train" else self.num_generations_eval
        device = out["completion_ids"].device
        n_local = out["completion_ids"].size(0)
        rewards_pf = self._tsallis_rewards_per_func.to(device)
        rewards = (rewards_pf * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_pf).all(dim=1)] = 0.0  # unscorable: weight 0
        metrics = self._metrics[mode]
        metrics["frac_reward_zero"].append(
            (rewards.view(-1, M) == 0).all(dim=1).float().mean().item()
        )

        if args.tsallis_weight == "reward":
            if ((rewards < -1e-6) | (rewards > 1 + 1e-6)).any():
                raise ValueError(
                    "tsallis_weight='reward' needs rewards in [0, 1] (w is a probability-like weight); got "
                    f"min {rewards.min().item():.4g}, max {rewards.max().item():.4g} from "
                    f"{self.reward_func_names}. Rescale the reward functions or use reward_weights."
                )
            log_w = torch.log(rewards.clamp(0.0, 1.0).double())  # log 0 = -inf is legal
        else:
            if "pixel_values" in out or "tool_mask" in out:
                raise ValueError(
                    "tsallis_weight='answer_likelihood' supports text-only single-turn prompts"
                )
            self._tsallis_teacher_force(out, inputs)
            log_w = self._tsallis_gather(out["tsallis_answer_logp"].double())

        pi = self.accelerator.process_index
        local = slice(pi * n_local, (pi + 1) * n_local)
        rat, ans, stats = group_coefficients(
            log_w,
            M,
            args.tsallis_estimator,
            args.tsallis_q,
            local_slice=local,
            options={
                "pathwise": args.tsallis_pathwise,
                "num_samples": args.tsallis_num_samples,
                "generator": self._tsallis_generator,
            },
        )
        out["tsallis_rationale_coef"] = rat.to(device)
        out["tsallis_answer_coef"] = ans.to(device)
        # TRL's "advantages" in its convention (loss = -mean_i A_i log p_i): for GARL A = c / M^q.
        n_total = log_w.numel()
        advantages = -rat * n_total
        out["advantages"] = advantages.float().to(device)
        logged = self._logs["advantages"]
        for _ in range(min(n_total, len(logged))):
            logged.pop()
        logged.extend((-self._tsallis_gather(rat.to(device)) * n_total).tolist())
        # The surrogate multiplies these float64 coefficients into log-probs of at least float32, but
        # an fp16/bf16 model's backward carries them in its own dtype: count what that dtype loses.
        dtype = self.model.dtype
        work = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        stats["coef_underflow"] = coef_underflow(_Coefs(rat, ans), work)
        for key, value in stats.items():
            metrics[f"tsallis/{key}"].append(float(value))
        return out

    @torch.no_grad()
    def _tsallis_teacher_force(self, out: dict, inputs: list[dict]) -> None:
        """Add the teacher-forced sequences and w = p(y*|x, z) (no grad) to the generation batch."""
        col = self.args.tsallis_answer_column
        if col not in inputs[0]:
            raise ValueError(_missing_answer_column(col, sorted(inputs[0]), where="the batch"))
        lengths = out["completion_mask"].sum(dim=1).tolist()
        comps = [row[:n] for row, n in zip(out["completion_ids"].tolist(), lengths)]
        answers = [self._tsallis_answer_ids(x[col]) for x in inputs]
        ids, attn, rmask, amask, forced = build_teacher_forced(
            comps,
            answers,
            self._tsallis_think_end_ids,
            self.eos_token_ids,
            self._tokenizer.pad_token_id,
        )
        device = out["completion_ids"].device
        ids, attn, rmask, amask = (t.to(device) for t in (ids, attn, rmask, amask))
        mode = "train" if self.model.training else "eval"
        bs = (
            self.args.per_device_train_batch_size
            if mode == "train"
            else self.args.per_device_eval_batch_size
        )
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([out["prompt_ids"], ids], dim=1),
                torch.cat([out["prompt_mask"], attn], dim=1),
                ids.size(1),
                batch_size=bs,
            )
        answer_logp = (logps.double() * amask).sum(dim=1)
        out.update(
            tsallis_completion_ids=ids,
            tsallis_completion_mask=attn,
            tsallis_rationale_mask=rmask,
            tsallis_answer_mask=amask,
            tsallis_answer_logp=answer_logp,
        )
        gathered = self._tsallis_gather(
            torch.stack([answer_logp, forced.to(device).double()], dim=1)
        )
        metrics = self._metrics[mode]
        metrics["tsallis/answer_logp"].append(gathered[:, 0].mean().item())
        metrics["tsallis/frac_budget_forced"].append(gathered[:, 1].mean().item())

    # -- loss: the linear surrogate with the core derivatives ---------------------------------------

    def _compute_loss(self, model, inputs):
        args, mode = self.args, ("train" if self.model.training else "eval")
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        if "tsallis_completion_ids" in inputs:
            comp_ids, comp_attn = (
                inputs["tsallis_completion_ids"],
                inputs["tsallis_completion_mask"],
            )
            rat_mask, ans_mask = inputs["tsallis_rationale_mask"], inputs["tsallis_answer_mask"]
            extra = {}
        else:
            comp_ids, comp_attn = inputs["completion_ids"], inputs["completion_mask"]
            rat_mask = comp_attn if "tool_mask" not in inputs else comp_attn * inputs["tool_mask"]
            ans_mask = None
            extra = {
                k: inputs.get(k)
                for k in (
                    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask",
                    "spatial_shapes", "num_tiles", "image_sizes", "token_type_ids",
                    "mm_token_type_ids", "image_position_ids",
                )
            }  # fmt: skip
        T = comp_ids.size(1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, comp_ids], dim=1),
            torch.cat([prompt_mask, comp_attn], dim=1),
            T,
            compute_entropy=True,
            **extra,
        )
        # Coefficients are never cast below float32: the surrogate is formed in at least float32
        # (an fp16 model's log-probs are promoted; its backward casts back to fp16).
        logps = logps.to(torch.promote_types(logps.dtype, torch.float32))
        rat_mask = rat_mask.to(logps.dtype)
        # Rationale (score-function) term, PPO-clipped as in TRL; its gradient at ratio 1 is
        # rationale_grad * grad log p(z). Rationale tokens keep their positions in the completion.
        old = inputs.get("old_per_token_logps")
        old = (
            logps.detach()
            if old is None
            else torch.where(rat_mask > 0, _fit(old, T, 0.0), logps.detach())
        )
        log_ratio = (logps - old) * rat_mask
        if self.importance_sampling_level == "sequence":
            log_ratio = log_ratio.sum(-1, keepdim=True) / rat_mask.sum(-1, keepdim=True).clamp(
                min=1.0
            )
        coef_1 = torch.exp(log_ratio)
        coef_2 = torch.clamp(coef_1, 1 - self.epsilon_low, 1 + self.epsilon_high)
        if args.delta is not None:
            coef_1 = torch.clamp(coef_1, max=args.delta)
        adv = -inputs["tsallis_rationale_coef"].to(logps.dtype).unsqueeze(1)
        per_token = -torch.min(coef_1 * adv, coef_2 * adv)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            per_token = per_token * _fit(inputs["importance_sampling_ratio"], T, 1.0)
        loss = (per_token * rat_mask).sum()
        if (
            ans_mask is not None
        ):  # pathwise / teacher-forced answer term: answer_grad * log p(y*|x, z)
            ans_coef = inputs["tsallis_answer_coef"].to(logps.dtype).unsqueeze(1)
            loss = loss + (ans_coef * logps * ans_mask.to(logps.dtype)).sum()
        # The coefficients already average over the gathered generation batch: undo DDP's mean over
        # processes, and spread the generation batch over its steps_per_generation micro-batches.
        scale = float(self.accelerator.num_processes)
        if mode == "train":
            ga = getattr(
                self, "current_gradient_accumulation_steps", args.gradient_accumulation_steps
            )
            scale *= args.steps_per_generation / ga
        loss = loss * scale

        def global_mean(x: Tensor, m: Tensor) -> float:
            totals = self.accelerator.reduce(
                torch.stack([(x * m).sum(), m.sum()]).detach(), reduction="sum"
            )
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        metrics = self._metrics[mode]
        metrics["entropy"].append(global_mean(entropies, rat_mask))
        clipped = ((coef_1 < 1 - self.epsilon_low) & (adv < 0)) | (
            (coef_1 > 1 + self.epsilon_high) & (adv > 0)
        )
        metrics["clip_ratio/region_mean"].append(
            global_mean(clipped.expand_as(rat_mask).float(), rat_mask)
        )
        return loss
