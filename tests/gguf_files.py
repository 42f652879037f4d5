"""Write GGUF files from tiny random HF models, as llama.cpp's converter would (tests only).

`write_gguf(model, tokenizer, path, qtype)` writes the model's architecture metadata, a byte-level
BPE tokenizer (`tokenizer.ggml.model = gpt2`: tokens, types, merges, special ids, chat template)
and every tensor under its GGUF name. Llama's q/k projections are permuted the way
`convert_hf_to_gguf.py` does (transformers un-permutes them on load). 2-D weights are stored in
`qtype` (F32, F16, or a block quantisation such as Q8_0); 1-D norms stay F32 as llama.cpp keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CORPUS = "the cat sat on the mat. the answer is 42. who wrote hamlet? shakespeare wrote it.\n"


def tiny_bpe_tokenizer(merges: int = 40):
    """A byte-level BPE fast tokenizer trained on a one-line corpus (+ ChatML specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(SPECIALS) + merges,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(arch: str, vocab_size: int, seed: int = 0):
    """A tiny random Llama or Qwen3 (hidden 64: every row a whole number of 32-value blocks).

    Qwen3 gets head_dim 128, the only one transformers' GGUF loader gives a Qwen3 (its GGUF
    mapping reads no head size and falls back to the config default)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=128, **common))
    with torch.no_grad():  # norms away from 1, so that a dropped or swapped norm shows in logits
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model.float().eval()


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (HF rotate-half layout -> GGML interleaved layout)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(model, tokenizer, path: Path, qtype: str = "F32", name: str = "tiny") -> Path:
    """Write `model` + `tokenizer` as a GGUF file at `path` with 2-D weights in `qtype`."""
    import gguf

    cfg = model.config
    arch = {"llama": "llama", "qwen3": "qwen3"}[cfg.model_type]
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, cfg.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, tokenizer, cfg.vocab_size)
    q = gguf.GGMLQuantizationType[qtype]
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        assert gguf_name is not None, hf_name
        data = tensor.detach().float().numpy().copy()
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == "llama" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        if data.ndim == 1 or q == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float32))
        elif q == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(f"{gguf_name}.{suffix}", data.astype(np.float16))
        else:
            writer.add_tensor(f"{gguf_name}.{suffix}", gguf.quants.quantize(data, q), raw_dtype=q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = [""] * vocab_size
    for tok, i in vocab.items():
        tokens[i] = tok
    for added in state.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
    types = [gguf.TokenType.NORMAL] * vocab_size
    for i, tok in enumerate(tokens):
        if tok in SPECIALS:
            types[i] = gguf.TokenType.CONTROL
        elif not tok:
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
