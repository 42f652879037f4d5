"""GGUF files become cached HF folders that give the logits of the model they were written from.

Every GGUF here is written by the test itself (tests/gguf_files.py, the `gguf` package) from a
tiny random Llama or Qwen3: no download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gguf")

from gguf_files import tiny_bpe_tokenizer, tiny_model, write_gguf  # noqa: E402

from tsallis_rl.cli import main  # noqa: E402
from tsallis_rl.config import ConfigError  # noqa: E402
from tsallis_rl.models import gguf as gg  # noqa: E402

TEXT = (
    "the cat sat on the mat. who wrote hamlet? shakespeare wrote it."  # no digits: Qwen splits them
)
FP16_STEP = 2.0**-11  # relative rounding of a float16 scale


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bpe_tokenizer()


def _load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(
        folder
    )


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _convert(tmp_path: Path, model, tokenizer, qtype: str) -> Path:
    path = write_gguf(model, tokenizer, tmp_path / f"tiny-{qtype}.gguf", qtype)
    return gg.ensure_gguf_model(path, tmp_path / "cache", progress=False)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_f32_gguf_gives_exactly_the_logits_of_its_model(tmp_path, tokenizer, arch):
    model = tiny_model(arch, len(tokenizer))
    folder = _convert(tmp_path, model, tokenizer, "F32")
    loaded, loaded_tok = _load(folder)
    assert type(loaded) is type(model)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(loaded_tok(TEXT, return_tensors="pt")["input_ids"], ids)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    meta = gg.read_source(folder)
    assert meta["architecture"] == arch and set(meta["tensor_types"]) == {"F32"}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_f16_gguf_gives_exactly_the_logits_of_its_fp16_rounded_model(tmp_path, tokenizer, arch):
    model = tiny_model(arch, len(tokenizer))
    folder = _convert(tmp_path, model, tokenizer, "F16")
    rounded = tiny_model(arch, len(tokenizer))
    with torch.no_grad():  # what F16 storage does: 2-D weights to float16 and back, norms kept
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.half().float())
    loaded, _ = _load(folder)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(_logits(loaded, ids), _logits(rounded, ids))
    assert not torch.equal(_logits(loaded, ids), _logits(model, ids))  # the rounding is real


def _block_error_bound(w: np.ndarray, qtype: str) -> np.ndarray:
    """Largest |w - dequantised w| each 32-value block of `qtype` allows (scales are float16)."""
    blocks = w.reshape(-1, 32)
    if qtype == "Q8_0":  # d = absmax / 127, q = round(x / d)
        d = np.abs(blocks).max(axis=1) / 127
        bound = d / 2 + 127 * d * FP16_STEP
    else:  # Q4_1: d = (max - min) / 15, m = min, q = round((x - m) / d)
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        d = (hi - lo) / 15
        bound = d / 2 + 15 * d * FP16_STEP + np.abs(lo) * FP16_STEP
    return np.repeat(bound + 1e-7, 32).reshape(w.shape)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_quantised_gguf_weights_are_within_the_types_known_error(tmp_path, tokenizer, qtype):
    import gguf

    model = tiny_model("llama", len(tokenizer))
    folder = _convert(tmp_path, model, tokenizer, qtype)
    loaded, _ = _load(folder)
    q = gguf.GGMLQuantizationType[qtype]
    new = dict(loaded.named_parameters())
    for name, p in model.named_parameters():
        w, got = p.detach().numpy(), new[name].detach().numpy()
        if p.ndim == 1:  # norms are stored as F32
            assert np.array_equal(got, w), name
            continue
        # (llama's q/k rows are permuted in the file, but blocks lie within rows: same blocks)
        expected = gguf.quants.dequantize(gguf.quants.quantize(w, q), q)
        assert np.array_equal(got, expected), name  # exactly the type's dequantisation
        assert np.all(np.abs(got - w) <= _block_error_bound(w, qtype)), name
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    gap = (_logits(loaded, ids) - _logits(model, ids)).abs().max().item()
    assert 0 < gap < 0.5


def test_conversion_happens_once_and_is_keyed_by_content(tmp_path, tokenizer, monkeypatch):
    model = tiny_model("llama", len(tokenizer))
    path = write_gguf(model, tokenizer, tmp_path / "a.gguf", "F16")
    cache = tmp_path / "cache"
    first = gg.ensure_gguf_model(path, cache, progress=False)
    assert gg.read_source(first)["sha256"] == gg.file_sha256(path)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(gg, "convert_gguf", no_second_conversion)
    copy = shutil.copy(path, tmp_path / "renamed copy.gguf")
    assert gg.ensure_gguf_model(path, cache, progress=False) == first
    assert gg.ensure_gguf_model(copy, cache, progress=False) == first
    assert [f for f, _ in gg.list_converted(cache)] == [first]


def test_a_changed_file_converts_again_into_another_folder(tmp_path, tokenizer):
    cache = tmp_path / "cache"
    a = write_gguf(tiny_model("llama", len(tokenizer), seed=0), tokenizer, tmp_path / "m.gguf")
    first = gg.ensure_gguf_model(a, cache, progress=False)
    write_gguf(tiny_model("llama", len(tokenizer), seed=1), tokenizer, a)
    second = gg.ensure_gguf_model(a, cache, progress=False)
    assert second != first and gg.is_converted(first) and gg.is_converted(second)


def test_chat_template_and_special_tokens_survive_the_conversion(tmp_path, tokenizer):
    folder = _convert(tmp_path, tiny_model("qwen3", len(tokenizer)), tokenizer, "F32")
    _, loaded_tok = _load(folder)
    msgs = [{"role": "user", "content": "who wrote hamlet?"}]
    assert loaded_tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert loaded_tok.eos_token == "<|im_end|>"
    assert loaded_tok.convert_tokens_to_ids("<|im_start|>") == tokenizer.convert_tokens_to_ids(
        "<|im_start|>"
    )


def _bad_files(tmp_path: Path, tokenizer) -> dict[str, Path]:
    good = write_gguf(tiny_model("llama", len(tokenizer)), tokenizer, tmp_path / "good.gguf")
    data = good.read_bytes()
    files = {
        "not gguf": b"PK\x03\x04 this is a zip, not a model" * 10,
        "truncated": data[: len(data) // 2],
        "header only": data[:24],
        "bad version": data[:4] + (999).to_bytes(4, "little") + data[8:],
    }
    out = {}
    for name, blob in files.items():
        out[name] = tmp_path / f"{name.replace(' ', '-')}.gguf"
        out[name].write_bytes(blob)
    return out


def test_corrupt_or_truncated_gguf_is_a_user_error_naming_the_file(tmp_path, tokenizer):
    for why, path in _bad_files(tmp_path, tokenizer).items():
        with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
            gg.ensure_gguf_model(path, tmp_path / "cache", progress=False)
        assert not list((tmp_path / "cache").glob("gguf-*[!k]")), why  # only lock files


def test_cli_refuses_a_corrupt_gguf_with_status_2_and_one_line(
    tmp_path, tokenizer, capsys, monkeypatch
):
    monkeypatch.setenv("TSALLIS_RL_CACHE", str(tmp_path / "cache"))
    bad = _bad_files(tmp_path, tokenizer)["truncated"]
    assert main(["models", "convert", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err
    assert main(["models", "convert", str(tmp_path / "missing.gguf"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_architecture_transformers_cannot_load_is_a_user_error(tmp_path):
    import gguf

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigError, match=r"cannot convert .*rwkv\.gguf \(rwkv6 GGUF\)"):
        gg.ensure_gguf_model(path, tmp_path / "cache", progress=False)


def test_cli_convert_prints_the_folder_and_list_shows_it(tmp_path, tokenizer, capsys, monkeypatch):
    monkeypatch.setenv("TSALLIS_RL_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tiny_model("llama", len(tokenizer)), tokenizer, tmp_path / "m.gguf", "F16")
    assert main(["models", "convert", str(path), "--quiet"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert gg.is_converted(folder) and folder.parent == tmp_path / "cache"
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "m.gguf  [converted]" in out and str(folder) in out
    assert "smollm2-135m  [not fetched]" in out


def test_a_conversion_killed_midway_leaves_nothing_converted_and_is_redone(tmp_path, tokenizer):
    import os
    import subprocess
    import sys

    path = write_gguf(tiny_model("llama", len(tokenizer)), tokenizer, tmp_path / "m.gguf", "F16")
    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; from tsallis_rl.models.gguf import ensure_gguf_model;"
        "ensure_gguf_model(Path(sys.argv[1]), Path(sys.argv[2]), progress=False)"
    )
    env = {**os.environ, "TSALLIS_RL_FAULT": "gguf:weights"}
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(cache)], env=env)
    assert proc.returncode == -9  # SIGKILL after the weights were written, before the rename
    out = gg.cached_gguf_dir(gg.file_sha256(path), cache)
    assert not out.exists() and list(cache.glob(out.name + ".tmp-*"))
    assert gg.ensure_gguf_model(path, cache, progress=False) == out and gg.is_converted(out)
    assert not list(cache.glob(out.name + ".tmp-*"))  # the killed attempt's leftovers are gone
