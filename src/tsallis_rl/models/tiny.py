"""Tiny local models and tokenizers, built without any download (tests, the CPU default, examples).

`build_char_tokenizer` gives a character-level `PreTrainedTokenizerFast` whose `<think>`, `</think>`,
`<eos>` and `<pad>` are single tokens; `build_tiny_causal_lm` a randomly initialised Qwen3- or
Llama-style HF causal LM. Both save/load with `save_pretrained` / `from_pretrained` like any hub model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from tsallis_rl.errors import ModelError
from tsallis_rl.io import default_cache_dir, write_dir_atomic

DEFAULT_ALPHABET = "0123456789+-*/=?:;,.()# ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SPECIAL = ("<pad>", "<eos>")
MARKERS = ("<think>", "</think>")


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over `alphabet` plus <pad>, <eos>, <think>, </think> (one id each)."""
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *MARKERS, *chars])}
    vocab.setdefault("<unk>", len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.add_tokens(list(MARKERS))  # single tokens that stay visible in decoded text
    fast.padding_side = "left"
    return fast


def build_tiny_causal_lm(
    vocab_size: int,
    *,
    arch: str = "qwen3",
    hidden_size: int = 96,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
) -> PreTrainedModel:
    """A small randomly initialised HF causal LM (tied embeddings, RoPE), deterministic given `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
    )
    builders = {
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=hidden_size // num_heads, **common)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**common)),
    }
    if arch not in builders:
        raise ValueError(f"arch must be one of {sorted(builders)}, got {arch!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = builders[arch]()
    return model.float()


def save_tiny_model(path: str | Path, alphabet: str = DEFAULT_ALPHABET, **model_kwargs) -> Path:
    """Build a char tokenizer over `alphabet` and a tiny model for it, save both to `path` (HF format)."""
    path = Path(path)
    tok = build_char_tokenizer(alphabet)
    model = build_tiny_causal_lm(
        len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **model_kwargs
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------
# Named tiny models (`--model tiny:random`): built locally on first use, then cached

TINY_MODELS: dict[str, dict] = {
    # any printable-ASCII text (benchmark prompts run to ~13k characters, hence the positions)
    "tiny:random": dict(hidden_size=32, num_layers=2, num_heads=2, max_positions=16384, seed=0),
}


def is_tiny_model(name: str | None) -> bool:
    """True for a `tiny:NAME` model spec (a local random model, no download)."""
    return bool(name) and str(name).startswith("tiny:")


def ensure_tiny_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """The saved HF folder of the named tiny model, built (atomically) on first use."""
    if name not in TINY_MODELS:
        raise ModelError(
            f"model: unknown tiny model {name!r}; known: {', '.join(sorted(TINY_MODELS))}"
        )
    dest = Path(cache_dir or default_cache_dir()) / name.replace(":", "-")
    if (dest / "config.json").exists():
        return dest
    # another process may build it at the same time: theirs is as good as ours, first one stays
    write_dir_atomic(
        dest,
        lambda tmp: save_tiny_model(tmp, string.printable, **TINY_MODELS[name]),
        "tiny",
        keep_existing=True,
    )
    return dest
