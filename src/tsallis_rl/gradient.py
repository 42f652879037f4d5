"""Gradient plumbing: scored rollouts -> the inputs the registered estimator asks for -> .grad.

The estimator's `EstimatorSpec` decides what is built from one scoring pass over the rollouts:
  * teacher-forced: rationale_logp, answer_logp [B, M] (sums over the rationale / gold-answer tokens);
    with `needs_answer_tokens` also answer_token_logp, answer_mask [B, M, T] (the gold-answer tokens,
    left-aligned); with `needs_no_rationale` the caller passes no_rationale_token_logp / _mask [B, T]
    (scored once per example by the starting model, see `no_rationale_rows`);
  * sampled-reward: token_logp, token_mask [B, M, T] over the sampled rationale and answer tokens
    (forced tokens excluded) and the rewards [B, M].

`apply_gradient` then accumulates loss_scale * d(estimator loss)/d(params) into .grad, either from one
forward with grad (everything fits in a micro-batch) or in two passes: a no-grad scoring pass, autograd
through the estimator alone for d loss / d log-prob, and one grad forward per micro-batch that
back-propagates those fixed coefficients. Both give the estimator's gradient exactly (tested).
Every pass runs each group's prompt once (`share_prompt`, see `rollout.token_logps`), and the
micro-batches are `rollout.micro_batch_slices`: whole groups whenever they fit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tsallis_rl.estimators import EstimatorOutput, EstimatorSpec, coef_underflow
from tsallis_rl.rollout import Rollout, can_share_prompt, micro_batch_slices, token_logps
from tsallis_rl.sequences import ANSWER, RATIONALE


def sequence_logps(logp: Tensor, regions: Tensor, B: int, M: int) -> tuple[Tensor, Tensor]:
    """Per-rollout sums of rationale and answer token log-probs: [B*M, T] -> two [B, M]."""
    rat = (logp * (regions == RATIONALE)).sum(-1).view(B, M)
    ans = (logp * (regions == ANSWER)).sum(-1).view(B, M)
    return rat, ans


def answer_token_logps(logp: Tensor, regions: Tensor) -> tuple[Tensor, Tensor]:
    """The answer-region log-probs of each row moved to the left, in order: [N, T] -> ([N, A], [N, A]).

    A is the longest answer; the mask (logp's dtype) is 1 on answer tokens. Differentiable (a gather).
    """
    is_ans = regions == ANSWER
    order = torch.argsort((~is_ans).to(torch.int8), dim=1, stable=True)  # answer positions first
    width = max(int(is_ans.sum(dim=1).max().item()), 1)
    idx = order[:, :width]
    mask = is_ans.gather(1, idx)
    tok = logp.gather(1, idx) * mask
    return tok, mask.to(logp.dtype)


def differentiable_inputs(
    spec: EstimatorSpec, logp: Tensor, regions: Tensor, B: int, M: int
) -> list[Tensor]:
    """The estimator inputs that are functions of the log-probs, in `estimator_inputs`' order."""
    if spec.inputs == "sampled_reward":
        return [logp.view(B, M, -1)]
    out = list(sequence_logps(logp, regions, B, M))
    if spec.needs_answer_tokens:
        out.append(answer_token_logps(logp, regions)[0].view(B, M, -1))
    return out


@dataclass
class EstimatorInputs:
    """Everything one estimator call takes; the first `n_grad` of `tensors` carry the gradient."""

    args: list[Tensor]  # positional inputs
    kwargs: dict[str, Tensor] = field(default_factory=dict)
    grad_keys: tuple[
        str, ...
    ] = ()  # keyword inputs that carry the gradient (after the positional ones)
    n_grad_args: int = 0

    def differentiable(self) -> list[Tensor]:
        return self.args[: self.n_grad_args] + [self.kwargs[k] for k in self.grad_keys]

    def call(self, fn: Callable[..., Any], leaves: Sequence[Tensor] | None = None) -> Any:
        """fn(*args, **kwargs), with the differentiable inputs replaced by `leaves` when given."""
        args, kwargs = list(self.args), dict(self.kwargs)
        if leaves is not None:
            args[: self.n_grad_args] = leaves[: self.n_grad_args]
            kwargs.update(zip(self.grad_keys, leaves[self.n_grad_args :]))
        return fn(*args, **kwargs)


def estimator_inputs(
    spec: EstimatorSpec,
    logp: Tensor,
    regions: Tensor,
    rewards: Tensor | None,
    B: int,
    M: int,
    data: Mapping[str, Tensor] | None = None,
) -> EstimatorInputs:
    """The inputs the registered estimator consumes, built from scored log-probs [B*M, T].

    `data` holds per-example inputs that are not log-probs of these rollouts (the no-rationale
    baseline, the y* span `answer_target_mask` [B, T]); a spec that needs them and finds none raises.
    """
    if spec.inputs == "sampled_reward":
        if rewards is None:
            raise ValueError(f"estimator {spec.name!r} needs the rewards of the sampled answers")
        mask = (regions > 0).to(logp.dtype).view(B, M, -1)
        return EstimatorInputs([logp.view(B, M, -1), mask, rewards], n_grad_args=1)
    rat, ans = sequence_logps(logp, regions, B, M)
    inputs = EstimatorInputs([rat, ans], n_grad_args=2)
    if spec.needs_answer_tokens:
        tok, mask = answer_token_logps(logp, regions)
        inputs.kwargs.update(answer_token_logp=tok.view(B, M, -1), answer_mask=mask.view(B, M, -1))
        inputs.grad_keys = ("answer_token_logp",)
    if spec.needs_no_rationale:
        missing = [
            k for k in ("no_rationale_token_logp", "no_rationale_mask") if k not in (data or {})
        ]
        if missing:
            raise ValueError(f"estimator {spec.name!r} needs the no-rationale baseline: {missing}")
        inputs.kwargs.update({k: data[k] for k in ("no_rationale_token_logp", "no_rationale_mask")})
    if spec.needs_target_span:
        if "answer_target_mask" not in (data or {}):
            raise ValueError(f"estimator {spec.name!r} needs the y* span: ['answer_target_mask']")
        inputs.kwargs["answer_target_mask"] = data["answer_target_mask"]
    return inputs


def n_differentiable(spec: EstimatorSpec) -> int:
    """How many estimator inputs are log-probs of the rollouts (see `differentiable_inputs`)."""
    if spec.inputs == "sampled_reward":
        return 1
    return 3 if spec.needs_answer_tokens else 2


def _with_underflow(out: EstimatorOutput, dtype: torch.dtype) -> EstimatorOutput:
    if out.rationale_grad is not None or out.answer_grad is not None:
        out.stats["coef_underflow"] = coef_underflow(out, dtype)
    return out


def apply_gradient(
    model: torch.nn.Module,
    spec: EstimatorSpec,
    rollouts: Sequence[Rollout],
    B: int,
    M: int,
    call: Callable[..., Any],
    *,
    pad_id: int,
    micro_batch: int,
    rewards: Tensor | None = None,
    data: Mapping[str, Tensor] | None = None,
    backward: Callable[[Tensor], None] = lambda t: t.backward(),
    loss_scale: float = 1.0,
    skip_zero: bool = True,
    share_prompt: bool = True,
) -> Any:
    """Accumulate loss_scale * d(estimator loss)/d(params) into .grad; returns the estimator output.

    rollouts: B*M, grouped by prompt; call: the bound estimator (`EstimatorSpec.bind`); rewards [B, M]
    for sampled-reward estimators; data: the no-rationale baseline inputs when the spec needs them.
    share_prompt: every pass runs each group's prompt once per micro-batch (`rollout.token_logps`;
    the same gradient). The output's stats gain `coef_underflow` (see `estimators.coef_underflow`)
    for the working dtype.
    """
    kw = dict(pad_id=pad_id, share_prompt=share_prompt)
    slices = micro_batch_slices(rollouts, micro_batch, share_prompt and can_share_prompt(model))
    if len(slices) == 1:  # one forward with grad
        logp, regions = token_logps(model, rollouts, micro_batch=len(rollouts), **kw)
        out = estimator_inputs(spec, logp, regions, rewards, B, M, data).call(call)
        no_signal = out.advantages is not None and not out.advantages.any()
        if out.loss.requires_grad and not (skip_zero and no_signal):
            backward(out.loss * loss_scale)
        return _with_underflow(out, logp.dtype)
    with torch.no_grad():
        logp, regions = token_logps(model, rollouts, micro_batch=micro_batch, **kw)
    inputs = estimator_inputs(spec, logp, regions, rewards, B, M, data)
    leaves = [t.detach().requires_grad_(True) for t in inputs.differentiable()]
    out = inputs.call(call, leaves)
    grads = torch.autograd.grad(out.loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
    if skip_zero and all(not g.any() for g in grads):
        return _with_underflow(out, logp.dtype)  # e.g. GRPO with equal rewards: skip the passes
    flat = [g.reshape(B * M, *g.shape[2:]) for g in grads]  # one row per rollout
    for sl in slices:
        n = sl.stop - sl.start
        mb_logp, mb_regions = token_logps(model, rollouts[sl], micro_batch=n, **kw)
        mb_inputs = differentiable_inputs(spec, mb_logp, mb_regions, n, 1)
        surrogate = mb_logp.new_zeros(())
        for g, x in zip(flat, mb_inputs):
            coef = g[sl]
            if (
                x.dim() > 2
            ):  # token-level: beyond this micro-batch's width lies padding (zero grads)
                coef = coef[..., : x.shape[-1]]
            surrogate = surrogate + (coef.reshape(x.shape) * x).sum()
        backward(surrogate * loss_scale)
    return _with_underflow(out, logp.dtype)


# --------------------------------------------------------------------------------------------------
# The no-rationale baseline (RLPR): the gold answer right after the prompt, scored once per example


@torch.no_grad()
def no_rationale_rows(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    golds: Sequence[list[int]],
    think_close: list[int],
    *,
    pad_id: int,
    micro_batch: int,
    temperature: float = 1.0,
    share_prompt: bool = True,
) -> list[Tensor]:
    """Per-token log-probs of each gold answer after prompt + `</think>` (an empty rationale).

    Scored at the sampling `temperature`, like the rollouts it is compared with. Returns one 1-D
    float tensor per example (on the CPU). Call it with the starting weights. share_prompt: rows
    with the same prompt next to each other share its pass (one row per example: nothing to share).
    """
    rolls = [
        Rollout(list(p), [], list(think_close), list(g), temperature=temperature)
        for p, g in zip(prompts, golds)
    ]
    rows: list[Tensor] = []
    for s in range(0, len(rolls), micro_batch):
        logp, regions = token_logps(
            model, rolls[s : s + micro_batch], pad_id=pad_id, micro_batch=micro_batch,
            share_prompt=share_prompt,
        )  # fmt: skip
        tok, mask = answer_token_logps(logp, regions)
        rows += [t[m > 0].detach().cpu() for t, m in zip(tok, mask)]
    return rows


def target_mask_rows(masks: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad per-example y* masks (`PromptFormatter.gold_target_mask`) into [B, T] float."""
    width = max(max(len(m) for m in masks), 1)
    out = torch.zeros(len(masks), width)
    for i, m in enumerate(masks):
        out[i, : len(m)] = torch.tensor([float(v) for v in m])
    return out


def stack_rows(rows: Sequence[Tensor]) -> dict[str, Tensor]:
    """Right-pad 1-D rows into the estimator's no_rationale_token_logp / no_rationale_mask [B, T]."""
    width = max(max(len(r) for r in rows), 1)
    tok = torch.zeros(len(rows), width, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), width, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        tok[i, : len(r)], mask[i, : len(r)] = r, 1.0
    return {"no_rationale_token_logp": tok, "no_rationale_mask": mask}
