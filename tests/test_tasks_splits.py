"""Split sizes: with a directory of official split files, val/test/train sizes are caps drawn by a
seeded subsample (so the paper's sizes can be drawn from whatever files a user has)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsallis_rl.config import TrainConfig
from tsallis_rl.suite import make_splits
from tsallis_rl.tasks import get_task
from tsallis_rl.tasks.base import subsample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def split_dir(tmp_path: Path, sizes: dict[str, int], name: str = "d") -> Path:
    d = tmp_path / name
    d.mkdir()
    files = {"train": "train.jsonl", "val": "dev_full.jsonl", "test": "test.jsonl"}
    for split, n in sizes.items():
        rows = [{"id": f"{split}{i}", "question": f"q{i}?", "answer": str(i)} for i in range(n)]
        (d / files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def ids(examples) -> list[str]:
    return [e.id for e in examples]


def test_sizes_cap_splits_that_have_their_own_file(tmp_path):
    d = split_dir(tmp_path, {"train": 60, "val": 40, "test": 30})
    task = get_task("jsonl")
    full = task.splits(d)
    assert {k: len(v) for k, v in full.items()} == {"train": 60, "val": 40, "test": 30}
    capped = task.splits(d, train_size=25, val_size=10, test_size=0.5, seed=3)
    assert {k: len(v) for k, v in capped.items()} == {"train": 25, "val": 10, "test": 15}
    for split in ("train", "val", "test"):
        got = ids(capped[split])
        assert set(got) <= set(ids(full[split]))  # drawn from that split's own file
        assert got == [i for i in ids(full[split]) if i in got]  # in file order
    again = task.splits(d, train_size=25, val_size=10, test_size=0.5, seed=3)
    assert {k: ids(v) for k, v in again.items()} == {k: ids(v) for k, v in capped.items()}
    other = task.splits(d, train_size=25, val_size=10, test_size=0.5, seed=4)
    assert ids(other["val"]) != ids(capped["val"])  # the seed picks the subsample
    big = task.splits(d, val_size=1000, test_size=1000)
    assert {k: len(v) for k, v in big.items()} == {"train": 60, "val": 40, "test": 30}


def test_a_missing_split_is_still_carved_from_train(tmp_path):
    d = split_dir(tmp_path, {"train": 50, "test": 30})
    parts = get_task("jsonl").splits(d, val_size=5, test_size=7, seed=1)
    assert {k: len(v) for k, v in parts.items()} == {"train": 45, "val": 5, "test": 7}
    assert all(e.id.startswith("train") for e in parts["val"])
    assert all(e.id.startswith("test") for e in parts["test"])
    assert not set(ids(parts["val"])) & set(ids(parts["train"]))


def test_subsample_is_seeded_ordered_and_tolerates_big_caps():
    exs = get_task("chainsum").load(n=20)
    a = subsample(exs, 5, seed=0, salt="val")
    assert len(a) == 5 and ids(a) == [i for i in ids(exs) if i in ids(a)]
    assert ids(a) == ids(subsample(exs, 5, seed=0, salt="val"))
    assert ids(a) != ids(subsample(exs, 5, seed=0, salt="test"))
    assert len(subsample(exs, 0.25, seed=0, salt="val")) == 5
    assert subsample(exs, 50, seed=0, salt="val") == exs
    assert subsample(exs, None, seed=0, salt="val") == exs
    with pytest.raises(ValueError, match="val_size"):
        subsample(exs, -1, seed=0, salt="val")


def test_make_splits_applies_the_config_sizes_to_official_split_files(tmp_path):
    d = split_dir(tmp_path, {"train": 60, "val": 40, "test": 30})
    cfg = TrainConfig(model="x", task="jsonl", data=str(d), val_size=8, test_size=12, seed=2)
    parts = make_splits(get_task("jsonl"), cfg)
    assert {k: len(v) for k, v in parts.items()} == {"train": 60, "val": 8, "test": 12}
    cfg.train_size = 20
    capped = make_splits(get_task("jsonl"), cfg)
    assert len(capped["train"]) == 20
    assert ids(capped["train"]) != ids(parts["train"])[:20]  # a seeded draw, not the first 20


def test_shared_hotpotqa_dev_set_is_capped_by_the_validation_size():
    path = SHARED / "hotpotqa"
    if not path.exists():
        pytest.skip(f"{path} not present")
    cfg = TrainConfig(model="x", task="hotpotqa", data=str(path), val_size=50, test_size=100)
    parts = make_splits(get_task("hotpotqa"), cfg)
    assert {k: len(v) for k, v in parts.items()} == {"train": 300, "val": 50, "test": 100}
