r"""GARL and PAFT as verl advantage estimators, and a verl reward function (extra `[verl]`).

verl 0.9 pins transformers<5.11, so it lives in its own venv here (`make .venv-verl/.installed`).
Select an estimator with one environment variable and a few config lines (docs/verl.md):

    export VERL_USE_EXTERNAL_MODULES=tsallis_rl.integrations.verl    # imports this module
    python -m verl.trainer.main_ppo \
        algorithm.adv_estimator=garl \                                # or paft
        +algorithm.tsallis_q=0.75 \
        actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum \    # makes the gradient exact
        actor_rollout_ref.actor.use_kl_loss=False actor_rollout_ref.actor.entropy_coeff=0 ...

(Installing the package, e.g. `pip install -e ".[verl]"` from a clone, also registers this module as
a `verl.plugins` entry point, which verl imports on its own unless VERL_USE_EXTERNAL_PLUGINS=none.)

Config keys under `algorithm` (add them with `+algorithm.KEY=VALUE`), all optional:
    tsallis_q            0.75    commitment q in [0, 1]: 0 = RB-RLOO, 1 = IWAE (garl) / EM (paft)
    tsallis_num_samples  null    PAFT's K resampled indices per prompt (null = the group size M)
    tsallis_baseline     rloo    GARL's baseline: "rloo" (Algorithm 1) or "none" (plug-in, Eq. 9)
    tsallis_normalize    true    keep the 1/M**q factor of the published algorithms
    tsallis_weight       reward  "reward": the sequence score is w in [0, 1];
                                 "log_reward": the score is log w <= 0 (for weights that underflow);
                                 "teacher_forced": w = p(y*|x, z) from the actor, with the pathwise
                                 term (needs the trainer of `verl_trainer`, see below)
    tsallis_seed         null    seed of PAFT's resampling generator (null = torch's global RNG)
    tsallis_answer_prefix auto   teacher_forced: text between </think> and y* ("auto": "\n\n" when
                                 the tokenizer has a chat template, else "")
    tsallis_think_end    </think> teacher_forced: the marker that ends the rationale

What the estimators do. verl hands over flat rows: `token_level_rewards` [bs, L] whose row sum is the
sequence score, and `index` [bs], the prompt uid of each row (rows of a prompt in any order, groups of
any size). The rows are gathered into [G, M] groups per group size, the weights w = score go to the
core (`tsallis_rl.estimators`: `garl_coefficients`, `paft_loss`), and each row gets one advantage,
broadcast over its response tokens:
    garl: A_m = M c_m,  c_m = the core's rationale coefficient (already / M**(1+q)), i.e. the paper's
          amplified advantage (w_m / w_bar**q - w_loo**(1-q)) / M**q   (verl logs its max as
          critic/advantages/max: the signal of the paper's Fig. 3)
    paft: A_m = M n_m w_bar**(1-q) / (M**q K),  n_m = resampling counts (they sum to K per group)
With `loss_agg_mode=seq-mean-token-sum` verl's vanilla policy loss at ratio 1 is
    -(1/N) sum_i A_i sum_t log p(token_it),   N = number of rows,
whose gradient equals the core estimator's -(1/G) sum_g sum_m c_gm grad log p(z_gm | x_g) when every
group has M rows (N = G M). With unequal group sizes each prompt is weighted by its share M_g/N of
the rows instead of 1/G. The response is the whole completion (rationale and sampled answer), and
w is a reward, not a differentiable likelihood, so there is no pathwise term here.

The paper's weights, w = p(y*|x, z) with the pathwise term, need the actor: with
`+algorithm.tsallis_weight=teacher_forced` the trainer of `tsallis_rl.integrations.verl_trainer`
rebuilds each sample as [x, z, </think>, y*] before the actor update and trains it with per-token
advantages from `sequence_coefficients` (docs/verl.md). The advantage functions here then only
return zeros, which that trainer replaces; without it they refuse to run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tsallis_rl.estimators import garl_coefficients, paft_loss
from tsallis_rl.tasks import Example, get_task

__all__ = [
    "ESTIMATORS",
    "LOSS_AGG_MODE",
    "TsallisVerlConfig",
    "compute_garl_outcome_advantage",
    "compute_paft_outcome_advantage",
    "compute_score",
    "group_rows",
    "read_config",
    "register",
    "sequence_advantages",
    "sequence_coefficients",
]

ESTIMATORS = ("garl", "paft")
#: the actor's loss_agg_mode under which verl's policy gradient equals the core estimator's
LOSS_AGG_MODE = "seq-mean-token-sum"
WEIGHTS = ("reward", "log_reward", "teacher_forced")
BASELINES = ("rloo", "none")
REWARD_TOL = 1e-6  # scores within this of [0, 1] (float32 sums) are clamped; beyond it: an error


# --------------------------------------------------------------------------------------------------
# Config: `algorithm.tsallis_*`, validated at the boundary


@dataclass(frozen=True)
class TsallisVerlConfig:
    """The `algorithm.tsallis_*` settings (see the module docstring for their meaning)."""

    q: float = 0.75
    num_samples: int | None = None
    baseline: str = "rloo"
    normalize: bool = True
    weight: str = "reward"
    seed: int | None = None
    answer_prefix: str = "auto"
    think_end: str = "</think>"


_KEYS = {
    "tsallis_q": "q",
    "tsallis_num_samples": "num_samples",
    "tsallis_baseline": "baseline",
    "tsallis_normalize": "normalize",
    "tsallis_weight": "weight",
    "tsallis_seed": "seed",
    "tsallis_answer_prefix": "answer_prefix",
    "tsallis_think_end": "think_end",
}


def _bad(key: str, why: str, value: Any) -> ValueError:
    return ValueError(f"algorithm.{key}: {why}, got {value!r}")


def _keys_of(config: Any) -> list[str]:
    try:
        return [str(k) for k in config.keys()]
    except (AttributeError, TypeError):
        return []


def read_config(config: Any) -> TsallisVerlConfig:
    """Validated settings from verl's `algorithm` node (DictConfig, AlgoConfig, dict or None).

    Unknown `tsallis_*` keys (typos) and bad values raise ValueError naming `algorithm.<key>`.
    """
    if config is None:
        return TsallisVerlConfig()
    unknown = [k for k in _keys_of(config) if k.startswith("tsallis_") and k not in _KEYS]
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join('algorithm.' + k for k in unknown)}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    defaults = TsallisVerlConfig()
    raw = {}
    for key, attr in _KEYS.items():
        value = config.get(key, None) if hasattr(config, "get") else None
        raw[attr] = getattr(defaults, attr) if value is None else value

    q = raw["q"]
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not math.isfinite(float(q)):
        raise _bad("tsallis_q", "must be a number in [0, 1]", q)
    if not 0.0 <= float(q) <= 1.0:
        raise _bad("tsallis_q", "must lie in [0, 1]", q)
    k = raw["num_samples"]
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or int(k) < 1:
            raise _bad("tsallis_num_samples", "must be an integer >= 1 (or null for K = M)", k)
        k = int(k)
    baseline = raw["baseline"]
    if baseline not in BASELINES:
        raise _bad("tsallis_baseline", f"must be one of {BASELINES}", baseline)
    normalize = raw["normalize"]
    if not isinstance(normalize, bool):
        raise _bad("tsallis_normalize", "must be true or false", normalize)
    weight = raw["weight"]
    if weight not in WEIGHTS:
        raise _bad("tsallis_weight", f"must be one of {WEIGHTS}", weight)
    seed = raw["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise _bad("tsallis_seed", "must be an integer (or null)", seed)
    prefix = raw["answer_prefix"]
    if not isinstance(prefix, str):
        raise _bad("tsallis_answer_prefix", 'must be a string ("auto" or the text itself)', prefix)
    think_end = raw["think_end"]
    if not isinstance(think_end, str) or not think_end:
        raise _bad("tsallis_think_end", "must be a non-empty string such as '</think>'", think_end)
    return TsallisVerlConfig(
        q=float(q),
        num_samples=k,
        baseline=str(baseline),
        normalize=normalize,
        weight=str(weight),
        seed=None if seed is None else int(seed),
        answer_prefix=prefix,
        think_end=think_end,
    )


# --------------------------------------------------------------------------------------------------
# Translation: flat verl rows <-> [G, M] groups


def group_rows(index: Sequence[Any] | np.ndarray) -> list[np.ndarray]:
    """Row numbers of each prompt uid, groups in order of first appearance, rows in batch order."""
    groups: dict[Any, list[int]] = {}
    for i, uid in enumerate(np.asarray(index, dtype=object).reshape(-1).tolist()):
        groups.setdefault(uid, []).append(i)
    return [np.asarray(rows, dtype=np.int64) for rows in groups.values()]


def scores_to_log_weights(scores: Tensor, weight: str = "reward") -> Tensor:
    """Sequence scores [bs] -> log w [bs] float64 (log 0 = -inf is legal), with clear errors.

    weight "reward": scores are w in [0, 1] (float32 sums within REWARD_TOL are clamped);
    weight "log_reward": scores are log w in [-inf, 0].
    """
    s = scores.detach().to(torch.float64)
    if torch.isnan(s).any():
        raise ValueError("the reward function returned NaN scores")
    if weight == "log_reward":
        if (s > REWARD_TOL).any():
            raise ValueError(
                f"algorithm.tsallis_weight=log_reward needs scores log w <= 0; max is {s.max().item()}"
            )
        return s.clamp(max=0.0)
    if weight != "reward":
        raise _bad("tsallis_weight", f"must be one of {WEIGHTS}", weight)
    lo, hi = s.min().item(), s.max().item()
    if lo < -REWARD_TOL or hi > 1.0 + REWARD_TOL:
        raise ValueError(
            f"GARL/PAFT use the sequence score as the weight w, which must lie in [0, 1]; got scores "
            f"in [{lo}, {hi}]. Use a 0/1 (or [0, 1]) reward function and keep "
            f"algorithm.use_kl_in_reward=False (a KL penalty in the reward moves scores out of range)."
        )
    return torch.log(s.clamp(0.0, 1.0))


_GENERATORS: dict[int, torch.Generator] = {}


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if seed not in _GENERATORS:
        _GENERATORS[seed] = torch.Generator().manual_seed(seed)
    return _GENERATORS[seed]


def sequence_coefficients(
    log_w: Tensor,
    index: Sequence[Any] | np.ndarray,
    estimator: str,
    cfg: TsallisVerlConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row advantages of the rationale and of the teacher-forced answer, each [bs] float64.

    log_w: [bs] log-weights; index: [bs] prompt uids. Groups of equal size M are stacked into
    [G, M] (first-appearance order) and sent to the core in one call; each row gets M times the
    core's per-sample derivative (negated: an advantage), so that verl's
    `-(1/N) sum_i A_i sum_t log p(token_it)` has the core's gradient when N = G M:
        garl: rationale M c_m, answer M r_m (the pathwise weight w_m / w_bar**q, scaled like c)
        paft: both M n_m w_bar**(1-q) / (M**q K)
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    log_w = log_w.detach().to(torch.float64).reshape(-1)
    bs = log_w.shape[0]
    if len(index) != bs:
        raise ValueError(f"index has {len(index)} entries but the batch has {bs} rows")
    rationale = torch.zeros(bs, dtype=torch.float64, device=log_w.device)
    answer = torch.zeros_like(rationale)
    by_size: dict[int, list[np.ndarray]] = {}
    for rows in group_rows(index):
        by_size.setdefault(len(rows), []).append(rows)
    for M, groups in by_size.items():
        rows = torch.as_tensor(np.stack(groups), device=log_w.device)  # [G, M]
        lw = log_w[rows]
        if estimator == "garl":
            if cfg.baseline == "rloo" and M < 2:
                raise ValueError(
                    "garl with the leave-one-out baseline needs >= 2 responses per prompt; set "
                    "actor_rollout_ref.rollout.n >= 2 (or +algorithm.tsallis_baseline=none)"
                )
            c, r, _ = garl_coefficients(lw, cfg.q, baseline=cfg.baseline, normalize=cfg.normalize)
            coef_z, coef_y = c, r  # d loss / d log p(z) = -c / G, d loss / d log p(y*|z) = -r / G
        else:
            G = lw.shape[0]
            out = paft_loss(
                torch.zeros_like(lw),
                lw,
                cfg.q,
                num_samples=cfg.num_samples,
                generator=generator,
                normalize=cfg.normalize,
            )
            coef_z, coef_y = -out.rationale_grad * G, -out.answer_grad * G
        flat = rows.reshape(-1)
        rationale[flat] = (coef_z * M).reshape(-1).to(rationale.device)
        answer[flat] = (coef_y * M).reshape(-1).to(answer.device)
    return rationale, answer


def sequence_advantages(
    log_w: Tensor,
    index: Sequence[Any] | np.ndarray,
    estimator: str,
    cfg: TsallisVerlConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One advantage per row [bs] float64: the rationale part of `sequence_coefficients`."""
    return sequence_coefficients(log_w, index, estimator, cfg, generator)[0]


# The teacher-forced trainer (verl_trainer.py) marks the driver process it runs in: there the
# advantage function's output is a placeholder that the trainer's actor update replaces.
_TEACHER_FORCED_TRAINER: list[str] = []


def mark_teacher_forced_trainer(name: str) -> None:
    """Called by the teacher-forced trainer: this process's advantages are computed by `name`."""
    if name not in _TEACHER_FORCED_TRAINER:
        _TEACHER_FORCED_TRAINER.append(name)


def _outcome_advantage(
    estimator: str,
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: Sequence[Any] | np.ndarray | None,
    config: Any,
) -> tuple[Tensor, Tensor]:
    if index is None:
        raise ValueError(f"{estimator} needs verl's `uid` index to group responses by prompt")
    cfg = read_config(config)
    if cfg.weight == "teacher_forced":
        if not _TEACHER_FORCED_TRAINER:
            raise ValueError(
                "algorithm.tsallis_weight=teacher_forced needs the teacher-forced trainer (w comes "
                "from the actor, not the reward): launch `python -m "
                "tsallis_rl.integrations.verl_trainer ... trainer.use_v1=False` (docs/verl.md)"
            )
        zeros = torch.zeros_like(token_level_rewards)  # replaced in the trainer's actor update
        return zeros, zeros
    log_w = scores_to_log_weights(token_level_rewards.sum(dim=-1), cfg.weight)
    adv = sequence_advantages(log_w, index, estimator, cfg, _generator(cfg.seed))
    mask = response_mask.to(token_level_rewards.dtype)
    scores = adv.to(device=mask.device, dtype=mask.dtype)[:, None] * mask
    return scores, scores


def compute_garl_outcome_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """GARL (Algorithm 1) advantages for verl, with w = sequence score in [0, 1].

    token_level_rewards, response_mask: [bs, response_length]; index: [bs] prompt uids; config:
    the `algorithm` node (tsallis_* keys). Returns (advantages, returns), both [bs, response_length]:
    the row's advantage M c_m broadcast over its response tokens.
    """
    return _outcome_advantage("garl", token_level_rewards, response_mask, index, config)


def compute_paft_outcome_advantage(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """PAFT (Algorithm 2) advantages for verl: importance-resampled, attenuated fine-tuning weights.

    Same shapes as `compute_garl_outcome_advantage`; every advantage is >= 0 (rows never resampled
    get 0), and per group they sum to M w_bar**(1-q) / M**q.
    """
    return _outcome_advantage("paft", token_level_rewards, response_mask, index, config)


# --------------------------------------------------------------------------------------------------
# Reward function for data written by `tsallis-rl export verl`


@functools.lru_cache(maxsize=32)
def _task(name: str) -> Any:
    return get_task(name)


def _example(ground_truth: str, extra_info: Mapping[str, Any]) -> Any:
    raw = extra_info.get("example")
    if raw:
        d = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return Example(**d)
    return Example(id=str(extra_info.get("id", "")), question="", answer=str(ground_truth))


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Mapping[str, Any] | None = None,
    match: str = "exact",
    **kwargs: Any,
) -> dict[str, float | str]:
    """verl reward function: this project's matching of the completion's answer against y*.

    The task is `extra_info["task"]` (written by the export; else `data_source`), the gold example
    is rebuilt from `extra_info["example"]` (else from `ground_truth` alone), the answer is the text
    after the last `</think>`. Returns {"score", "exact_match", "substring_match"}, each 0.0 or 1.0,
    and "pred", the task's normalised answer (the key this project's m@k votes on), so that verl's
    validation computes maj@N. score is exact match (the paper's training reward) or, with
    match="substring" (`+reward.custom_reward_function.reward_kwargs.match=substring`), substring match.
    """
    if match not in ("exact", "substring"):
        raise ValueError(f"match must be 'exact' or 'substring', got {match!r}")
    info = extra_info or {}
    task = _task(str(info.get("task") or data_source))
    ex = _example(ground_truth, info)
    pred = task.extract_answer(solution_str)
    exact = float(bool(task.exact_match(pred, ex)))
    sub = float(bool(task.substring_match(pred, ex)))
    return {
        "score": exact if match == "exact" else sub,
        "exact_match": exact,
        "substring_match": sub,
        "pred": task.normalize(pred),
    }


# --------------------------------------------------------------------------------------------------
# Registration with verl's registries (on import, where verl is installed)

_REGISTERED = {"garl": compute_garl_outcome_advantage, "paft": compute_paft_outcome_advantage}


def register() -> None:
    """Register "garl" and "paft" with verl's `register_adv_est` (idempotent on re-import)."""
    from verl.trainer.ppo import core_algos

    for name, fn in _REGISTERED.items():
        old = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if old is not None and getattr(old, "__module__", None) == __name__:
            core_algos.ADV_ESTIMATOR_REGISTRY[name] = fn  # this module imported again (reload)
            continue
        core_algos.register_adv_est(name)(fn)


if importlib.util.find_spec("verl") is not None:
    register()
