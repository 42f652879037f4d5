"""TRL integration: TsallisGRPOTrainer against TRL's GRPOTrainer and the core estimators (CPU, tiny model).

Run: OMP_NUM_THREADS=1 .venv/bin/pytest tests/test_integrations_trl.py
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import RepeatSampler, shuffle_sequence_dict, split_tensor_dict  # noqa: E402

from tsallis_rl.estimators import (  # noqa: E402
    garl_loss,
    get_estimator_spec,
    list_estimators,
    paft_loss,
)
from tsallis_rl.integrations.trl import (  # noqa: E402
    TsallisGRPOConfig,
    TsallisGRPOTrainer,
    build_teacher_forced,
    group_coefficients,
)
from tsallis_rl.models.tiny import build_char_tokenizer, build_tiny_causal_lm  # noqa: E402

M = 4  # num_generations
PROMPTS = ["12+34=?", "50-17=?", "7*11=?", "90/3=?"]
ANSWERS = ["46", "33", "77", "30"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def tiny_model(tok, seed=0):
    return build_tiny_causal_lm(len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=seed)


def dataset():
    return Dataset.from_dict({"prompt": PROMPTS, "answer": ANSWERS})


def exact_match(completions, answer, **kwargs):
    """1 when the text after </think> is exactly the gold answer, else 0."""
    return [float(c.split("</think>")[-1].strip() == a) for c, a in zip(completions, answer)]


def graded(completions, **kwargs):
    """A deterministic reward in {0, 1/3, 2/3, 1} (zeros included), so reward weights are not trivial."""
    return [(len(c) % 4) / 3 for c in completions]


def common_args(**overrides):
    args = dict(
        output_dir="/tmp/tsallis-trl-test",
        per_device_train_batch_size=8,
        num_generations=M,
        max_completion_length=6,
        learning_rate=1e-2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------------------------------
# Independent reference: plain HF forward, summed log-probs of a right-padded continuation


def continuation_logp(
    model, prompt_ids, prompt_mask, seqs: list[list[int]], masks: list[list[int]]
):
    """sum over positions with mask 1 of log p(seq_t | prompt, seq_<t), per row: [N] (with grad)."""
    T = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (T - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
    mask = torch.tensor([m + [0] * (T - len(m)) for m in masks], dtype=torch.float32)
    full = torch.cat([prompt_ids, ids], dim=1)
    logits = model(input_ids=full, attention_mask=torch.cat([prompt_mask, attn], dim=1)).logits
    logits = logits[:, prompt_ids.size(1) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(dim=1)


def unpadded(out):
    lengths = out["completion_mask"].sum(dim=1).tolist()
    return [row[:n] for row, n in zip(out["completion_ids"].tolist(), lengths)]


def reference_teacher_forced(tok, comps, answers, eos_id):
    """The paper's construction, written out: z up to </think> (else budget-forced, a sampled EOS
    kept in z), then y* + EOS."""
    end = tok.convert_tokens_to_ids("</think>")
    seqs, zmask, amask = [], [], []
    for c, a in zip(comps, answers):
        if end in c:
            z, forced = c[: c.index(end) + 1], []
        else:
            z, forced = c, [end]  # TRL's completion ends at its first EOS: it stays in z
        y = tok(a, add_special_tokens=False)["input_ids"] + [eos_id]
        seqs.append(z + forced + y)
        zmask.append([1] * len(z) + [0] * (len(forced) + len(y)))
        amask.append([0] * (len(z) + len(forced)) + [1] * len(y))
    return seqs, zmask, amask


# --------------------------------------------------------------------------------------------------
# Cold start: every exact-match reward is 0


def probe_answer_logp(model, tok):
    """Mean log p(y* | x, z) over fixed (prompt, rationale) pairs, rationales never sampled in training."""
    rationales = ["</think>", "ab 1</think>", "x=2;</think>"]
    eos = tok.eos_token_id
    total, n = 0.0, 0
    with torch.no_grad():
        for p, a in zip(PROMPTS, ANSWERS):
            for r in rationales:
                ctx = tok(p + r, add_special_tokens=False)["input_ids"]
                y = tok(a, add_special_tokens=False)["input_ids"] + [eos]
                ids = torch.tensor([ctx + y])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
                tgt = ids[0, 1:]
                total += logp[len(ctx) - 1 :].gather(-1, tgt[len(ctx) - 1 :, None]).sum().item()
                n += 1
    return total / n


def test_zero_reward_grpo_is_frozen_while_garl_answer_likelihood_learns(tok):
    steps = 4
    grpo = GRPOTrainer(
        tiny_model(tok),
        reward_funcs=exact_match,
        args=GRPOConfig(**common_args(max_steps=steps)),
        train_dataset=dataset(),
        processing_class=tok,
    )
    before = params(grpo.model)
    grpo.train()
    assert all(log.get("reward", 0.0) == 0.0 for log in grpo.state.log_history)
    assert all(torch.equal(before[n], p) for n, p in grpo.model.named_parameters())

    model = tiny_model(tok)
    probe_before = probe_answer_logp(model, tok)
    args = TsallisGRPOConfig(
        **common_args(max_steps=steps),
        tsallis_estimator="garl",
        tsallis_weight="answer_likelihood",
        tsallis_q=0.75,
    )
    garl = TsallisGRPOTrainer(
        model, reward_funcs=exact_match, args=args, train_dataset=dataset(), processing_class=tok
    )
    garl.train()
    logs = [log for log in garl.state.log_history if "reward" in log]
    assert len(logs) == steps and all(log["reward"] == 0.0 for log in logs)
    assert all(log["frac_reward_zero"] == 1.0 for log in logs)
    assert all(math.isfinite(log["tsallis/mean_log_w_bar"]) for log in logs)
    changed = [not torch.equal(before[n], p) for n, p in garl.model.named_parameters()]
    assert all(changed)
    assert probe_answer_logp(garl.model, tok) > probe_before + 0.5


# --------------------------------------------------------------------------------------------------
# The applied gradient is the core estimator's gradient


def generation_inputs():
    return [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, ANSWERS) for _ in range(M)]


TEACHER_FORCED = ["garl", "paft", "rb_rloo", "verifree", "loglik", "iwae"]
CASES = [(e, "answer_likelihood") for e in TEACHER_FORCED] + [
    (e, "reward")
    for e in ("garl", "paft", "verifree", "iwae")  # loglik needs log w > -inf
]


def test_every_sequence_level_teacher_forced_estimator_is_covered():
    assert set(TEACHER_FORCED) == {
        n for n in list_estimators() if get_estimator_spec(n).sequence_only
    }


@pytest.mark.parametrize("estimator,weight", CASES)
def test_applied_gradient_equals_core_estimator_gradient(tok, estimator, weight):
    q, seed = 0.5, 123
    # Two micro-batches per generation batch (gradient accumulation 2) to cover the loss scaling.
    args = TsallisGRPOConfig(
        **common_args(per_device_train_batch_size=8, gradient_accumulation_steps=2, seed=seed),
        tsallis_estimator=estimator,
        tsallis_weight=weight,
        tsallis_q=q,
    )
    trainer = TsallisGRPOTrainer(
        tiny_model(tok, seed=1),
        reward_funcs=graded,
        args=args,
        train_dataset=dataset(),
        processing_class=tok,
    )
    model = trainer.model
    model.train()
    out = trainer._generate_and_score_completions(generation_inputs())
    N = out["completion_ids"].size(0)
    assert N == len(PROMPTS) * M

    # Trainer: shuffle, split into the accumulation micro-batches, sum the gradients.
    trainer.current_gradient_accumulation_steps = 2
    model.zero_grad()
    for chunk in split_tensor_dict(shuffle_sequence_dict(out), 2):
        trainer.compute_loss(model, chunk).backward()
    applied = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    # Reference: the core loss on log-probs computed here from the same completions.
    model.zero_grad()
    comps = unpadded(out)
    eos = tok.eos_token_id
    if weight == "reward":
        rationale_logp = continuation_logp(
            model, out["prompt_ids"], out["prompt_mask"], comps, [[1] * len(c) for c in comps]
        )
        rewards = torch.tensor(list(trainer._logs["rewards"]["graded"]), dtype=torch.float64)
        assert (rewards == 0).any() and (rewards > 0).any()
        answer_logp = torch.log(rewards)  # -inf for reward 0 is legal input
    else:
        seqs, zmask, amask = reference_teacher_forced(
            tok, comps, [x["answer"] for x in generation_inputs()], eos
        )
        rationale_logp = continuation_logp(
            model, out["prompt_ids"], out["prompt_mask"], seqs, zmask
        )
        answer_logp = continuation_logp(model, out["prompt_ids"], out["prompt_mask"], seqs, amask)
    shape = (len(PROMPTS), M)
    fn = get_estimator_spec(estimator).bind(q, {"generator": torch.Generator().manual_seed(seed)})
    ref = fn(rationale_logp.view(shape), answer_logp.view(shape))
    ref.loss.backward()
    nonzero = 0
    for n, p in model.named_parameters():
        torch.testing.assert_close(applied[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
        nonzero += int(p.grad.abs().max() > 1e-7)
    assert nonzero > 0  # the comparison is not between two zero gradients


# --------------------------------------------------------------------------------------------------
# Groups across processes


def test_trl_sampler_puts_each_group_consecutively_in_the_gathered_batch():
    """The adapter groups `num_generations` consecutive rows of the gathered batch: TRL's order."""
    num_processes, per_device, steps = (
        2,
        3,
        2,
    )  # per-device batch 3, M = 2: groups straddle processes
    m = 2
    sampler = RepeatSampler(
        list(range(20)),
        mini_repeat_count=m,
        batch_size=num_processes * per_device * steps // m,
        repeat_count=1,
        shuffle=True,
        seed=0,
    )
    order = list(sampler)
    gen = num_processes * per_device * steps
    batch = order[:gen]
    # accelerate hands process p the p-th contiguous slice; gathering concatenates them back in order.
    local = [
        batch[p * per_device * steps : (p + 1) * per_device * steps] for p in range(num_processes)
    ]
    gathered = [i for part in local for i in part]
    assert gathered == batch
    groups = [gathered[k : k + m] for k in range(0, gen, m)]
    assert all(len(set(g)) == 1 for g in groups)
    assert len({g[0] for g in groups}) == len(groups)


@pytest.mark.parametrize("estimator", ["garl", "paft"])
def test_simulated_two_process_gather_gives_the_single_process_gradient(estimator):
    """Two processes with 3 completions each and M = 2 (one group split across them)."""
    torch.manual_seed(0)
    B, m, q = 3, 2, 0.75
    rationale_logp = torch.randn(B * m, dtype=torch.float64, requires_grad=True)
    answer_logp = (-torch.rand(B * m, dtype=torch.float64) * 5).requires_grad_()
    answer_logp.data[0] = -math.inf if estimator == "garl" else answer_logp.data[0]
    gathered = answer_logp.detach()  # what accelerator.gather returns on every process
    local = [slice(0, 3), slice(3, 6)]

    total = 0.0
    for p in range(2):
        opts = {"generator": torch.Generator().manual_seed(7)}  # same draws on every process
        rat, ans, stats = group_coefficients(
            gathered, m, estimator, q, local_slice=local[p], options=opts
        )
        finite = torch.isfinite(answer_logp[local[p]])
        a_term = torch.where(finite, ans * answer_logp[local[p]], torch.zeros_like(ans))
        # the trainer's per-process loss, times num_processes to undo DDP's mean
        total = total + 2 * ((rat * rationale_logp[local[p]]).sum() + a_term.sum()) / 2
    total.backward()

    ra = rationale_logp.detach().clone().requires_grad_()
    aa = answer_logp.detach().clone().requires_grad_()
    kw = {"generator": torch.Generator().manual_seed(7)} if estimator == "paft" else {}
    fn = garl_loss if estimator == "garl" else paft_loss
    fn(ra.view(B, m), aa.view(B, m), q, **kw).loss.backward()
    torch.testing.assert_close(rationale_logp.grad, ra.grad)
    torch.testing.assert_close(
        torch.nan_to_num(answer_logp.grad), torch.nan_to_num(aa.grad)
    )  # -inf entries get 0


def test_trainer_slices_its_own_process_from_the_gathered_weights(tok, monkeypatch):
    """The trainer, told it is process 1 of 2, takes rows [n, 2n) of the coefficients of the gathered batch."""
    args = TsallisGRPOConfig(
        **common_args(per_device_train_batch_size=8),
        tsallis_weight="answer_likelihood",
        tsallis_q=0.75,
    )
    trainer = TsallisGRPOTrainer(
        tiny_model(tok),
        reward_funcs=exact_match,
        args=args,
        train_dataset=dataset(),
        processing_class=tok,
    )
    trainer.model.train()
    other = -torch.rand(8, dtype=torch.float64) * 10  # process 0's log-weights
    seen = {}

    def fake_gather(t):
        if t.dim() == 1:
            seen.setdefault("local", t.clone())  # the first 1-d gather is the log-weights
            return torch.cat([other, t])
        return torch.cat([torch.zeros(8, t.size(1), dtype=t.dtype), t])

    monkeypatch.setattr(trainer, "_tsallis_gather", fake_gather)
    monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self: 1))
    inputs = [
        {"prompt": p, "answer": a} for p, a in zip(PROMPTS[:2], ANSWERS[:2]) for _ in range(M)
    ]
    out = trainer._generate_and_score_completions(inputs)
    full = torch.cat([other, seen["local"]])
    rat, ans, _ = group_coefficients(full, M, "garl", 0.75, local_slice=slice(8, 16))
    torch.testing.assert_close(out["tsallis_rationale_coef"], rat)
    torch.testing.assert_close(out["tsallis_answer_coef"], ans)
    # and the coefficients average over all 4 groups (B = 4), not over the 2 local ones
    ref = garl_loss(torch.zeros(4, M, dtype=torch.float64), full.view(4, M), 0.75)
    torch.testing.assert_close(out["tsallis_rationale_coef"], ref.rationale_grad[2:].reshape(-1))


DIST_SCRIPT = r"""
import sys, torch, torch.distributed as dist
from datasets import Dataset
from tsallis_rl.integrations.trl import TsallisGRPOConfig, TsallisGRPOTrainer
from tsallis_rl.models.tiny import build_char_tokenizer, build_tiny_causal_lm
tok = build_char_tokenizer()
P, A, M = ["12+34=?", "50-17=?", "77+11=?"], ["46", "33", "88"], 4
args = TsallisGRPOConfig(output_dir=sys.argv[2], per_device_train_batch_size=6, num_generations=M,
    max_completion_length=6, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
    gradient_checkpointing=False, seed=0, disable_tqdm=True, tsallis_weight="answer_likelihood", tsallis_q=0.75)
model = build_tiny_causal_lm(len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=0)
tr = TsallisGRPOTrainer(model, reward_funcs=lambda completions, **k: [0.0] * len(completions), args=args,
    train_dataset=Dataset.from_dict({"prompt": P, "answer": A}), processing_class=tok)
rank, world = tr.accelerator.process_index, tr.accelerator.num_processes
full = [{"prompt": p, "answer": a} for p, a in zip(P, A) for _ in range(M)]
tr.model.train()
tr.current_gradient_accumulation_steps = 1
out = tr._generate_and_score_completions(full[rank * 6 : (rank + 1) * 6])  # group 2 straddles ranks
tr.compute_loss(tr.model, out).backward()
for p in tr.model.parameters():
    dist.all_reduce(p.grad)
    p.grad /= world  # what DDP does
lengths = out["completion_mask"].sum(1).tolist()
comps = [r[:n] for r, n in zip(out["completion_ids"].tolist(), lengths)]
parts = [None] * world
dist.all_gather_object(parts, comps)
if rank == 0:
    grads = {n: p.grad for n, p in tr.model.named_parameters()}
    torch.save({"comps": [c for part in parts for c in part], "grads": grads, "world": world}, sys.argv[1])
# Tear the group down together before exiting. Without this, rank 1 left while rank 0 was still
# saving, and its gloo group was destroyed at interpreter exit with its peer connection live:
# "terminate called without an active exception" (SIGABRT) at random (issue 22 item 9).
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_cpu_processes_apply_the_single_process_core_gradient(tok, tmp_path):
    """torchrun with 2 CPU processes (gloo): the DDP-averaged gradient is garl_loss's on all 12 samples."""
    import os
    import subprocess
    import sys

    script = tmp_path / "dist.py"
    script.write_text(DIST_SCRIPT)
    result = tmp_path / "out.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    proc = subprocess.run(
        [*cmd, str(result), str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(result)
    assert saved["world"] == 2
    comps = saved["comps"]
    answers = [a for a in ["46", "33", "88"] for _ in range(M)]
    model = tiny_model(tok, seed=0)
    # equal-length prompts, so no padding
    prompts = [p for p in ["12+34=?", "50-17=?", "77+11=?"] for _ in range(M)]
    prompt_ids = torch.tensor([tok(p)["input_ids"] for p in prompts])
    seqs, zmask, amask = reference_teacher_forced(tok, comps, answers, tok.eos_token_id)
    ones = torch.ones_like(prompt_ids)
    rationale_logp = continuation_logp(model, prompt_ids, ones, seqs, zmask)
    answer_logp = continuation_logp(model, prompt_ids, ones, seqs, amask)
    garl_loss(rationale_logp.view(3, M), answer_logp.view(3, M), 0.75).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(saved["grads"][n], p.grad, atol=1e-5, rtol=1e-4, msg=n)


# --------------------------------------------------------------------------------------------------
# Translation details and errors at the boundary


def test_teacher_forced_rationale_ends_at_marker_or_is_budget_forced():
    END, EOS, PAD = 3, 1, 0
    comps = [
        [10, 11, END, 12, EOS],
        [10, 11, 12],
        [10, EOS],
    ]  # marker; truncated; EOS without marker
    answers = [[20, EOS]] * 3
    ids, attn, rmask, amask, forced = build_teacher_forced(comps, answers, [END], [EOS], PAD)
    assert ids.tolist() == [
        [10, 11, END, 20, EOS, PAD],
        [10, 11, 12, END, 20, EOS],
        [10, EOS, END, 20, EOS, PAD],  # the sampled end token stays in z (trained)
    ]
    assert rmask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert amask.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6, [1, 1, 1, 1, 1, 0]]
    assert forced.tolist() == [False, True, True]


def test_rewards_outside_unit_interval_are_rejected(tok):
    args = TsallisGRPOConfig(**common_args(max_steps=1), tsallis_weight="reward")
    trainer = TsallisGRPOTrainer(
        tiny_model(tok),
        reward_funcs=lambda completions, **kw: [2.0] * len(completions),
        args=args,
        train_dataset=dataset(),
        processing_class=tok,
    )
    trainer.model.train()
    with pytest.raises(ValueError, match=r"rewards in \[0, 1\]"):
        trainer._generate_and_score_completions(generation_inputs()[:8])


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(beta=0.1), "KL penalty"),
        (
            dict(tsallis_weight="answer_likelihood", tsallis_answer_column="gold"),
            "no gold-answer column 'gold'",
        ),
        (
            dict(tsallis_weight="answer_likelihood", mask_truncated_completions=True),
            "budget-forced",
        ),
    ],
)
def test_conflicting_options_raise_at_construction(tok, config, match):
    args = TsallisGRPOConfig(**common_args(), **config)
    with pytest.raises(ValueError, match=match):
        TsallisGRPOTrainer(
            tiny_model(tok),
            reward_funcs=exact_match,
            args=args,
            train_dataset=dataset(),
            processing_class=tok,
        )


def test_config_rejects_unknown_or_sampled_reward_estimators():
    with pytest.raises(ValueError, match="unknown estimator"):
        TsallisGRPOConfig(**common_args(), tsallis_estimator="nope")
    with pytest.raises(ValueError, match="sampled-reward"):
        TsallisGRPOConfig(**common_args(), tsallis_estimator="grpo")
    with pytest.raises(ValueError, match=r"tsallis_q must lie in \[0, 1\]"):
        TsallisGRPOConfig(**common_args(), tsallis_q=1.5)
    with pytest.raises(ValueError, match="per-token answer log-probs"):
        TsallisGRPOConfig(**common_args(), tsallis_estimator="rlpr")


# --------------------------------------------------------------------------------------------------
# Defaults that match the paper and the own trainer


def test_default_weight_is_the_papers_answer_likelihood():
    assert TsallisGRPOConfig(**common_args()).tsallis_weight == "answer_likelihood"


def test_missing_answer_column_names_the_column_and_the_reward_alternative(tok):
    no_answer = Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(ValueError) as info:
        TsallisGRPOTrainer(
            tiny_model(tok), reward_funcs=exact_match, args=TsallisGRPOConfig(**common_args()),
            train_dataset=no_answer, processing_class=tok,
        )  # fmt: skip
    msg = str(info.value)
    assert "'answer'" in msg and "tsallis_answer_column" in msg and "tsallis_weight='reward'" in msg


@pytest.mark.parametrize(
    "template", [None, "{% for m in messages %}{{ m['content'] }}{% endfor %}"]
)
def test_answer_prefix_defaults_to_the_own_trainers_rule(tok, template):
    import copy

    from tsallis_rl.config import TrainConfig
    from tsallis_rl.prompts import PromptFormatter
    from tsallis_rl.tasks import get_task

    tk = copy.deepcopy(tok)
    tk.chat_template = template
    trainer = TsallisGRPOTrainer(
        tiny_model(tk), reward_funcs=exact_match, args=TsallisGRPOConfig(**common_args()),
        train_dataset=dataset(), processing_class=tk,
    )  # fmt: skip
    own = PromptFormatter.build(tk, get_task("chainsum"), TrainConfig(task="chainsum"))
    assert trainer._tsallis_answer_prefix == own.answer_prefix == ("\n\n" if template else "")


def test_fp16_model_gets_a_nonzero_gradient_from_float32_coefficients(tok, monkeypatch):
    """The surrogate is formed in float32 (coefficients never cast to fp16) and the fp16 model's
    parameters receive a finite, non-zero gradient; coef_underflow reports what fp16 loses."""
    model = tiny_model(tok).half()
    args = TsallisGRPOConfig(**common_args(), tsallis_q=0.75)
    trainer = TsallisGRPOTrainer(
        model, reward_funcs=exact_match, args=args, train_dataset=dataset(), processing_class=tok
    )
    trainer.model.train()
    out = trainer._generate_and_score_completions(generation_inputs())
    trainer.current_gradient_accumulation_steps = 1
    # TRL's fused head returns float32 log-probs; older paths return the model's fp16 ones: force
    # that case, so a coefficient cast to fp16 (or an fp16 surrogate) would show here.
    scorer = trainer._get_per_token_logps_and_entropies

    def fp16_logps(*a, **k):
        logps, ent, aux = scorer(*a, **k)
        return logps.half(), ent, aux

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", fp16_logps)
    loss = trainer.compute_loss(trainer.model, out)
    assert loss.dtype == torch.float32
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
    assert 0.0 <= trainer._metrics["train"]["tsallis/coef_underflow"][-1] <= 1.0
