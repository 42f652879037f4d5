"""GGUF files as models: dequantised once into a cached Hugging Face folder, then loaded as usual.

`ensure_gguf_model("path/to/model.gguf")` returns a folder that plain `from_pretrained` loads
(config.json, model.safetensors in fp32, the tokenizer with its chat template, and
`gguf_source.json` naming the file it came from). The folder is `<cache>/gguf-<sha256[:16]>`,
keyed by the file's content, so a renamed or moved copy reuses it and a changed file converts
again. The conversion holds the cache's cross-process lock for that key and writes into a
`*.tmp-*` sibling that is renamed in only when complete (a killed conversion leaves nothing that
looks converted). `gguf_source.json` is written last: a folder without it is not a conversion.

Why convert instead of loading the GGUF on every run: transformers dequantises the GGUF on each
`from_pretrained(..., gguf_file=)` (~15-20 s for a 135M model), and the model it returns refuses
`save_pretrained` (it carries a GGUF `quantization_config`), so checkpoints, LoRA merges and the
trainer's `best/` could not be written. The conversion drops that config, rebuilds the model from
its config, loads the dequantised state dict and saves it.

A file that is not GGUF, is truncated or corrupt, or holds an architecture transformers cannot
load is a `ConfigError` naming the file (the CLI prints it in one line, exit status 2); the
header (magic, version, tensor table) is checked with the `gguf` package before any conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsallis_rl.errors import ConfigError
from tsallis_rl.io import (
    TMP,
    default_cache_dir,
    fault_point,
    file_lock,
    fsync_dir,
    fsync_tree,
    user_mode,
)

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
#: bumped when the conversion's output changes (a new version converts again)
CONVERT_VERSION = 1
#: the file whose presence marks a complete conversion
SOURCE_FILE = "gguf_source.json"
CACHE_PREFIX = "gguf-"
_HASH_CHUNK = 1 << 20


def is_gguf_path(name: str | os.PathLike[str]) -> bool:
    """Whether `name` names a GGUF file (by its suffix; the file need not exist)."""
    return str(name).lower().endswith(GGUF_SUFFIX)


def file_sha256(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; `progress(n)` gets each chunk's size."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def cached_gguf_dir(sha256: str, cache_dir: Path | None = None) -> Path:
    """Where the conversion of the GGUF file with this sha256 lives (converted or not)."""
    return (cache_dir or default_cache_dir()) / f"{CACHE_PREFIX}{sha256[:16]}"


def is_converted(folder: Path) -> bool:
    """Whether `folder` holds a complete conversion of this version."""
    meta = read_source(folder)
    return meta is not None and meta.get("convert_version") == CONVERT_VERSION


def read_source(folder: Path) -> dict[str, Any] | None:
    """The `gguf_source.json` record of a converted folder (None if absent or unreadable)."""
    try:
        meta = json.loads((Path(folder) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_gguf_file(path: Path) -> dict[str, Any]:
    """Read the GGUF header and tensor table; ConfigError naming `path` if it is not a usable file.

    Returns {"architecture", "tensors", "tensor_types"} (types by name, e.g. {"Q4_1": 120, ...}).
    The `gguf` reader memory-maps the file and checks the magic, the version, every metadata
    field and that each tensor's data lies inside the file (so a truncated file is caught here).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model: {path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"model: {path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})"
        )
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError(
            "model: reading a .gguf file needs the `gguf` package: pip install 'tsallis-rl[gguf]'"
        ) from None
    try:
        reader = GGUFReader(path)
        arch_field = reader.fields.get("general.architecture")
        if arch_field is None:
            raise ValueError("no general.architecture field")
        architecture = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")
        types: dict[str, int] = {}
        for tensor in reader.tensors:
            types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
        count = len(reader.tensors)
    except Exception as exc:  # the reader raises many kinds on a damaged file (struct, numpy, ...)
        raise ConfigError(
            f"model: {path} is not a readable GGUF file (corrupt or truncated?): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        ) from None
    if count == 0:
        raise ConfigError(f"model: {path} holds no tensors (a GGUF without weights)")
    return {"architecture": architecture, "tensors": count, "tensor_types": types}


def convert_gguf(
    path: Path, out_dir: Path, *, sha256: str, progress: bool = True
) -> dict[str, Any]:
    """Dequantise GGUF `path` into an HF folder `out_dir` (written atomically); its source record.

    Loads tokenizer and model with transformers' GGUF loader (fp32), drops the GGUF
    `quantization_config`, rebuilds the model from its config, loads the dequantised state dict
    and saves model + tokenizer (+ `gguf_source.json`, last) into a temp sibling of `out_dir`,
    renamed in when complete.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    header = check_gguf_file(path)
    start = time.time()
    folder, name = str(Path(path).resolve().parent), Path(path).name
    bars = transformers_logging.is_progress_bar_enabled()
    if not progress:
        transformers_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # an architecture or tokenizer transformers cannot map, bad tensors
        raise ConfigError(
            f"model: cannot convert {path} ({header['architecture']} GGUF): "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:240]}"
        ) from None
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ConfigError(
            f"model: cannot convert {path}: weights do not match {type(loaded).__name__} "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.tie_weights()
    del loaded
    record = {
        "convert_version": CONVERT_VERSION,
        "source": str(Path(path).resolve()),
        "source_name": name,
        "sha256": sha256,
        "bytes": Path(path).stat().st_size,
        "architecture": header["architecture"],
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensor_types": header["tensor_types"],
        "dtype": "float32",
        "seconds": round(time.time() - start, 1),
    }
    _save_atomic(model, tokenizer, out_dir, record)
    return record


def _save_atomic(model: Any, tokenizer: Any, out_dir: Path, record: dict[str, Any]) -> None:
    """Model + tokenizer + source record into a temp sibling, fsynced, renamed to `out_dir`."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + TMP, dir=out_dir.parent))
    user_mode(tmp, folder=True)  # mkdtemp makes 0700: the converted model follows the umask
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fault_point("gguf:weights")
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2))
        fsync_tree(tmp)
        os.replace(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_gguf_model(
    path: str | Path,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """The cached HF folder of GGUF file `path`, converting it first if it is not cached yet.

    `sha256` skips hashing when the caller has just checked the file (the catalog's fetch).
    Holds `<cache>/gguf-<key>.lock` while converting: a second process waits, then finds it done;
    stale `*.tmp-*` siblings of a killed conversion are removed by the next one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model: {path}: no such file")
    digest = sha256 or file_sha256(path)
    out = cached_gguf_dir(digest, cache_dir)
    if is_converted(out):
        return out
    with file_lock(out.with_name(out.name + ".lock")):
        if is_converted(out):  # converted by whoever held the lock before us
            return out
        for stale in out.parent.glob(out.name + TMP + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        check_gguf_file(path)  # a bad file fails before the slow part, and before any write
        if progress:
            size = path.stat().st_size / 1e6
            print(
                f"converting {path.name} ({size:.1f} MB, sha256 {digest[:12]}...) into a "
                f"Hugging Face folder, once: {out}",
                file=sys.stderr,
            )
        if out.exists():  # an incomplete or older conversion: convert again
            shutil.rmtree(out)
        convert_gguf(path, out, sha256=digest, progress=progress)
    return out


def list_converted(cache_dir: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, source record) of every complete conversion in the cache, by folder name."""
    root = cache_dir or default_cache_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.glob(CACHE_PREFIX + "*")):
        if folder.is_dir() and TMP not in folder.name and is_converted(folder):
            out.append((folder, read_source(folder) or {}))
    return out
