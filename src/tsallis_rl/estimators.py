"""Gradient estimators of J_Q as pure tensor functions, plus a name registry (METHOD.md section 4).

Every estimator returns an `EstimatorOutput` whose `.loss` is a scalar surrogate: its gradient is the
estimator, averaged over the B prompts. Teacher-forced estimators (GARL, PAFT, RB-RLOO) take

    rationale_logp: [B, M]  log p(z_m | x_b), summed over rationale tokens (carries gradient)
    answer_logp:    [B, M]  log p(y*_b | x_b, z_m), summed over gold-answer tokens incl. its end token

and use the weights w = exp(answer_logp), always handled in log space in float64, so log-weights of
-5000 or a weight that dominates the rest by 700 nats stay exact. The per-sample derivatives of the
loss are returned as `rationale_grad` / `answer_grad` (float64, detached) so that adapters onto other
engines (TRL, verl) reuse these coefficients instead of re-deriving them.

Usage:
    out = get_estimator("garl")(rationale_logp, answer_logp, q=0.75)
    out.loss.backward()
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# Output type and registry


@dataclass
class EstimatorOutput:
    """A scalar surrogate loss, diagnostics, and the per-sample derivatives it encodes."""

    loss: Tensor
    stats: dict[str, float]
    rationale_grad: Tensor | None = None  # [B, M] d loss / d rationale_logp
    answer_grad: Tensor | None = None  # [B, M] d loss / d answer_logp
    advantages: Tensor | None = None  # [B, M] for reward-based estimators (GRPO)
    extras: dict[str, Tensor] = field(default_factory=dict)


INPUT_KINDS = ("teacher_forced", "sampled_reward")

# Keyword inputs an estimator may declare (data built by the trainer, not options a user sets):
# per-token teacher-forced answer log-probs [B, M, T] + mask, and the per-example no-rationale
# baseline's per-token answer log-probs [B, T] + mask (computed once with the starting model).
TOKEN_INPUTS = ("answer_token_logp", "answer_mask")
# The y* span inside the teacher-forced answer (answer prefix and end token excluded), [B, T] per
# example, left-aligned like answer_mask (`prompts.PromptFormatter.gold_target_mask`).
TARGET_INPUTS = ("answer_target_mask",)
NO_RATIONALE_INPUTS = ("no_rationale_token_logp", "no_rationale_mask")
_POSITIONAL = {
    "teacher_forced": ("rationale_logp", "answer_logp", "q"),
    "sampled_reward": ("token_logp", "token_mask", "rewards"),
}


@dataclass(frozen=True)
class EstimatorSpec:
    """What the trainer and the adapters need to know about an estimator, so nobody names it.

    inputs = "teacher_forced": fn(rationale_logp [B, M], answer_logp [B, M], q, **options) on rollouts
      with the gold answer teacher-forced after each rationale; with `needs_answer_tokens` also
      answer_token_logp / answer_mask [B, M, T]; with `needs_no_rationale` also
      no_rationale_token_logp / no_rationale_mask [B, T] (the gold answer with no rationale, scored
      once per example by the starting model); with `needs_target_span` also answer_target_mask
      [B, T] (1 on the y* tokens of the teacher-forced answer: no answer prefix, no end token).
    inputs = "sampled_reward": fn(token_logp [B, M, T], token_mask [B, M, T], rewards [B, M], **options)
      on rollouts whose answer was sampled (needs an answer budget) and scored by the task's reward.
    min_rollouts: the M it needs per prompt (2 for leave-one-out / group baselines); with a `baseline`
      option set to "none" it needs 1 (see `required_rollouts`).
    options: the keyword options its signature takes (bound from the config by name).
    """

    name: str
    fn: Callable[..., EstimatorOutput]
    inputs: str
    uses_q: bool
    description: str
    min_rollouts: int = 1
    needs_answer_tokens: bool = False
    needs_no_rationale: bool = False
    options: tuple[str, ...] = ()
    needs_target_span: bool = False

    @property
    def needs_sampled_rewards(self) -> bool:
        """True when it trains on the task's rewards of sampled answers (so rollouts sample their
        answer, within the answer budget) instead of on the teacher-forced gold answer."""
        return self.inputs == "sampled_reward"

    @property
    def sequence_only(self) -> bool:
        """True for teacher-forced estimators that need only the [B, M] sums (what TRL provides)."""
        return self.inputs == "teacher_forced" and not (
            self.needs_answer_tokens or self.needs_no_rationale
        )

    def required_rollouts(self, options: Mapping[str, Any] | None = None) -> int:
        """M this estimator needs with these options (a `baseline` of "none" drops the LOO need)."""
        opts = options or {}
        if "baseline" in self.options and opts.get("baseline", "rloo") == "none":
            return 1
        return self.min_rollouts

    def bind(self, q: float, options: Mapping[str, Any]) -> Callable[..., EstimatorOutput]:
        """`fn` with q (when it uses one) and every option its signature takes bound; None = default."""
        opts = {k: v for k, v in options.items() if k in self.options and v is not None}
        if self.inputs == "teacher_forced" and self.uses_q:
            return functools.partial(self.fn, q=float(q), **opts)
        return functools.partial(self.fn, **opts)


_REGISTRY: dict[str, EstimatorSpec] = {}


def _signature_options(fn: Callable[..., Any], inputs: str) -> tuple[str, ...]:
    skip = (
        set(_POSITIONAL[inputs]) | set(TOKEN_INPUTS) | set(NO_RATIONALE_INPUTS) | set(TARGET_INPUTS)
    )
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.name not in skip and p.kind is p.KEYWORD_ONLY)


def register_estimator(
    name: str,
    *,
    inputs: str = "teacher_forced",
    uses_q: bool = True,
    description: str = "",
    min_rollouts: int = 1,
    needs_answer_tokens: bool = False,
    needs_no_rationale: bool = False,
    needs_target_span: bool = False,
    override: bool = False,
) -> Callable[[Callable[..., EstimatorOutput]], Callable[..., EstimatorOutput]]:
    """Decorator: register `fn` under `name` (lower-case). A taken name raises unless override=True."""
    if inputs not in INPUT_KINDS:
        raise ValueError(f"inputs must be 'teacher_forced' or 'sampled_reward', got {inputs!r}")
    key = name.lower()
    if key in _REGISTRY and not override:
        raise ValueError(
            f"estimator {key!r} is already registered; pass override=True to replace it"
        )

    def deco(fn: Callable[..., EstimatorOutput]) -> Callable[..., EstimatorOutput]:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[key] = EstimatorSpec(
            key, fn, inputs, uses_q, doc, min_rollouts, needs_answer_tokens, needs_no_rationale,
            _signature_options(fn, inputs), needs_target_span,
        )  # fmt: skip
        return fn

    return deco


def get_estimator_spec(name: str) -> EstimatorSpec:
    """The registered spec for `name`; unknown names raise with the list of known ones."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def get_estimator(name: str) -> Callable[..., EstimatorOutput]:
    """The estimator function registered under `name`."""
    return get_estimator_spec(name).fn


def list_estimators() -> list[str]:
    """Registered estimator names, sorted."""
    return sorted(_REGISTRY)


def coef_underflow(out: EstimatorOutput, dtype: torch.dtype) -> float:
    """Fraction of the non-zero float64 per-sample coefficients that round to 0 in `dtype`.

    The surrogate multiplies `rationale_grad` / `answer_grad` into log-probs of the working dtype
    (float32 here, fp16/bf16 elsewhere); a coefficient below that dtype's smallest subnormal
    (about 1.4e-45 in float32) is lost there. 0.0 when the output carries no such coefficients.
    """
    grads = [g for g in (out.rationale_grad, out.answer_grad) if g is not None]
    if not grads:
        return 0.0
    g = torch.cat([x.reshape(-1) for x in grads])
    nonzero = g != 0
    if not nonzero.any():
        return 0.0
    lost = nonzero & (g.to(dtype) == 0)
    return (lost.sum() / nonzero.sum()).item()


# --------------------------------------------------------------------------------------------------
# Validation (the boundary of the math: clear ValueErrors naming the argument)


def _check_q(q: float) -> float:
    try:
        q = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"q must be a number in [0, 1], got {q!r}") from None
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q must lie in [0, 1], got {q}")
    return q


def _check_pair(rationale_logp: Tensor, answer_logp: Tensor) -> None:
    for name, t in (("rationale_logp", rationale_logp), ("answer_logp", answer_logp)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must have shape [B, M], got {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f"{name} must have B >= 1 and M >= 1, got {tuple(t.shape)}")
    if rationale_logp.shape != answer_logp.shape:
        raise ValueError(
            f"shape mismatch: rationale_logp {tuple(rationale_logp.shape)} "
            f"vs answer_logp {tuple(answer_logp.shape)}"
        )
    r, a = rationale_logp.detach(), answer_logp.detach()
    if not torch.isfinite(r).all():
        raise ValueError("rationale_logp has NaN or infinite entries")
    if torch.isnan(a).any():
        raise ValueError("answer_logp has NaN entries")
    if (a == math.inf).any():
        raise ValueError("answer_logp has +inf entries (a log-probability is at most 0)")


# --------------------------------------------------------------------------------------------------
# Log-space weight statistics


@dataclass
class WeightStats:
    """Per-group summaries of log-weights, all float64 [B, ...].

    Every log-mean is also kept relative to the group's largest log-weight (`log_w_max`), so that
    ratios such as w / w_bar**q are formed from O(1) numbers even when log w is -1e8: the absolute
    rounding of log_w_bar itself (about 1e-16 * |log_w_bar|) would otherwise become a relative error.
    """

    log_w: Tensor  # [B, M]
    log_w_bar: Tensor  # [B] log of the mean weight (-inf for an all-zero group)
    log_w_loo: Tensor  # [B, M] log of the leave-one-out mean (-inf where all others are zero)
    zero_group: Tensor  # [B] bool, every weight exactly zero
    log_w_max: Tensor  # [B] largest log-weight (0 for an all-zero group)
    rel_log_w: Tensor  # [B, M] log_w - log_w_max
    rel_log_w_bar: Tensor  # [B] log_w_bar - log_w_max
    rel_log_w_loo: Tensor  # [B, M] log_w_loo - log_w_max


def _logsumexp_excluding_each(log_w: Tensor) -> Tensor:
    """log sum_{j != m} exp(log_w[b, j]) for every m, from prefix and suffix log-cum-sums: [B, M].

    Never forms M*w_bar - w_m, which cancels catastrophically when w_m dominates.
    """
    B, M = log_w.shape
    neg_inf = torch.full((B, 1), -math.inf, dtype=log_w.dtype, device=log_w.device)
    prefix = torch.logcumsumexp(log_w, dim=1)
    suffix = torch.logcumsumexp(log_w.flip(1), dim=1).flip(1)
    before = torch.cat([neg_inf, prefix[:, :-1]], dim=1)
    after = torch.cat([suffix[:, 1:], neg_inf], dim=1)
    return _logaddexp(before, after)


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """logaddexp that returns -inf (not NaN) when both sides are -inf."""
    m = torch.maximum(a, b)
    safe_m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    out = safe_m + torch.log(torch.exp(a - safe_m) + torch.exp(b - safe_m))
    return torch.where(m == -math.inf, m, out)


def weight_stats(answer_logp: Tensor) -> WeightStats:
    """Log-space mean and leave-one-out means of w = exp(answer_logp) per group (float64)."""
    log_w = answer_logp.detach().to(torch.float64)
    M = log_w.shape[1]
    top = log_w.amax(dim=1)
    zero_group = top == -math.inf
    top = torch.where(zero_group, torch.zeros_like(top), top)
    rel = log_w - top[:, None]  # exact (Sterbenz) for the weights that matter
    rel_bar = torch.logsumexp(rel, dim=1) - math.log(M)
    if M > 1:
        rel_loo = _logsumexp_excluding_each(rel) - math.log(M - 1)
    else:
        rel_loo = torch.full_like(rel, -math.inf)
    return WeightStats(
        log_w=log_w,
        log_w_bar=top + rel_bar,
        log_w_loo=top[:, None] + rel_loo,
        zero_group=zero_group,
        log_w_max=top,
        rel_log_w=rel,
        rel_log_w_bar=rel_bar,
        rel_log_w_loo=rel_loo,
    )


def _pow_from_log(log_x: Tensor, power: float) -> Tensor:
    """exp(power * log_x) with 0**0 = 1 and 0**p = 0 for p > 0 (no 0 * -inf = NaN)."""
    if power == 0.0:
        return torch.ones_like(log_x)
    return torch.exp(power * log_x)


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish ESS (sum w)^2 / sum w^2 per group from log-weights [B, M] -> [B]; 0 for all-zero groups."""
    top = log_w.amax(dim=1, keepdim=True)
    rel = log_w - torch.where(top == -math.inf, torch.zeros_like(top), top)
    ess = torch.exp(2 * torch.logsumexp(rel, dim=1) - torch.logsumexp(2 * rel, dim=1))
    return torch.nan_to_num(ess, nan=0.0)


_LOG_TINY = math.log(torch.finfo(torch.float64).tiny)  # about -708: exp() below this underflows


def _weight_summary(ws: WeightStats) -> dict[str, float]:
    finite = ~ws.zero_group
    mean_log = ws.log_w_bar[finite].mean().item() if finite.any() else -math.inf
    return {
        "mean_log_w_bar": mean_log,
        "ess": effective_sample_size(ws.log_w).mean().item(),
        "frac_zero_groups": ws.zero_group.double().mean().item(),
        "frac_underflow_groups": (ws.log_w.amax(dim=1) < _LOG_TINY).double().mean().item(),
    }


# --------------------------------------------------------------------------------------------------
# GARL (Algorithm 1 and the plug-in form, Eq. 9)


def garl_coefficients(
    answer_logp: Tensor, q: float, *, baseline: str = "rloo", normalize: bool = True
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Per-sample GARL coefficients from log-weights, before the 1/B average.

    answer_logp: [B, M] log w. Returns (c, r, stats), each of c and r [B, M] float64 and already
    divided by M**(1+q) (M when normalize=False):
      c: rationale coefficient, w/w_bar**q - w_loo**(1-q) (rloo) or w/w_bar**q (none)
      r: pathwise coefficient, w/w_bar**q
    The loss gradient is d/d rationale_logp = -c / B and d/d answer_logp = -r / B.
    All-zero groups get c = r = 0 exactly.
    """
    q = _check_q(q)
    if baseline not in ("rloo", "none"):
        raise ValueError(f"baseline must be 'rloo' or 'none', got {baseline!r}")
    M = answer_logp.shape[1]
    if baseline == "rloo" and M < 2:
        raise ValueError(f"the RLOO baseline needs M >= 2 samples per prompt, got M = {M}")
    ws = weight_stats(answer_logp)
    zero = ws.zero_group[:, None]
    # log(w / w_bar**q) = (1-q) log w_max + rel_log_w - q rel_log_w_bar: O(1) terms, no cancellation of
    # two large logs. Exactly 0 where w = 0; all-zero groups have log_w_max = 0 and rel = -inf.
    top = ws.log_w_max[:, None]
    ratio = torch.exp((1.0 - q) * top + ws.rel_log_w - q * ws.rel_log_w_bar[:, None])
    ratio = torch.where(zero, torch.zeros_like(ratio), ratio)
    if baseline == "rloo":
        # (w_loo)**(1-q), with 0**0 = 1 at q = 1 (then c = w/w_bar - 1, the self-normalised IWAE weight)
        loo_pow = _pow_from_log(top + ws.rel_log_w_loo, 1.0 - q)
        c = torch.where(zero, torch.zeros_like(ratio), ratio - loo_pow)
    else:
        c = ratio
    scale = float(M) ** (1.0 + q) if normalize else float(M)
    stats = _weight_summary(ws)
    norm_q = float(M) ** q if normalize else 1.0
    stats["max_adv"] = (c / norm_q).max().item()  # max c / M**q: the paper's Fig. 3 signal
    stats["mean_abs_adv"] = (c / norm_q).abs().mean().item()
    return c / scale, ratio / scale, stats


@register_estimator(
    "garl", min_rollouts=2, description="Gradient-amplified RL (Algorithm 1), commitment q"
)
def garl_loss(
    rationale_logp: Tensor,
    answer_logp: Tensor,
    q: float,
    *,
    baseline: str = "rloo",
    pathwise: bool = True,
    normalize: bool = True,
) -> EstimatorOutput:
    """GARL: -(1/M**q)(1/M) sum_m [c_m grad log p(z_m|x) + grad w_m / w_bar**q], averaged over B.

    rationale_logp, answer_logp: [B, M]. baseline "rloo" (Algorithm 1) or "none" (plug-in Eq. 9);
    pathwise=False drops the answer-likelihood term; normalize=False drops the 1/M**q factor.
    q = 0 is RB-RLOO; q = 1 the self-normalised IWAE gradient.
    """
    _check_pair(rationale_logp, answer_logp)
    c, r, stats = garl_coefficients(answer_logp, q, baseline=baseline, normalize=normalize)
    B = rationale_logp.shape[0]
    grad_z, grad_y = -c / B, (-r / B if pathwise else torch.zeros_like(r))
    loss = _linear_surrogate(rationale_logp, grad_z) + _linear_surrogate(answer_logp, grad_y)
    return EstimatorOutput(loss, stats, rationale_grad=grad_z, answer_grad=grad_y)


@register_estimator(
    "rb_rloo",
    uses_q=False,
    min_rollouts=2,
    description="RLOO with the Rao-Blackwellised reward w (GARL at q = 0)",
)
def rb_rloo_loss(
    rationale_logp: Tensor, answer_logp: Tensor, q: float = 0.0, *, pathwise: bool = True
) -> EstimatorOutput:
    """RB-RLOO (VeriFree-style): GARL at q = 0; q is accepted only as 0 for a uniform call signature."""
    if float(q) != 0.0:
        raise ValueError(f"rb_rloo is GARL at q = 0; got q = {q} (use 'garl' for other q)")
    return garl_loss(rationale_logp, answer_logp, 0.0, baseline="rloo", pathwise=pathwise)


def _linear_surrogate(x: Tensor, grad: Tensor) -> Tensor:
    """A scalar whose gradient w.r.t. x is `grad` (a constant), and whose value is sum(grad * x).

    Entries with grad == 0 contribute exactly 0 to the value, so x = -inf there (a zero weight) gives
    no 0 * -inf = NaN; their gradient is 0 either way.
    """
    g = grad.to(device=x.device, dtype=x.dtype)
    return torch.where(g == 0, torch.zeros_like(x), g * x).sum()


# --------------------------------------------------------------------------------------------------
# PAFT (Algorithm 2)


def paft_counts(
    answer_logp: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Importance-resampling counts n[b, m]: K draws with replacement from Categorical(w_b / sum w_b).

    answer_logp: [B, M] -> counts [B, M] float64 summing to K per group (0 for all-zero groups).
    """
    K = int(num_samples)
    ws = weight_stats(answer_logp)
    B, M = ws.log_w.shape
    probs = torch.softmax(torch.where(ws.zero_group[:, None], 0.0, ws.log_w), dim=1)
    gen_device = generator.device if generator is not None else probs.device
    draws = torch.multinomial(probs.to(gen_device), K, replacement=True, generator=generator)
    counts = torch.zeros(B, M, dtype=torch.float64, device=gen_device)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    counts = counts.to(probs.device)
    return torch.where(ws.zero_group[:, None], torch.zeros_like(counts), counts)


@register_estimator("paft", description="Posterior-attenuated fine-tuning (Algorithm 2)")
def paft_loss(
    rationale_logp: Tensor,
    answer_logp: Tensor,
    q: float,
    *,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
    normalize: bool = True,
) -> EstimatorOutput:
    """PAFT: -(w_bar**(1-q) / (M**q K)) sum_k grad log p(z_rk, y* | x), averaged over B.

    rationale_logp, answer_logp: [B, M]. K = num_samples (default M) resampled indices per prompt;
    both derivatives equal -n[b, m] w_bar_b**(1-q) / (B M**q K) (B K when normalize=False).
    """
    _check_pair(rationale_logp, answer_logp)
    q = _check_q(q)
    B, M = rationale_logp.shape
    K = M if num_samples is None else num_samples
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"num_samples (K) must be an integer >= 1, got {num_samples!r}")
    counts = paft_counts(answer_logp, K, generator)
    ws = weight_stats(answer_logp)
    atten = torch.where(ws.zero_group, 0.0, _pow_from_log(ws.log_w_bar, 1.0 - q))  # [B]
    denom = B * (float(M) ** q if normalize else 1.0) * K
    grad = -counts * atten[:, None] / denom
    loss = _linear_surrogate(rationale_logp, grad) + _linear_surrogate(answer_logp, grad)
    stats = _weight_summary(ws)
    stats["mean_attenuation"] = atten.mean().item()
    stats["distinct_resampled"] = (counts > 0).double().sum(dim=1).mean().item()
    norm_q = float(M) ** q if normalize else 1.0
    stats["max_adv"] = (counts * atten[:, None] * M / (norm_q * K)).max().item()
    return EstimatorOutput(
        loss, stats, rationale_grad=grad, answer_grad=grad, extras={"counts": counts}
    )


# --------------------------------------------------------------------------------------------------
# GRPO (the baseline: binary reward on a sampled answer, group-normalised advantage, PPO clip)


def group_advantages(
    rewards: Tensor, *, scale_rewards: bool = True, eps: float = 1e-4, std_floor: float = 0.0
) -> Tensor:
    """GRPO advantages (r - mean) / (std + eps) per group (or r - mean): [B, M] -> [B, M] float64.

    std is the unbiased sample std, as in TRL and DeepSeekMath; a group of equal rewards gets 0.
    std_floor > 0: groups whose std is below it get 0 (RLPR's `std_filter`, 1e-6 beside eps 1e-6).
    """
    r = rewards.detach().to(torch.float64)
    adv = r - r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(r[:, :1])
    if scale_rewards:
        adv = adv / (std + eps)
    if std_floor > 0:
        adv = torch.where(std < std_floor, torch.zeros_like(adv), adv)
    return adv


@register_estimator(
    "grpo",
    inputs="sampled_reward",
    uses_q=False,
    min_rollouts=2,
    description="GRPO baseline (exact-match reward)",
)
def grpo_loss(
    token_logp: Tensor,
    token_mask: Tensor,
    rewards: Tensor,
    *,
    old_token_logp: Tensor | None = None,
    clip_eps: float = 0.2,
    scale_rewards: bool = True,
) -> EstimatorOutput:
    """GRPO: PPO-clipped ratio times group advantage, token mean per sequence, mean over sequences.

    token_logp: [B, M, T] log-probs of the sampled completion tokens; token_mask: [B, M, T] (1 = token);
    rewards: [B, M]; old_token_logp: [B, M, T] behaviour log-probs (default: token_logp, ratio 1).
    """
    if token_logp.dim() != 3:
        raise ValueError(f"token_logp must have shape [B, M, T], got {tuple(token_logp.shape)}")
    if token_mask.shape != token_logp.shape:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} != token_logp {tuple(token_logp.shape)}"
        )
    if rewards.shape != token_logp.shape[:2]:
        raise ValueError(
            f"rewards must have shape [B, M] = {tuple(token_logp.shape[:2])}, got {tuple(rewards.shape)}"
        )
    if old_token_logp is not None and old_token_logp.shape != token_logp.shape:
        raise ValueError("old_token_logp must have the same shape as token_logp")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if torch.isnan(rewards).any():
        raise ValueError("rewards has NaN entries")
    mask = token_mask.to(token_logp.dtype)
    on = mask != 0
    for name, t in (("token_logp", token_logp), ("old_token_logp", old_token_logp)):
        if t is not None and torch.isnan(t.detach()[on]).any():
            raise ValueError(f"{name} has NaN entries at unmasked tokens")
    adv64 = group_advantages(rewards, scale_rewards=scale_rewards)
    adv = adv64.to(token_logp.dtype)[:, :, None]
    old = token_logp.detach() if old_token_logp is None else old_token_logp.detach()
    # padded positions may hold anything (-inf included): keep them out of every product
    ratio = torch.exp(torch.where(on, token_logp - old, torch.zeros_like(token_logp)))
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    per_token = torch.where(on, per_token * mask, torch.zeros_like(per_token))
    per_seq = per_token.sum(-1) / mask.sum(-1).clamp(min=1.0)
    loss = per_seq.mean()
    r = rewards.detach().double()
    zero_std = (r.max(dim=1).values == r.min(dim=1).values).double().mean().item()
    is_clipped = ((ratio - clipped).abs() > 0).to(mask.dtype) * mask
    stats = {
        "reward": r.mean().item(),
        "frac_reward_zero_std": zero_std,
        "clip_ratio": (is_clipped.sum() / mask.sum().clamp(min=1.0)).item(),
        "max_adv": adv64.max().item(),
    }
    return EstimatorOutput(loss, stats, advantages=adv64)


# --------------------------------------------------------------------------------------------------
# Peer objectives that also score a rationale by the gold answer (PEERS.md). Each is computed from
# its own formula (not by calling GARL), so the tests that relate them to J_Q compare two codes.


def _check_no_q(name: str, q: float | None, allowed: float | None = None) -> None:
    """These estimators fix their place on the continuum; q is accepted only as that value (or None)."""
    if q is None or (allowed is not None and float(q) == allowed):
        return
    fixed = "no q" if allowed is None else f"q = {allowed:g}"
    raise ValueError(f"{name} takes {fixed}; got q = {q} (use 'garl' to choose q)")


def _check_rollouts(name: str, M: int, need: int) -> None:
    if M < need:
        raise ValueError(f"{name} needs M >= {need} samples per prompt, got M = {M}")


def _loo_mean(x: Tensor) -> Tensor:
    """mean_{j != m} x[b, j] for every m as a masked sum (no w_sum - w_m cancellation): [B, M] -> [B, M].

    -inf entries give -inf for every m but their own (sums of logs of zero weights).
    """
    M = x.shape[1]
    off = ~torch.eye(M, dtype=torch.bool, device=x.device)
    return torch.where(off, x[:, None, :], torch.zeros((), dtype=x.dtype)).sum(-1) / (M - 1)


@register_estimator(
    "verifree", uses_q=False, min_rollouts=2, description="VeriFree: E_z[w], RLOO on w + pathwise"
)
def verifree_loss(
    rationale_logp: Tensor, answer_logp: Tensor, q: float | None = None
) -> EstimatorOutput:
    """VeriFree (Zhou et al. 2025, "Reinforcing General Reasoning without Verifiers", sail-sg/VeriFree).

    Maximises E_z[w], w = p(y*|x, z): -(1/(B M)) sum_m [(w_m - mean_{j!=m} w_j) grad log p(z_m|x)
    + w_m grad log p(y*|x, z_m)]. Relation to J_Q: the gradient of J_0 = E[P] estimated with an RLOO
    baseline on w plus the pathwise term, i.e. exactly GARL at q = 0 (RB-RLOO; tested to 1e-12).
    rationale_logp, answer_logp: [B, M]. Weights below exp(-745) are 0 in float64 and contribute 0.
    Differs from VeriFree: a budget-forced rationale (`</think>` forced) keeps its normal w here,
    where VeriFree gives a truncated response w = 0.
    """
    _check_pair(rationale_logp, answer_logp)
    _check_no_q("verifree", q, 0.0)
    B, M = rationale_logp.shape
    _check_rollouts("verifree", M, 2)
    w = torch.exp(answer_logp.detach().to(torch.float64))  # [B, M]
    c = w - _loo_mean(w)
    grad_z, grad_y = -c / (B * M), -w / (B * M)
    loss = _linear_surrogate(rationale_logp, grad_z) + _linear_surrogate(answer_logp, grad_y)
    stats = _weight_summary(weight_stats(answer_logp))
    stats["max_adv"] = c.max().item()
    stats["mean_abs_adv"] = c.abs().mean().item()
    return EstimatorOutput(loss, stats, rationale_grad=grad_z, answer_grad=grad_y)


@register_estimator(
    "loglik",
    uses_q=False,
    min_rollouts=2,
    description="E_z[log w] (LaTRO w/o KL, JEPO, log-prob reward)",
)
def loglik_loss(
    rationale_logp: Tensor,
    answer_logp: Tensor,
    q: float | None = None,
    *,
    baseline: str = "rloo",
    pathwise: bool = True,
) -> EstimatorOutput:
    """The evidence lower bound E_z[log w]: LaTRO without its KL term (Chen et al. 2024,
    SalesforceAIResearch/LaTRO), JEPO's single-sample objective (Tang et al. 2025) and the
    log-probability reward (Kwiatkowski et al. 2026, arXiv 2602.03979).

    Gradient: -(1/(B M)) sum_m [(log w_m - mean_{j!=m} log w_j) grad log p(z_m|x) + grad log w_m]
    (baseline "none": log w_m itself as the signal). Relation to J_Q: E[log w] <= log E[w] = -l_1
    (Jensen), so it is a lower bound of the q = 1 objective whose gap is the spread of log w over z;
    unlike GARL q = 1 every rationale's answer gets the same pathwise weight 1/M, not w_m / sum w.
    rationale_logp, answer_logp: [B, M]; answer_logp must be finite (log 0 makes the bound -inf).
    """
    _check_pair(rationale_logp, answer_logp)
    _check_no_q("loglik", q)
    if baseline not in ("rloo", "none"):
        raise ValueError(f"baseline must be 'rloo' or 'none', got {baseline!r}")
    B, M = rationale_logp.shape
    if baseline == "rloo":
        _check_rollouts("loglik with the RLOO baseline", M, 2)
    log_w = answer_logp.detach().to(torch.float64)
    if not torch.isfinite(log_w).all():
        raise ValueError("loglik needs finite answer_logp: log w = -inf makes E[log w] = -inf")
    c = log_w - _loo_mean(log_w) if baseline == "rloo" else log_w
    grad_z = -c / (B * M)
    grad_y = torch.full_like(c, -1.0 / (B * M)) if pathwise else torch.zeros_like(c)
    loss = _linear_surrogate(rationale_logp, grad_z) + _linear_surrogate(answer_logp, grad_y)
    stats = _weight_summary(weight_stats(answer_logp))
    stats["mean_log_w"] = log_w.mean().item()
    stats["max_adv"] = c.max().item()
    stats["mean_abs_adv"] = c.abs().mean().item()
    return EstimatorOutput(loss, stats, rationale_grad=grad_z, answer_grad=grad_y)


@register_estimator(
    "iwae",
    uses_q=False,
    min_rollouts=2,
    description="log mean_m w_m (IWAE / JEPO multi-sample), VIMCO",
)
def iwae_loss(
    rationale_logp: Tensor,
    answer_logp: Tensor,
    q: float | None = None,
    *,
    pathwise: bool = True,
    normalize: bool = True,
) -> EstimatorOutput:
    """The multi-sample bound L = log (1/M) sum_m w_m (IWAE, Burda et al. 2016; JEPO's multi-sample
    objective), with VIMCO's leave-one-out baseline (Mnih & Rezende 2016) on the rationale term.

    Unbiased gradient of E[L]: sum_m (L - L_-m) grad log p(z_m|x) + sum_m (w_m / sum_j w_j) grad log w_m,
    where L_-m = log (1/M)(sum_{j!=m} w_j + w_hat_-m) and w_hat_-m = exp(mean_{j!=m} log w_j) is the
    geometric mean of the others (independent of z_m, so the baseline keeps the expectation).
    normalize=True divides by M, as GARL's 1/M**q does at q = 1, so both share the same pathwise term;
    VIMCO's own estimator has no 1/M (normalize=False).
    Relation to J_Q and to GARL at q = 1: the pathwise terms are identical; the rationale signal differs:
    GARL q = 1 uses w_m / w_bar - 1 (self-normalised, biased O(1/M) for grad log P, no Jensen gap),
    iwae uses L - L_-m (unbiased for the bound, which is below log P by a Jensen gap that shrinks
    with M). A sample whose leave-one-out baseline is log 0 (every other w exactly 0) and an all-zero
    group get rationale signal 0. rationale_logp, answer_logp: [B, M].
    """
    _check_pair(rationale_logp, answer_logp)
    _check_no_q("iwae", q)
    B, M = rationale_logp.shape
    _check_rollouts("iwae (VIMCO baseline)", M, 2)
    ws = weight_stats(answer_logp)
    rel = ws.rel_log_w  # log w - max log w: O(1) for the weights that matter
    bound = ws.rel_log_w_bar[:, None]  # L - max log w, [B, 1]
    others = _logsumexp_excluding_each(rel)  # log sum_{j!=m} w_j (relative)
    loo = _logaddexp(others, _loo_mean(rel)) - math.log(M)  # L_-m (relative)
    signal = bound - loo
    signal = torch.where(torch.isfinite(signal), signal, torch.zeros_like(signal))
    w_norm = torch.softmax(torch.where(ws.zero_group[:, None], 0.0, rel), dim=1)
    w_norm = torch.where(ws.zero_group[:, None], torch.zeros_like(w_norm), w_norm)
    scale = B * (M if normalize else 1)
    grad_z = -signal / scale
    grad_y = -w_norm / scale if pathwise else torch.zeros_like(w_norm)
    loss = _linear_surrogate(rationale_logp, grad_z) + _linear_surrogate(answer_logp, grad_y)
    stats = _weight_summary(ws)
    stats["max_adv"] = signal.max().item()
    stats["mean_abs_adv"] = signal.abs().mean().item()
    return EstimatorOutput(loss, stats, rationale_grad=grad_z, answer_grad=grad_y)


def _mean_token_prob(token_logp: Tensor, mask: Tensor) -> Tensor:
    """Mean over unmasked tokens of exp(token_logp), float64: [..., T] -> [...] (0 with no tokens)."""
    on = mask.detach() != 0
    lp = torch.where(on, token_logp.detach().to(torch.float64), -math.inf)
    return torch.exp(lp).sum(-1) / on.sum(-1).clamp(min=1)


def _fit_width(mask: Tensor, width: int) -> Tensor:
    """A [B, T] mask cut or zero-padded on the right to [B, width]."""
    if mask.shape[-1] >= width:
        return mask[..., :width]
    pad = torch.zeros(
        *mask.shape[:-1], width - mask.shape[-1], dtype=mask.dtype, device=mask.device
    )
    return torch.cat([mask, pad], dim=-1)


RLPR_EPS = 1e-6  # RLPR's advantage normalisation: (r - mean) / (std + 1e-6) (core_algos.py)
RLPR_STD_FILTER = 1e-6  # ... and groups whose reward std is below 1e-6 get advantage 0


@register_estimator(
    "rlpr",
    uses_q=False,
    min_rollouts=2,
    needs_answer_tokens=True,
    needs_no_rationale=True,
    needs_target_span=True,
    description="RLPR: mean token prob of y* minus no-rationale baseline, GRPO advantages",
)
def rlpr_loss(
    rationale_logp: Tensor,
    answer_logp: Tensor,
    q: float | None = None,
    *,
    answer_token_logp: Tensor,
    answer_mask: Tensor,
    answer_target_mask: Tensor,
    no_rationale_token_logp: Tensor,
    no_rationale_mask: Tensor,
    scale_rewards: bool = True,
    min_reward_std: float = 0.0,
) -> EstimatorOutput:
    """RLPR (Yu et al. 2025, "RLPR: Extrapolating RLVR to General Domains without Verifiers",
    OpenBMB/RLPR): reward r_m = mean_t p(y*_t | x, z_m, y*_<t) over the tokens of y* alone (not the
    answer prefix, not the end token: RLPR's `ground_truth_mask`) minus the same without a rationale
    (computed once per example with the starting model), clipped at 0 (its `threshold_0` shaping);
    group-normalised advantages A = (r - mean) / (std + 1e-6), 0 for groups whose reward std is
    below 1e-6 (RLPR's `compute_grpo_outcome_advantage`; scale_rewards=False: r - mean), on the
    rationale, no pathwise term.

    Loss: -(1/(B M)) sum_m A_m log p(z_m|x) (sequence sums; on-policy, so PPO's clip is inactive).
    min_reward_std: groups whose reward std is below it also get A = 0 (RLPR's adaptive std filter:
    the trainer passes beta x the EMA of past steps' mean reward std, `TrainConfig.rlpr_std_beta`).
    Relation to J_Q: a shaped, length-normalised q = 0 reward (a monotone proxy for w) with no
    pathwise term, so the answer's own likelihood is never trained directly.
    rationale_logp, answer_logp: [B, M]; answer_token_logp, answer_mask: [B, M, T] (per-token log-probs of
    the teacher-forced answer, left-aligned, 1 = token); answer_target_mask: [B, T''] 1 on the y*
    tokens of each example's teacher-forced answer in the same left-aligned order (its width is
    fitted to T); no_rationale_token_logp, no_rationale_mask: [B, T'] (the same answer tokens).
    """
    _check_pair(rationale_logp, answer_logp)
    _check_no_q("rlpr", q)
    B, M = rationale_logp.shape
    _check_rollouts("rlpr (group-normalised advantages)", M, 2)
    if answer_token_logp.dim() != 3 or answer_token_logp.shape[:2] != (B, M):
        raise ValueError(
            f"answer_token_logp must have shape [B, M, T] = [{B}, {M}, T], "
            f"got {tuple(answer_token_logp.shape)}"
        )
    if answer_mask.shape != answer_token_logp.shape:
        raise ValueError("answer_mask must have the shape of answer_token_logp")
    if no_rationale_token_logp.dim() != 2 or no_rationale_token_logp.shape[0] != B:
        raise ValueError(
            f"no_rationale_token_logp must have shape [B, T] with B = {B}, "
            f"got {tuple(no_rationale_token_logp.shape)}"
        )
    if no_rationale_mask.shape != no_rationale_token_logp.shape:
        raise ValueError("no_rationale_mask must have the shape of no_rationale_token_logp")
    if answer_target_mask.dim() != 2 or answer_target_mask.shape[0] != B:
        raise ValueError(
            f"answer_target_mask must have shape [B, T] with B = {B}, "
            f"got {tuple(answer_target_mask.shape)}"
        )
    target = answer_target_mask.detach().to(answer_mask.dtype)
    span = answer_mask * _fit_width(target, answer_mask.shape[-1])[:, None, :]
    base_span = no_rationale_mask * _fit_width(target, no_rationale_mask.shape[-1]).to(
        no_rationale_mask.dtype
    )
    prob = _mean_token_prob(answer_token_logp, span)  # [B, M]
    base = _mean_token_prob(no_rationale_token_logp, base_span)  # [B]
    reward = (prob - base[:, None]).clamp(min=0.0)
    adv = group_advantages(
        reward, scale_rewards=scale_rewards, eps=RLPR_EPS, std_floor=RLPR_STD_FILTER
    )
    std = reward.std(dim=1)  # [B]
    if min_reward_std > 0:
        adv = torch.where((std < min_reward_std)[:, None], torch.zeros_like(adv), adv)
    grad_z = -adv / (B * M)
    grad_y = torch.zeros_like(grad_z)
    loss = _linear_surrogate(rationale_logp, grad_z) + _linear_surrogate(answer_logp, grad_y)
    stats = _weight_summary(weight_stats(answer_logp))
    stats.update(
        reward=reward.mean().item(),
        mean_token_prob=prob.mean().item(),
        no_rationale_prob=base.mean().item(),
        reward_std=std.mean().item(),
        frac_reward_zero_std=(std == 0).double().mean().item(),
        frac_filtered=(~adv.ne(0).any(dim=1)).double().mean().item(),
        max_adv=adv.max().item(),
    )
    return EstimatorOutput(
        loss,
        stats,
        rationale_grad=grad_z,
        answer_grad=grad_y,
        advantages=adv,
        extras={"reward": reward, "reward_std": std},
    )


@register_estimator(
    "rft",
    inputs="sampled_reward",
    uses_q=False,
    description="Rejection-sampling fine-tuning / STaR: ML on accepted sampled (z, y)",
)
def rft_loss(
    token_logp: Tensor, token_mask: Tensor, rewards: Tensor, *, group_mean: bool = True
) -> EstimatorOutput:
    """Rejection-sampling fine-tuning: STaR without rationalisation (Zelikman et al. 2022), RAFT
    (Dong et al. 2023), ReST-EM (Singh et al. 2023): maximum likelihood of the sampled (z, y_hat)
    whose answer the reward accepts (reward > 0), zero gradient when none of a group is accepted.

    Loss: -(1/B) sum_b sum_m a_bm / n_b * sum_t log p(token_t) with a = 1[reward > 0] and n_b the
    number accepted in group b (group_mean=False: n_b = M). Relation to J_Q: EM with a binary weight,
    i.e. the q = 1 gradient of log P(accepted) with self-normalised binary weights (group_mean=True),
    or plain REINFORCE of E[accepted] without baseline, q = 0 (group_mean=False); the model's own
    answer is trained, the gold answer never is.
    token_logp, token_mask: [B, M, T] (sampled rationale and answer tokens; forced ones masked out);
    rewards: [B, M].
    """
    if token_logp.dim() != 3:
        raise ValueError(f"token_logp must have shape [B, M, T], got {tuple(token_logp.shape)}")
    if token_mask.shape != token_logp.shape:
        raise ValueError(
            f"token_mask shape {tuple(token_mask.shape)} != token_logp {tuple(token_logp.shape)}"
        )
    if rewards.shape != token_logp.shape[:2]:
        raise ValueError(
            f"rewards must have shape [B, M] = {tuple(token_logp.shape[:2])}, got {tuple(rewards.shape)}"
        )
    if torch.isnan(rewards).any():
        raise ValueError("rewards has NaN entries")
    B, M, _ = token_logp.shape
    accepted = (rewards.detach() > 0).to(torch.float64)  # [B, M]
    n = accepted.sum(dim=1, keepdim=True)
    weight = accepted / (n.clamp(min=1.0) if group_mean else float(M))
    on = (token_mask.detach() != 0).to(torch.float64)
    coef = -(weight / B)[:, :, None] * on  # [B, M, T] d loss / d token_logp
    loss = _linear_surrogate(token_logp, coef)
    stats = {
        "reward": rewards.detach().double().mean().item(),
        "frac_groups_none_accepted": (n == 0).double().mean().item(),
        "accepted_per_group": n.mean().item(),
        "max_adv": weight.max().item(),
    }
    return EstimatorOutput(loss, stats, advantages=weight, extras={"token_grad": coef})
