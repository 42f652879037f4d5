"""Files, written so that a kill never leaves half of one: the package's only file I/O helpers.

- `write_atomic(path, data)`: a file via an fsynced temp sibling and a rename (old or new, whole).
- `write_dir_atomic(dest, write, point)`: a folder filled in a temp sibling, fsynced, swapped in;
  the previous version is moved aside and returned for the caller to delete last.
  Both give what they write the user's umask (`user_mode`), as a plain open()/mkdir() would.
- `fault_point(name)`: TSALLIS_RL_FAULT=<name> (or <name>#<n> for its n-th hit) SIGKILLs the
  process there, so tests can kill a write at each step of it.
- `file_lock(path)`: a cross-process lock that a killed holder never keeps.
- JSON: `json_safe` (the one policy: non-finite floats become null, numpy scalars plain numbers),
  `write_json`; JSON Lines: `read_jsonl` (a torn last line dropped, a bad inner line a DataError),
  `append_jsonl` (fsynced), `write_jsonl` (atomic).
- YAML: `read_yaml` / `parse_yaml` (`yaml.safe_load`, a ConfigError naming the file and line),
  `write_yaml` (atomic).
- `default_cache_dir()`: where built models are cached ($TSALLIS_RL_CACHE, else ~/.cache/tsallis-rl);
  `looks_like_path(name)`: a name that can only be a local path (not a hub id).

Every temporary name contains TMP and every moved-aside one OLD, so leftovers of a killed write are
recognisable (and removed by whoever owns the folder).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tsallis_rl.errors import ConfigError, DataError

TMP = ".tmp-"  # every temporary file or folder name contains this; stale ones are removed
OLD = ".old-"  # a previous version moved aside during a swap (restored if the swap was cut)


# --------------------------------------------------------------------------------------------------
# Fault injection (tests) and durable writes

_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here if TSALLIS_RL_FAULT names this point (`name` or `name#n`)."""
    want = os.environ.get("TSALLIS_RL_FAULT")
    if not want:
        return
    target, _, nth = want.partition("#")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every folder (bottom-up)."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(path: Path | int, *, folder: bool = False) -> None:
    """Give a file (or folder) the mode an ordinary open()/mkdir() would: 0666 (0777) less the
    umask. mkstemp/mkdtemp create 0600/0700, which would leave outputs readable by their owner
    only (teammates, or verl/Ray workers running as another user, could not read them)."""
    mode = (0o777 if folder else 0o666) & ~current_umask()
    if isinstance(path, int):
        os.fchmod(path, mode)
    else:
        os.chmod(path, mode)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` via an fsynced temp file and a rename: readers see old or new, whole.

    The file gets the user's umask like any ordinary write (not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP}", dir=path.parent)
    try:
        user_mode(fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(f"atomic:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def swap_in(tmp: Path, dest: Path, point: str) -> Path | None:
    """Rename complete `tmp` to `dest`; an existing `dest` is moved aside first (returned)."""
    aside = None
    if dest.exists():
        aside = dest.with_name(f"{dest.name}{OLD}{os.getpid()}")
        os.replace(dest, aside)
        fault_point(f"{point}:aside")
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return aside


def write_dir_atomic(
    dest: Path, write: Callable[[Path], None], point: str, *, keep_existing: bool = False
) -> Path | None:
    """Fill a temp sibling of `dest` with `write(tmp)`, fsync it, then swap it in as `dest`.

    Fault points: `<point>:written` (complete, not yet swapped) and `<point>:aside` (the old
    version moved aside, the new one not yet in). Returns the old version moved aside (the
    caller removes it once nothing refers to it), or None. With `keep_existing`, a `dest` that
    exists by then (another process built it first) is kept and the new copy discarded.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}{TMP}", dir=dest.parent))
    try:
        user_mode(tmp, folder=True)  # the user's umask, not mkdtemp's 0700
        write(tmp)
        fsync_tree(tmp)
        fault_point(f"{point}:written")
        if keep_existing:
            try:
                os.rename(tmp, dest)  # fails when another process put a non-empty dest first
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                return None
            fsync_dir(dest.parent)
            return None
        return swap_in(tmp, dest, point)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove(path: Path | None) -> None:
    """Delete a file or folder if it exists (a leftover, a version moved aside)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive cross-process lock (fcntl.flock) on `path`, held for the `with` block.

    The OS releases it when the holder dies, so a killed holder never blocks the next one.
    """
    import fcntl  # POSIX only: imported where it is used so the rest of this module imports anywhere

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(name: str) -> bool:
    """True when `name` can only be a local path (not a hub id such as `org/model`)."""
    return name.startswith((".", "/", "~")) or "\\" in name or not _HUB_ID.fullmatch(name)


def default_cache_dir() -> Path:
    """$TSALLIS_RL_CACHE, else ~/.cache/tsallis-rl."""
    env = os.environ.get("TSALLIS_RL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tsallis-rl"


# --------------------------------------------------------------------------------------------------
# JSON and JSON Lines


def json_safe(obj: Any) -> Any:
    """`obj` as strict JSON values: non-finite floats become None, numpy scalars and arrays plain
    numbers and lists, tuples lists, mapping keys strings (recursing into dicts and lists)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalar or array
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """`obj` (through `json_safe`) as a JSON file, atomically."""
    write_atomic(path, json.dumps(json_safe(obj), indent=indent) + "\n")


def jsonl_text(records: Iterable[dict[str, Any]]) -> str:
    """Records as JSON Lines text (through `json_safe`), one object a line."""
    return "".join(json.dumps(json_safe(r)) + "\n" for r in records)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSON Lines file atomically."""
    write_atomic(path, jsonl_text(records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only JSONL log; [] if absent.

    A torn LAST line (a kill during an append) is dropped with a warning naming the file; a bad
    line anywhere else is a DataError naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")  # only \n ends a record (json.dumps never writes a raw newline)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == len(lines) - 1:  # no newline after it: the append was cut
                warnings.warn(f"{path}: dropped a half-written last line ({exc})", stacklevel=2)
                break
            raise DataError(path, i + 1, None, f"corrupt record: {exc}") from None
        records.append(rec)
    return records


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line, fsynced (a kill can only tear this last line)."""
    line = json.dumps(json_safe(record)) + "\n"
    half = len(line) // 2
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line[:half])
        fh.flush()
        fault_point("metrics:torn")
        fh.write(line[half:])
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("metrics:appended")


# --------------------------------------------------------------------------------------------------
# YAML


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path` (`yaml.safe_load`; an empty file is None).

    ConfigError naming the file when it is missing, not UTF-8 (with the line) or not YAML.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)`; a ConfigError naming `source` if it is not valid YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None


def write_yaml(path: Path, data: Any) -> None:
    """`data` as a YAML file (`yaml.safe_dump`, keys in their order), atomically."""
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))
