r"""GARL / PAFT inside verl with the paper's weights: w = p(y*|x, z) from the actor, pathwise term.

    python -m tsallis_rl.integrations.verl_trainer \
        trainer.use_v1=False \
        algorithm.adv_estimator=garl +algorithm.tsallis_weight=teacher_forced +algorithm.tsallis_q=0.75 \
        actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum \
        actor_rollout_ref.actor.ppo_epochs=1 \
        actor_rollout_ref.actor.ppo_mini_batch_size=<data.train_batch_size> ...   (docs/verl.md)

Takes verl's own Hydra config (`ppo_trainer`) and runs verl's legacy trainer (`RayPPOTrainer`, the
`trainer.use_v1=False` path) with one method overridden, `_update_actor(batch)`. No line of `fit()`
is copied: rollout, reward, validation, checkpoints and logging are verl's. Before the actor update
the override
  1. splices every row into [x, z, </think>, y*, end] (`verl_splice.splice_teacher_forced`, which
     uses the project's one builder, `tsallis_rl.sequences`);
  2. runs the actor's log-prob pass over the spliced batch (`_compute_old_log_prob`): one pass
     gives both log w = log p(y*|x, z) (summed over the gold tokens) and the old log-probs of
     the update (ratio 1);
  3. gets per-row coefficients from the core (`verl.sequence_coefficients`: `garl_coefficients`,
     `paft_loss`) and lays them over the tokens: the rationale advantage on z, the pathwise
     (answer) advantage on y*, 0 on forced tokens (`response_mask` is 0 there);
  4. hands the spliced batch to verl's own `_update_actor`.
With `loss_agg_mode=seq-mean-token-sum`, one optimiser step per batch and ratio 1, verl's vanilla
policy loss then has exactly the core estimator's gradient, pathwise term included (tests).

What is given up: the rollout's own log-probs, TIS / rollout-correction weights and bypass mode
describe the sampled tokens, not y*, so they are refused; so are later mini-batches and epochs
(they would PPO-clip the pathwise term), KL and entropy terms (they would act on y*), temperatures
other than 1 and multi-turn rollouts. `check_teacher_forced_config` names the key of each.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hydra
import ray
from verl import DataProto
from verl.trainer import main_ppo_v0
from verl.trainer.main_ppo import run_ppo
from verl.trainer.ppo.ray_trainer import RayPPOTrainer
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.utils.device import auto_set_device

from tsallis_rl.integrations.verl import (
    ESTIMATORS,
    LOSS_AGG_MODE,
    TsallisVerlConfig,
    _generator,
    mark_teacher_forced_trainer,
    read_config,
    sequence_coefficients,
)
from tsallis_rl.integrations.verl_splice import (
    answer_log_weights,
    describe,
    gold_answers,
    splice_teacher_forced,
    token_advantages,
)
from tsallis_rl.tasks.base import default_answer_prefix

__all__ = [
    "TeacherForcedRayPPOTrainer",
    "TeacherForcedTaskRunner",
    "TeacherForcedTokens",
    "check_teacher_forced_config",
    "main",
]

log = logging.getLogger(__name__)
FP32 = ("fp32", "float32", "32", "torch.float32")


# --------------------------------------------------------------------------------------------------
# Config checks: each refuses one setting under which the update would not be the estimator


def _get(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part, None)
    return default if node is None else node


@dataclass(frozen=True)
class Check:
    """One setting the teacher-forced update needs: `ok(value, config)` or a refusal naming `key`."""

    key: str
    default: Any  # verl's default where the key is absent
    ok: Callable[[Any, Any], bool]
    why: str


_A, _R, _C = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "algorithm.rollout_correction"
_OFF = "trains y*, which the rollout never sampled: turn it off"
CHECKS: tuple[Check, ...] = (
    Check("algorithm.adv_estimator", None, lambda v, c: v in ESTIMATORS, f"needs one of {ESTIMATORS}"),
    Check("trainer.use_v1", True, lambda v, c: not v, "runs verl's legacy trainer: set it to False"),
    Check(f"{_A}.ppo_epochs", 1, lambda v, c: v == 1, "needs 1 (a second pass would PPO-clip the pathwise term)"),
    Check(
        f"{_A}.ppo_mini_batch_size", None, lambda v, c: v == _get(c, "data.train_batch_size"),
        "needs one optimiser step per batch: set it to data.train_batch_size",
    ),
    Check(f"{_A}.loss_agg_mode", None, lambda v, c: v == LOSS_AGG_MODE, f"needs {LOSS_AGG_MODE} (the estimator's normalisation)"),
    Check(f"{_A}.policy_loss.loss_mode", "vanilla", lambda v, c: v == "vanilla", "needs vanilla"),
    Check(f"{_A}.use_kl_loss", False, lambda v, c: not v, "has no KL term (it would act on y*)"),
    Check(f"{_A}.entropy_coeff", 0, lambda v, c: v == 0, "has no entropy term (it would act on y*)"),
    Check(f"{_C}.rollout_is", None, lambda v, c: v is None, _OFF),
    Check(f"{_C}.rollout_rs", None, lambda v, c: v is None, _OFF),
    Check(f"{_C}.bypass_mode", False, lambda v, c: not v, _OFF),
    Check(f"{_R}.temperature", 1.0, lambda v, c: math.isclose(float(v), 1.0), "needs 1.0 (w and the update use p at T = 1)"),
    Check(f"{_R}.multi_turn.enable", False, lambda v, c: not v, "supports single-turn rollouts only"),
)  # fmt: skip


def check_teacher_forced_config(config: Any) -> list[str]:
    """Refuse (ValueError naming the key) settings under which the teacher-forced update is wrong.

    config: verl's whole `ppo_trainer` config. Every entry of CHECKS, then the `tsallis_*` keys.
    Returns warnings (strings, also logged) for legal settings that are not recommended (bf16).
    """
    for check in CHECKS:
        value = _get(config, check.key, check.default)
        if not check.ok(value, config):
            raise ValueError(
                f"{check.key}={value!r}: algorithm.tsallis_weight=teacher_forced {check.why}"
            )
    read_config(_get(config, "algorithm"))  # the tsallis_* keys themselves
    warnings = []
    strategy = _get(config, f"{_A}.strategy", "fsdp")
    if strategy in ("fsdp", "fsdp2"):
        key = f"{_A}.fsdp_config.mixed_precision.param_dtype"
        dtype = _get(config, key, "bf16")  # verl's FSDP engine computes in bf16 unless set
        if str(dtype) not in FP32:
            warnings.append(
                f"{key}={dtype}: log w sums log-probs over y*, and bf16 engine log-probs differ "
                "from fp32 by up to 0.02 per token; fp32 is recommended "
                f"(+{_A}.fsdp_config.mixed_precision={{param_dtype:fp32}})"
            )
    for w in warnings:
        log.warning(w)
    return warnings


# --------------------------------------------------------------------------------------------------
# Token ids of the markers and gold answers


@dataclass
class TeacherForcedTokens:
    """The ids the splice needs, from the tokenizer and the `tsallis_*` settings."""

    think_close: list[int]
    eos_ids: list[int]
    pad_id: int
    answer_prefix: str
    tokenizer: Any = field(repr=False)
    _cache: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, tokenizer: Any, cfg: TsallisVerlConfig) -> TeacherForcedTokens:
        think_close = list(tokenizer(cfg.think_end, add_special_tokens=False)["input_ids"])
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        prefix = (
            default_answer_prefix(tokenizer) if cfg.answer_prefix == "auto" else cfg.answer_prefix
        )
        return cls(think_close, [eos], eos if pad is None else pad, prefix, tokenizer)

    def gold(self, truth: str) -> list[int]:
        """answer prefix + y* + end token, as the project's trainer and TRL adapter build it."""
        text = self.answer_prefix + truth
        if text not in self._cache:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cache[text] = [*ids, *self.eos_ids]
        return self._cache[text]


# --------------------------------------------------------------------------------------------------
# The trainer: verl's legacy RayPPOTrainer with the teacher-forced actor update


class TeacherForcedRayPPOTrainer(RayPPOTrainer):
    """`RayPPOTrainer` whose actor update trains [x, z, </think>, y*] with the paper's weights."""

    def __init__(self, config: Any, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        check_teacher_forced_config(config)
        super().__init__(config, tokenizer, *args, **kwargs)
        self._setup_teacher_forced()

    def _setup_teacher_forced(self) -> None:
        """Settings and token ids; marks this process so the advantage function defers to us."""
        self.tsallis = read_config(self.config.algorithm)
        self.tsallis_tokens = TeacherForcedTokens.build(self.tokenizer, self.tsallis)
        mark_teacher_forced_trainer(type(self).__name__)

    def _update_actor(self, batch: DataProto) -> DataProto:
        """Splice, score y* with the actor, set per-token advantages, then verl's own update."""
        tokens, cfg = self.tsallis_tokens, self.tsallis
        golds = gold_answers(batch.non_tensor_batch, tokens.gold)
        spliced = splice_teacher_forced(
            batch, golds, tokens.think_close, tokens.eos_ids, tokens.pad_id
        )
        old, _ = self._compute_old_log_prob(spliced.batch)
        old_log_probs = old.batch["old_log_probs"]
        log_w = answer_log_weights(old_log_probs, spliced.answer_mask)
        rationale, answer = sequence_coefficients(
            log_w,
            batch.non_tensor_batch["uid"],
            self.config.algorithm.adv_estimator,
            cfg,
            _generator(cfg.seed),
        )
        train = spliced.batch
        train.batch["old_log_probs"] = old_log_probs
        train.batch["advantages"] = token_advantages(
            rationale, answer, spliced.rationale_mask, spliced.answer_mask
        )
        # verl's metrics read the sampled batch: show the rationale advantage there
        batch.batch["advantages"] = (
            rationale.float()[:, None] * batch.batch["response_mask"].float()
        )
        out = super()._update_actor(train)
        metrics = dict(out.meta_info.get("metrics", {}))
        metrics.update(describe(spliced, log_w))
        metrics["tsallis/max_adv"] = rationale.max().item()
        out.meta_info["metrics"] = metrics
        return out


# --------------------------------------------------------------------------------------------------
# Entry point: verl's legacy TaskRunner, with this trainer


_V0_TASK_RUNNER = getattr(main_ppo_v0.TaskRunner, "__ray_actor_class__", main_ppo_v0.TaskRunner)


@contextlib.contextmanager
def _v0_trainer_class(cls: type) -> Iterator[None]:
    """`main_ppo_v0.TaskRunner.run` names its trainer through this module global: swap it."""
    saved = main_ppo_v0.RayPPOTrainer
    main_ppo_v0.RayPPOTrainer = cls
    try:
        yield
    finally:
        main_ppo_v0.RayPPOTrainer = saved


class TeacherForcedTaskRunner(_V0_TASK_RUNNER):
    """verl's legacy TaskRunner (workers, datasets, reward) that builds TeacherForcedRayPPOTrainer."""

    trainer_cls = TeacherForcedRayPPOTrainer

    def run(self, config: Any) -> None:
        with _v0_trainer_class(self.trainer_cls):
            super().run(config)


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config: Any) -> None:
    """verl's `main_ppo` with the teacher-forced trainer; its config is refused before Ray starts."""
    auto_set_device(config)
    check_teacher_forced_config(config)
    validate_config(
        config=config,
        use_reference_policy=need_reference_policy(config),
        use_critic=need_critic(config),
    )
    run_ppo(config, task_runner_class=ray.remote(TeacherForcedTaskRunner))


if __name__ == "__main__":
    main()
