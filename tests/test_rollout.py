"""Rollouts: both samplers decode like HF `generate` with budget forcing; chunked scoring is exact."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tsallis_rl.rollout as rollout_mod
from tsallis_rl.models.tiny import build_tiny_causal_lm
from tsallis_rl.rollout import (
    ANSWER,
    ANSWER_PREFIX,
    FORCED,
    RATIONALE,
    Rollout,
    SamplingSettings,
    resolve_sampler,
    sample,
    token_logps,
)
from tsallis_rl.sequences import PAD as PAD_REGION

SAMPLERS = ("generate", "loop")
EOS, PAD, CLOSE = 1, 0, 3


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _legacy_sampler():
    """Today's (pre-generate) sampler, kept in bench/rollout_speed.py for side-by-side comparison."""
    path = Path(__file__).resolve().parents[1] / "bench" / "rollout_speed.py"
    spec = importlib.util.spec_from_file_location("rollout_speed", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rollout_speed", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.legacy_sample


def _steered_model(table: dict[int, int], vocab: int = 40, hidden: int = 48) -> torch.nn.Module:
    """A tiny Qwen3 whose greedy next token is table[last token]; context only perturbs the logits."""
    model = build_tiny_causal_lm(vocab, hidden_size=hidden, num_layers=2, num_heads=2, seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
            layer.mlp.down_proj.weight.mul_(0.01)
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        head = torch.randn(vocab, hidden) * 0.01
        for src, dst in table.items():
            head[dst, src] = 10.0
        model.lm_head.weight = torch.nn.Parameter(head)  # untied from the embeddings
    model.config.tie_word_embeddings = False
    return model.eval()


# 10 -> 11 -> 12 -> </think>: closes early; 13 -> 13: runs to the budget; 14 -> eos: ends first;
# the answer after prefix 20 is 21 22 eos.
TABLE = {10: 11, 11: 12, 12: CLOSE, 13: 13, 14: EOS, 20: 21, 21: 22, 22: EOS, 4: 20}


def _settings(**kw) -> SamplingSettings:
    base = dict(
        think_close=(CLOSE,), eos_ids=(EOS,), pad_id=PAD, thinking_budget=5, temperature=0.0
    )
    return SamplingSettings(**{**base, **kw})


def _hf_greedy(model, prompt, max_new, eos):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
            eos_token_id=list(eos), pad_token_id=PAD,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_greedy_rollouts_equal_hf_generate_for_early_close_budget_and_end_token(sampler):
    model = _steered_model(TABLE)
    prompts = [[5, 6, 10], [7, 13], [8, 9, 5, 14]]
    s = _settings(answer_budget=4, answer_prefix=(20,), sampler=sampler)
    rolls = sample(model, prompts, s)
    early, budget, ended = rolls
    # each case is actually hit
    assert early.rationale == [11, 12, CLOSE] and early.forced == []
    assert budget.rationale == [13] * 5 and budget.forced == [CLOSE]
    assert ended.rationale == [EOS] and ended.forced == [CLOSE]  # the end token closed it, kept
    for p, r in zip(prompts, rolls):
        assert r.rationale == _hf_greedy(model, p, 5, [EOS, CLOSE])
        assert r.answer_prefix == [20]
        context = p + r.rationale + r.forced + r.answer_prefix
        assert r.answer == _hf_greedy(model, context, 4, [EOS]) == [21, 22, EOS]
    # the answer budget cuts the answer
    short = sample(model, prompts, dataclasses.replace(s, answer_budget=2))
    assert all(r.answer == [21, 22] for r in short)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_multi_token_think_close_stops_and_is_forced_whole(sampler):
    table = {**TABLE, 12: 3, 3: 4}  # </think> = [3, 4]
    model = _steered_model(table)
    s = _settings(think_close=(3, 4), answer_budget=3, answer_prefix=(20,), sampler=sampler)
    early, budget = sample(model, [[10], [13]], s)
    assert early.rationale == [11, 12, 3, 4] and early.forced == []
    assert budget.rationale == [13] * 5 and budget.forced == [3, 4]
    assert early.answer == budget.answer == [21, 22, EOS]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_greedy_rollouts_equal_todays_sampler(sampler, tiny_model_dir):
    """A random model and left padding: ids identical to the pre-generate sampler (no end tokens)."""
    model, tok = _load(tiny_model_dir)
    close = tok("</think>", add_special_tokens=False)["input_ids"]
    prompts = [tok(t)["input_ids"] for t in ("1 2 3<think>", "Q:9+8+7+6=?<think>", "5<think>")]
    s = _settings(
        think_close=tuple(close), eos_ids=(), pad_id=tok.pad_token_id, thinking_budget=7,
        answer_budget=3, answer_prefix=tuple(tok("A", add_special_tokens=False)["input_ids"]),
        sampler=sampler,
    )  # fmt: skip
    new = sample(model, prompts, s)
    old = _legacy_sampler()(
        model, prompts, think_close=close, eos_ids=[], pad_id=tok.pad_token_id, thinking_budget=7,
        answer_budget=3, answer_prefix=s.answer_prefix, temperature=0.0,
    )  # fmt: skip
    for a, b in zip(new, old):
        assert (a.rationale, a.forced) == (b.rationale, b.forced)
        assert a.answer_prefix + a.answer == b.answer  # today's sampler files the prefix as answer
    assert any(r.hit_budget for r in new)


def test_loop_sampler_reproduces_todays_sampled_rollouts_for_a_seed(tiny_model_dir):
    """Training's single stream: the loop draws exactly as before, so old seeds give old rollouts."""
    model, tok = _load(tiny_model_dir)
    close = tok("</think>", add_special_tokens=False)["input_ids"]
    prompts = [tok(t)["input_ids"] for t in ("1 2 3<think>", "Q:9+8+7+6=?<think>")] * 3
    kw = dict(think_close=close, pad_id=tok.pad_token_id, thinking_budget=6, answer_budget=2)
    s = SamplingSettings(eos_ids=(), temperature=1.0, sampler="loop", **kw)
    new = sample(model, prompts, s, generator=torch.Generator().manual_seed(4))
    old = _legacy_sampler()(
        model, prompts, eos_ids=[], generator=torch.Generator().manual_seed(4), **kw
    )
    assert [(r.rationale, r.forced, r.answer) for r in new] == [
        (r.rationale, r.forced, r.answer) for r in old
    ]


def test_auto_sampler_is_the_per_device_default():
    assert resolve_sampler("auto", torch.device("cpu")) == "loop"
    assert resolve_sampler("auto", torch.device("cuda", 0)) == "generate"
    assert resolve_sampler("generate", torch.device("cpu")) == "generate"
    with pytest.raises(ValueError):
        resolve_sampler("beam", torch.device("cpu"))


def _naive_greedy(model, prompt, n_new):
    ids = list(prompt)
    for _ in range(n_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_kv_cache_sampling_with_left_padding_matches_naive_greedy_decoding(sampler, tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [
        tok("1 2 3<think>")["input_ids"],
        tok("Q:9+8+7+6=?<think>")["input_ids"],
        tok("5<think>")["input_ids"],
    ]
    never = (10_000,)  # a close marker that cannot be sampled: every row runs to the budget
    s = _settings(think_close=never, eos_ids=(), pad_id=tok.pad_token_id, thinking_budget=7)
    rolls = sample(model, prompts, dataclasses.replace(s, sampler=sampler))
    for p, r in zip(prompts, rolls):
        assert r.rationale == _naive_greedy(model, p, 7)
        assert r.forced == list(never)  # budget forcing appended the close marker


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_budget_forcing_caps_rationale_and_answer_follows_close(sampler, tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    close = tok("</think>", add_special_tokens=False)["input_ids"]
    prefix = tok("A", add_special_tokens=False)["input_ids"]
    s = SamplingSettings(
        think_close=close, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id,
        thinking_budget=5, answer_budget=3, answer_prefix=prefix, sampler=sampler,
    )  # fmt: skip
    rolls = sample(model, [tok("1 2 3 4<think>")["input_ids"]] * 12, s, generator=torch.Generator())
    for r in rolls:
        assert len(r.rationale) <= 5
        closed_itself = r.rationale[-len(close) :] == close
        assert closed_itself != r.hit_budget  # either the model closed the block or it was forced
        assert tok.eos_token_id not in r.rationale[:-1]  # an end token can only close z
        if r.rationale[-1:] == [tok.eos_token_id]:
            assert r.forced == close
        assert r.answer_prefix == prefix
        assert 1 <= len(r.answer) <= 3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_is_reproducible_and_resumable_from_generator_state(sampler, tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    prompts = [tok("1 2<think>")["input_ids"]] * 4
    s = _settings(eos_ids=(1,), thinking_budget=6, answer_budget=2, temperature=1.0)
    s = dataclasses.replace(s, sampler=sampler)
    gen = torch.Generator().manual_seed(3)
    first = sample(model, prompts, s, generator=gen)
    state = gen.get_state()  # what a checkpoint saves
    second = sample(model, prompts, s, generator=gen)
    again = sample(model, prompts, s, generator=torch.Generator().manual_seed(3))
    resumed = sample(model, prompts, s, generator=torch.Generator().set_state(state))
    assert again == first and resumed == second
    assert first != second  # the stream moved on


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_group_seeded_samples_do_not_depend_on_the_rest_of_the_batch(sampler, tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    groups = [tok(t)["input_ids"] for t in ("1 2 3<think>", "4 5 6<think>", "7 8 9<think>")]
    rows = [p for p in groups for _ in range(3)]
    s = _settings(eos_ids=(1,), thinking_budget=6, answer_budget=2, temperature=1.0)
    s = dataclasses.replace(s, sampler=sampler, batch_size=4)
    together = sample(model, rows, s, group_seeds=[11, 12, 13])
    alone = sample(model, rows[3:6], s, group_seeds=[12])
    assert together[3:6] == alone
    assert together[:3] != together[3:6]


def test_tempered_sampling_is_scored_at_its_temperature(tiny_model_dir):
    """Issue 10: rollouts sampled at T = 0.5 get log-probs of softmax(logits / 0.5) by default."""
    model, tok = _load(tiny_model_dir)
    s = _settings(eos_ids=(1,), thinking_budget=6, answer_budget=2, temperature=0.5)
    rolls = sample(model, [tok("1 2 3<think>")["input_ids"]] * 3, s, generator=torch.Generator())
    assert all(r.temperature == 0.5 for r in rolls)
    logp, regions = token_logps(model, rolls, pad_id=PAD)
    for i, r in enumerate(rolls):
        toks, _ = r.tokens_and_regions()
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0] / 0.5, -1)
        want = torch.stack([lp[j - 1, toks[j]] for j in range(len(r.prompt), len(toks))])
        assert torch.allclose(logp[i, : len(want)], want, atol=1e-5)
    plain, _ = token_logps(model, rolls, pad_id=PAD, temperature=1.0)
    assert not torch.allclose(plain, logp, atol=1e-3)


ROLLS = [  # padding layouts: prompts and completions of different lengths, every region
    Rollout([5, 6, 7], [8, 9, 10], [3], [11, 1]),
    Rollout([5], [8, 9], [], [12, 1], [20]),
    Rollout([5, 6, 7, 8, 9], [3], [], []),
    Rollout([7, 8], [9, 10, 11, 12, 13, 14], [3], [15, 16, 1], [20, 21], temperature=0.7),
]


def test_score_matches_unpadded_full_forward_per_sequence(tiny_model_dir):
    model, _ = _load(tiny_model_dir)
    for micro in (1, 2, 4):
        logp, regions = token_logps(model, ROLLS, pad_id=PAD, micro_batch=micro)
        for i, r in enumerate(ROLLS):
            toks, regs = r.tokens_and_regions()
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([toks])).logits[0].float()
            lp = torch.log_softmax(logits / r.temperature, -1)
            want = [lp[j - 1, toks[j]].item() for j in range(len(r.prompt), len(toks))]
            n = len(want)
            assert torch.allclose(logp[i, :n], torch.tensor(want), atol=1e-5)
            assert regions[i, :n].tolist() == regs[len(r.prompt) :]
            assert (regions[i, n:] == PAD_REGION).all() and (logp[i, n:] == 0).all()
    assert regions[0].tolist()[:6] == [RATIONALE] * 3 + [FORCED] + [ANSWER] * 2
    assert regions[1].tolist()[:5] == [RATIONALE] * 2 + [ANSWER_PREFIX] + [ANSWER] * 2


def _weighted_grads(model, rolls, **kw):
    model.zero_grad()
    logp, regions = token_logps(model, rolls, pad_id=PAD, micro_batch=3, **kw)
    weights = torch.linspace(-1, 2, logp.numel()).view_as(logp)
    (logp * weights).sum().backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.requires_grad]
    return logp.detach(), torch.cat(grads)


def test_chunked_scoring_equals_full_logits_pass_in_values_and_gradients(monkeypatch):
    model = build_tiny_causal_lm(40, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    monkeypatch.setattr(rollout_mod, "LOGIT_CHUNK_ELEMENTS", 40 * 3)  # 3 tokens per chunk
    got_lp, got_g = _weighted_grads(model, ROLLS)
    want_lp, want_g = _weighted_grads(model, ROLLS, full_logits=True)
    assert torch.allclose(got_lp, want_lp, atol=1e-5)
    assert torch.allclose(got_g, want_g, atol=1e-5), (got_g - want_g).abs().max()
    assert want_g.abs().sum() > 0


def test_chunked_scoring_of_a_peft_model_equals_its_full_pass():
    peft = pytest.importorskip("peft")
    model = build_tiny_causal_lm(40, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules="all-linear"))
    for p in lora.parameters():  # LoRA starts as identity: make it matter
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    assert rollout_mod._output_head(lora) is not None  # the chunked path, not the fallback
    got_lp, got_g = _weighted_grads(lora, ROLLS)
    want_lp, want_g = _weighted_grads(lora, ROLLS, full_logits=True)
    assert torch.allclose(got_lp, want_lp, atol=1e-5)
    assert torch.allclose(got_g, want_g, atol=1e-5)


def test_chunked_scoring_honours_logit_soft_capping():
    model = build_tiny_causal_lm(40, hidden_size=32, num_layers=2, num_heads=2, seed=3)
    model.config.final_logit_softcapping = 0.5  # as Gemma 2's config sets it
    original = model.forward

    def capped(*args, **kwargs):  # the reference pass applies the cap the way Gemma's forward does
        out = original(*args, **kwargs)
        out.logits = torch.tanh(out.logits / 0.5) * 0.5
        return out

    model.forward = capped
    with torch.no_grad():
        got, _ = token_logps(model, ROLLS, pad_id=PAD)
        want, _ = token_logps(model, ROLLS, pad_id=PAD, full_logits=True)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_sampled_end_token_in_the_rationale_is_scored_as_a_rationale_token(sampler):
    """Issue 22 item 2: log p(z|x) includes the end token the policy drew, then `</think>` is forced."""
    model = _steered_model(TABLE)
    (ended,) = sample(model, [[8, 9, 5, 14]], _settings(sampler=sampler))
    assert ended.rationale == [EOS] and ended.forced == [CLOSE]
    _, regions = token_logps(model, [ended.with_answer([20, 21, EOS])], pad_id=PAD)
    assert regions[0].tolist() == [RATIONALE, FORCED, ANSWER, ANSWER, ANSWER]
