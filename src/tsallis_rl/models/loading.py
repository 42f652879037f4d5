"""Locating and loading models and tokenizers: a hub id, a local folder, a run's checkpoint, the
project's own base model or a `tiny:NAME` model, on the device and dtype the config asks for.

`locate_model` fails fast and offline-first (ModelError saying what was tried and how to fix it);
`load_model` gives the policy (LoRA-wrapped when asked) and its tokenizer; `load_weights` puts saved
weights (plain or peft) into a model strictly, naming the checkpoint when they do not fit.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from huggingface_hub import constants
from huggingface_hub.utils import disable_progress_bars
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import ModelError
from tsallis_rl.io import looks_like_path, read_yaml
from tsallis_rl.models import basemodel
from tsallis_rl.models.catalog import resolve_model
from tsallis_rl.models.tiny import ensure_tiny_model, is_tiny_model


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Device and dtype from cfg: auto = CUDA + bf16 when available, else CPU + fp32."""
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = names.get(cfg.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


def locate_model(name: str) -> str:
    """A loadable reference for `name`: a local directory, or a hub id found in (or fetched into)
    the local Hugging Face cache. Raises ModelError saying what was tried and how to fix it.

    Fast when offline: the local cache is tried first (no network); the hub only when
    HF_HUB_OFFLINE is unset and a 3-second connection to it succeeds.
    """
    if is_tiny_model(name):  # built locally on first use (smoke recipes, tests): never the hub
        return str(ensure_tiny_model(name))
    converted = resolve_model(name)  # a .gguf file or a catalog name: converted once, cached
    if converted is not None:
        return str(converted)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"model: {name} is a directory without config.json (not an HF model)")
        return str(path)
    if looks_like_path(name):
        raise ModelError(f"model: {name}: no such directory")
    tried = [f"no local directory {name!r}", "not in the local Hugging Face cache"]
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name
    except (OSError, ValueError):
        pass
    reason = _hub_unreachable()
    if reason is None:
        try:
            AutoConfig.from_pretrained(name)
            return name
        except (OSError, ValueError) as exc:
            reason = f"the hub refused it ({' '.join(str(exc).split())[:160]})"
    tried.append(reason)
    raise ModelError(
        f"model: cannot load {name!r}: {'; '.join(tried)}. Fix: pass a local model directory, "
        f"or download it where there is network (`hf download {name}`) and copy the cache "
        "(HF_HOME), or check the name's spelling and access rights"
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached right now (None when it can)."""
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return "hub not tried: offline mode (HF_HUB_OFFLINE)"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as exc:
        return f"hub {url.hostname} unreachable ({exc.__class__.__name__})"
    return None


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def tokenizer_source(model_ref: str) -> str:
    """Where the tokenizer of `model_ref` lives: itself, or for a checkpoint folder
    (RUN/<tag>/checkpoints/step-N, which holds weights only) its run's best/ or base model."""
    path = Path(model_ref)
    if not path.is_dir() or any((path / f).exists() for f in _TOKENIZER_FILES):
        return model_ref
    if (path / "adapter_config.json").exists():
        raise ModelError(
            f"model: {path} holds LoRA adapters only; evaluate {path.parent.parent / 'best'} "
            "(the merged model) instead"
        )
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and any((run_dir / "best" / f).exists() for f in _TOKENIZER_FILES):
        return str(run_dir / "best")
    if run_dir is not None and (run_dir / "config.yaml").exists():
        base = (read_yaml(run_dir / "config.yaml") or {}).get("model")
        if base is None:
            return str(basemodel.ensure_base_model(progress=False))
        return locate_model(str(base))
    raise ModelError(
        f"model: {path} has weights but no tokenizer and is not inside a run's checkpoints/; "
        "pass a folder with a tokenizer, e.g. RUN/<tag>/best"
    )


def quiet_transformers(progress: bool) -> None:
    """With progress off, silence transformers' and the hub's own loading/saving bars too."""
    if progress:
        return
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()


def load_tokenizer(model_ref: str) -> Any:
    """The tokenizer of a located model (pad = eos when it has no pad token)."""
    source = tokenizer_source(model_ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model: cannot load the tokenizer of {source}: {exc}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    cfg: TrainConfig, device: torch.device, dtype: torch.dtype
) -> tuple[torch.nn.Module, Any]:
    """The policy and tokenizer: cfg.model, or the cached default base model; LoRA when asked."""
    quiet_transformers(cfg.progress)
    if cfg.model is None:
        path = str(basemodel.ensure_base_model(progress=cfg.progress))
    else:
        path = locate_model(cfg.model)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except OSError as exc:
        raise ModelError(f"model: cannot load the weights of {path}: {exc}") from None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = True
    if cfg.lora:
        from peft import LoraConfig, get_peft_model  # optional dependency (the lora extra)

        targets = (
            cfg.lora_targets
            if cfg.lora_targets == "all-linear"
            else [t.strip() for t in cfg.lora_targets.split(",")]
        )
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                target_modules=targets,
                task_type="CAUSAL_LM",
            ),
        )
    return model, tokenizer


def position_limit(model_ref: str) -> int | None:
    """The model's maximum sequence length, read from its config only (no weights loaded)."""
    config = AutoConfig.from_pretrained(model_ref)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_weights(model: Any, state: dict[str, Any], source: Path) -> None:
    """Load saved weights into `model` (plain or peft) strictly; a mismatch names `source`."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict  # optional dependency (the lora extra)

        try:
            result = set_peft_model_state_dict(model, state)
        except RuntimeError as exc:
            raise ModelError(
                f"{source}: weights do not fit the model: {_first_line(exc)}"
            ) from None
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ModelError(f"{source}: unexpected adapter weights {_some(unexpected)}")
        return
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        raise ModelError(
            f"{source}: saved weights have another architecture than the model: {_some(shapes)}"
        )
    unexpected = [k for k in state if k not in own]
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    # tied weights (lm_head = embeddings) are saved once: missing only if not shared with a loaded one
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
    if unexpected or missing:
        raise ModelError(
            f"{source}: weights do not match the model: missing {_some(missing)}, "
            f"unexpected {_some(unexpected)}"
        )
    model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()


def _some(items: list[str], n: int = 3) -> str:
    return (
        "[]"
        if not items
        else ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")
    )


def _first_line(exc: BaseException) -> str:
    return next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc))
