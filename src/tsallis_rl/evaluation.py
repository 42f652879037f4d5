"""Evaluation as a plain function: sample k answers per example, score p@1 / p@k / m@k and log P-hat.

`evaluate(policy, task, examples, prompts, golds, decode, settings, k=..., seed=...)` is what the
trainer, `tsallis-rl eval` and every rank of a multi-process run call. Example i draws from its own
seed (`example_seed(seed, i)`), so its samples do not depend on which other examples share its batch
or its rank. With an `accelerator` of N processes, rank r evaluates examples r, r + N, ...; the
per-example results are gathered (`gather_object`) and every rank returns the same summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tsallis_rl.metrics import score_samples
from tsallis_rl.rollout import Rollout, SamplingSettings, sample, token_logps
from tsallis_rl.sequences import ANSWER


@dataclass
class EvalResult:
    summary: dict[str, float]
    records: list[dict[str, Any]]


def eval_seed(seed: int, step: int, split: str) -> int:
    """The evaluation seed of `split` at optimizer step `step` of a run seeded with `seed`.

    One formula for the trainer's validation/test evaluations and `tsallis-rl eval --run`, so that
    evaluating a run's best checkpoint again reproduces the run's own numbers.
    """
    return seed * 7919 + step + (0 if split == "val" else 1_000_000)


def example_seed(seed: int, index: int) -> int:
    """The sampling seed of example `index` of an evaluation seeded with `seed`."""
    return (seed * 1_000_003 + index) % (1 << 62)


@torch.no_grad()
def evaluate(
    policy: torch.nn.Module,
    task: Any,
    examples: Sequence[Any],
    prompts: Sequence[Sequence[int]],
    golds: Sequence[Sequence[int]],
    decode: Callable[[Rollout], str],
    settings: SamplingSettings,
    *,
    k: int,
    seed: int,
    micro_batch: int = 16,
    accelerator: Any = None,
    match: str = "default",
    share_prompt: bool = True,
) -> EvalResult:
    """p@1 / p@k / m@k over k sampled answers per example, plus the mean log P-hat of the gold answer.

    prompts[i] / golds[i]: the token ids of examples[i]'s prompt and teacher-forced answer (prefix +
    y* + end token). log P-hat = log mean_k P(y* | z_k) over the k sampled rationales, scored at
    the evaluation temperature (the distribution they were sampled from). `match`: a match mode of
    `metrics.MATCH_MODES` (its evaluation matcher decides; the summary records which).
    share_prompt: the k rollouts of an example score y* over one pass of its prompt (same values).
    """
    world, rank = 1, 0
    if accelerator is not None:
        world, rank = accelerator.num_processes, accelerator.process_index
    mine = list(range(rank, len(examples), world))
    results = _evaluate_share(
        policy, task, examples, prompts, golds, decode, settings, mine, k, seed, micro_batch,
        share_prompt,
    )  # fmt: skip
    if world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    results.sort(key=lambda r: r["index"])
    samples = [r["answers"] for r in results]
    summary, records = score_samples(task, examples, samples, match=match)
    log_p_hat = [r["log_p_hat"] for r in results]
    summary["log_p_hat"] = sum(log_p_hat) / max(len(log_p_hat), 1)
    if hasattr(task, "rationale_correct"):
        ok = [c for r in results for c in r["rationale_correct"]]
        summary["rationale_correct"] = sum(ok) / max(len(ok), 1)
    for rec, lp in zip(records, log_p_hat):
        rec["log_p_hat"] = lp
    return EvalResult(summary, records)


def _evaluate_share(
    policy, task, examples, prompts, golds, decode, settings, indices, k, seed, micro_batch,
    share_prompt=True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Sampled answers, rationale checks and log P-hat of the examples at `indices`."""
    if not indices:
        return []
    was_training = policy.training
    policy.eval()
    try:
        rows = [prompts[i] for i in indices for _ in range(k)]
        seeds = [example_seed(seed, i) for i in indices]
        rollouts = sample(policy, rows, settings, group_seeds=seeds)
        completions = [decode(r) for r in rollouts]
        # teacher-force y* after each sampled rationale (the samplers always close it)
        forced = [r.with_answer(golds[indices[j // k]]) for j, r in enumerate(rollouts)]
        logp, regions = token_logps(
            policy, forced, pad_id=settings.pad_id, micro_batch=micro_batch,
            share_prompt=share_prompt,
        )  # fmt: skip
    finally:
        policy.train(was_training)
    ans = (logp * (regions == ANSWER)).sum(-1).double().view(len(indices), k)
    log_p_hat = (torch.logsumexp(ans, dim=1) - math.log(k)).tolist()
    out = []
    for n, i in enumerate(indices):
        texts = completions[n * k : (n + 1) * k]
        rec: dict[str, Any] = {
            "index": i,
            "answers": [task.extract_answer(c) for c in texts],
            "log_p_hat": log_p_hat[n],
        }
        if hasattr(task, "rationale_correct"):
            rec["rationale_correct"] = [bool(task.rationale_correct(c, examples[i])) for c in texts]
        out.append(rec)
    return out
