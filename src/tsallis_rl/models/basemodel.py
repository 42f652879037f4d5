"""The default base model: a ~0.45M-parameter Qwen3-style LM pretrained here on warm chain-sum problems.

It is what `tsallis-rl train` (no arguments) adapts to the cold task. Pretraining uses every input
surface form except the cold one (see tasks/chainsum.py), 2-5 operands, all answered `A:<sum>`.
Seeded and deterministic; the result is cached (HF `save_pretrained` format, loadable with
`from_pretrained`) under `cache_dir/<config hash>` and reused by later runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tsallis_rl.io import TMP, default_cache_dir, fault_point, file_lock, write_dir_atomic
from tsallis_rl.models.tiny import build_char_tokenizer, build_tiny_causal_lm
from tsallis_rl.tasks.chainsum import ALPHABET, COLD_FORM, SURFACE_FORMS, warm_document

FORMAT_VERSION = 1


@dataclass
class BaseModelConfig:
    """Architecture and pretraining recipe of the default base model."""

    hidden_size: int = 96
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    steps: int = 450
    batch_size: int = 128
    lr: float = 3e-3
    min_operands: int = 2
    max_operands: int = 5
    buckets: int = 2
    seed: int = 0
    threads: int = 2

    def key(self) -> str:
        """A short hash of every field (and the format version): the cache directory name."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "threads"}
        blob = json.dumps({**fields, "v": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def pretraining_batch(rng: random.Random, cfg: BaseModelConfig) -> list[str]:
    """`batch_size` warm documents in random non-cold surface forms."""
    forms = [f for f in SURFACE_FORMS if f != COLD_FORM]
    docs = []
    for _ in range(cfg.batch_size):
        n = rng.randint(cfg.min_operands, cfg.max_operands)
        ops = [rng.randint(1, 9) for _ in range(n)]
        docs.append(warm_document(ops, rng.choice(forms)))
    return docs


def pretrain(cfg: BaseModelConfig, out_dir: Path, *, progress: bool = True) -> dict[str, float]:
    """Train the base model from scratch and save model + tokenizer to `out_dir` (atomically)."""
    torch.set_num_threads(cfg.threads)
    tok = build_char_tokenizer(ALPHABET)
    model = build_tiny_causal_lm(
        len(tok),
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_positions=256,
        seed=cfg.seed,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    tok.padding_side = "right"
    model.train()
    start, loss_ema = time.time(), None
    bar = tqdm(range(cfg.steps), desc="pretrain base model", disable=not progress, leave=False)
    for _ in bar:
        docs = sorted((d + tok.eos_token for d in pretraining_batch(rng, cfg)), key=len)
        opt.zero_grad(set_to_none=True)
        loss = _bucketed_lm_loss(model, tok, docs, cfg.buckets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}")
    tok.padding_side = "left"
    model.eval()
    info = {"final_loss": float(loss_ema or 0.0), "seconds": time.time() - start}
    info["num_parameters"] = float(sum(p.numel() for p in model.parameters()))
    _save_atomic(model, tok, out_dir, {"config": dataclasses.asdict(cfg), **info})
    return info


def _bucketed_lm_loss(model, tok, docs: list[str], buckets: int) -> torch.Tensor:
    """Mean next-token loss over all tokens of `docs` (sorted by length), computed in `buckets`
    length-homogeneous chunks so that short documents are not padded to the longest one."""
    encs = [tok(chunk, return_tensors="pt", padding=True) for chunk in _chunks(docs, buckets)]
    total = sum(int(e["attention_mask"][:, 1:].sum()) for e in encs)
    loss = torch.zeros(())
    for enc in encs:
        logits = model(**enc).logits[:, :-1]
        target = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
        loss = loss + torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"
        )
    return loss / total


def _chunks(items: list[str], n: int) -> list[list[str]]:
    size = -(-len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _save_atomic(model, tok, out_dir: Path, meta: dict) -> None:
    """Model + tokenizer + base_model.json, written into a temp folder and swapped in as `out_dir`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        fault_point("base:weights")
        tok.save_pretrained(tmp)
        (tmp / "base_model.json").write_text(json.dumps(meta, indent=2))

    write_dir_atomic(out_dir, write, "base")


def cached_base_model(cfg: BaseModelConfig | None = None, cache_dir: Path | None = None) -> Path:
    """Where the base model of `cfg` lives in the cache (built or not: see `base_model.json`)."""
    return (cache_dir or default_cache_dir()) / f"chainsum-base-{(cfg or BaseModelConfig()).key()}"


def ensure_base_model(
    cfg: BaseModelConfig | None = None, cache_dir: Path | None = None, *, progress: bool = True
) -> Path:
    """Path of the cached default base model, pretraining it first if it is not cached yet.

    The build holds a cross-process lock (`<name>.lock` in the cache dir): a second process (another
    terminal, another rank) waits for it and then finds the model built; a killed builder leaves
    only a `*.tmp-*` folder, removed by the next build.
    """
    cfg = cfg or BaseModelConfig()
    path = cached_base_model(cfg, cache_dir)
    if (path / "base_model.json").exists():
        return path
    with file_lock(path.with_name(path.name + ".lock")):
        if (path / "base_model.json").exists():  # built by whoever held the lock before us
            return path
        for stale in path.parent.glob(path.name + TMP + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        if path.exists():  # an incomplete cache entry (no base_model.json): build it again
            shutil.rmtree(path)
        pretrain(cfg, path, progress=progress)
    return path
