"""Shared fixtures: a tiny chain-sum model saved in HF format (no download, a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen3-style model + char tokenizer over the chain-sum alphabet, saved to disk."""
    from tsallis_rl.models.tiny import save_tiny_model
    from tsallis_rl.tasks.chainsum import ALPHABET

    path = tmp_path_factory.mktemp("tiny_model")
    return save_tiny_model(path, ALPHABET, hidden_size=32, num_layers=2, num_heads=2, seed=0)
