"""tsallis_rl.io: atomic writes, JSON / JSON Lines, YAML, the one json_safe policy."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from tsallis_rl import io
from tsallis_rl.errors import ConfigError, DataError


def test_read_jsonl_drops_a_torn_last_line_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="metrics.jsonl"):
        assert io.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_read_jsonl_names_the_file_and_line_of_a_corrupt_record_inside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2"):
        io.read_jsonl(path)


def test_write_atomic_fsyncs_the_file_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    io.write_atomic(tmp_path / "a.json", "{}")
    assert len(synced) >= 2  # the file, then its directory
    assert (tmp_path / "a.json").read_text() == "{}"


def test_json_safe_writes_non_finite_numbers_as_null_and_numpy_as_plain_numbers(tmp_path):
    value = {"a": math.nan, "b": [math.inf, 1.5], 3: (np.float64(2.0), np.int64(4)), "c": "nan"}
    assert io.json_safe(value) == {"a": None, "b": [None, 1.5], "3": [2.0, 4], "c": "nan"}
    io.write_json(tmp_path / "x.json", value)
    assert json.loads((tmp_path / "x.json").read_text())["a"] is None


def test_jsonl_written_appended_and_read_back_in_order(tmp_path):
    path = tmp_path / "sub" / "records.jsonl"
    io.write_jsonl(path, [{"id": "a", "p": math.nan}, {"id": "b"}])
    io.append_jsonl(path, {"id": "c"})
    assert io.read_jsonl(path) == [{"id": "a", "p": None}, {"id": "b"}, {"id": "c"}]
    assert [p.name for p in path.parent.iterdir()] == ["records.jsonl"]  # no temp file left


def test_read_yaml_names_the_file_and_line_of_what_is_wrong(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("steps: 3\n")
    assert io.read_yaml(good) == {"steps": 3}
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        io.read_yaml(tmp_path / "missing.yaml")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("steps: 3\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.yaml:2: not UTF-8"):
        io.read_yaml(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        io.read_yaml(broken)


def test_write_dir_atomic_swaps_a_complete_folder_in_and_hands_back_the_old_one(tmp_path):
    dest = tmp_path / "model"
    assert io.write_dir_atomic(dest, lambda d: (d / "v").write_text("1"), "t") is None
    aside = io.write_dir_atomic(dest, lambda d: (d / "v").write_text("2"), "t")
    assert (dest / "v").read_text() == "2" and (aside / "v").read_text() == "1"
    io.remove(aside)
    kept = io.write_dir_atomic(dest, lambda d: (d / "v").write_text("3"), "t", keep_existing=True)
    assert kept is None and (dest / "v").read_text() == "2"  # the first build stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_folder_write_leaves_no_temporary_folder(tmp_path):
    def fail(d):
        (d / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_dir_atomic(tmp_path / "model", fail, "t")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_users_umask_not_owner_only(tmp_path, umask):
    """mkstemp/mkdtemp create 0600/0700; what we write must be as readable as a plain open() /
    mkdir() makes it (teammates, verl/Ray workers running as another user)."""
    old = os.umask(umask)
    try:
        io.write_atomic(tmp_path / "summary.json", "{}")
        io.write_json(tmp_path / "r.json", {"a": 1})
        io.write_dir_atomic(tmp_path / "best", lambda d: (d / "w.bin").write_bytes(b"x"), "t")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "summary.json") == mode(tmp_path / "r.json") == mode(plain)
    assert mode(tmp_path / "summary.json") == 0o666 & ~umask
    assert mode(tmp_path / "best") == mode(tmp_path / "plain_dir") == 0o777 & ~umask
