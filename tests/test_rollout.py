"""Rollout plumbing: KV-cache sampling with left padding and budget forcing; micro-batched scoring."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tsallis_rl.rollout import ANSWER, PROMPT, RATIONALE, Rollout, sample, score


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _naive_greedy(model, prompt, n_new):
    ids = list(prompt)
    for _ in range(n_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def test_kv_cache_sampling_with_left_padding_matches_naive_greedy_decoding(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [
        tok("1 2 3<think>")["input_ids"],
        tok("Q:9+8+7+6=?<think>")["input_ids"],
        tok("5<think>")["input_ids"],
    ]
    never = [10_000]  # a close marker that cannot be sampled: every row runs to the budget
    rolls = sample(
        model,
        prompts,
        think_close=never,
        eos_ids=[],
        pad_id=tok.pad_token_id,
        thinking_budget=7,
        temperature=0.0,
    )
    for p, r in zip(prompts, rolls):
        assert r.rationale == _naive_greedy(model, p, 7)
        assert r.forced == never  # budget forcing appended the close marker


def test_budget_forcing_caps_rationale_and_answer_follows_close(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    close = tok("</think>", add_special_tokens=False)["input_ids"]
    prompts = [tok("1 2 3 4<think>")["input_ids"]] * 12
    gen = torch.Generator().manual_seed(0)
    rolls = sample(
        model,
        prompts,
        think_close=close,
        eos_ids=[tok.eos_token_id],
        pad_id=tok.pad_token_id,
        thinking_budget=5,
        answer_budget=3,
        answer_prefix=tok("A", add_special_tokens=False)["input_ids"],
        generator=gen,
    )
    for r in rolls:
        assert len(r.rationale) <= 5
        closed_itself = r.rationale[-len(close) :] == close
        assert closed_itself != r.hit_budget  # either the model closed the block or it was forced
        assert (
            r.answer[:1] == tok("A", add_special_tokens=False)["input_ids"]
        )  # forced answer prefix
        assert 1 <= len(r.answer) - 1 <= 3


def test_sampling_is_reproducible_with_a_generator(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [tok("1 2<think>")["input_ids"]] * 4
    kw = dict(think_close=[3], eos_ids=[1], pad_id=0, thinking_budget=6, answer_budget=2)
    a = sample(model, prompts, generator=torch.Generator().manual_seed(3), **kw)
    b = sample(model, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert [r.rationale + r.answer for r in a] == [r.rationale + r.answer for r in b]


def test_score_matches_unpadded_full_forward_per_sequence(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    rolls = [
        Rollout(tok("1 2 3<think>")["input_ids"], [5, 6, 7], [3], [8, 9, 1]),
        Rollout(tok("Q:4+4=?<think>")["input_ids"], [10, 11], [], [12, 1]),
        Rollout(tok("9<think>")["input_ids"], [13, 14, 15, 16, 3], [], [1]),
    ]
    for micro in (1, 2, 3):
        logp, regions = score(model, rolls, pad_id=tok.pad_token_id, micro_batch=micro)
        for i, r in enumerate(rolls):
            toks, regs = r.tokens_and_regions()
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0].float(), -1)
            want = [lp[j - 1, toks[j]].item() for j in range(len(r.prompt), len(toks))]
            n = len(want)
            assert torch.allclose(logp[i, :n], torch.tensor(want), atol=1e-5)
            assert regions[i, :n].tolist() == regs[len(r.prompt) :]
            assert (regions[i, n:] == PROMPT).all() and (logp[i, n:] == 0).all()
    # forced tokens belong to neither region
    assert regions[0].tolist()[:7] == [RATIONALE] * 3 + [PROMPT] + [ANSWER] * 3
