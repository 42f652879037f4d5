"""Run directories and checkpoints: the one module that writes, swaps, checks and recovers them.

A run directory holds `.tsallis-rl-run` (a marker only this project writes), config.yaml (written
once, never rewritten), resumes.jsonl (what each --resume changed), metrics.jsonl (append-only),
checkpoints/step-N (weights + trainer_state.pt), checkpoints/latest, best/ and final.json.

Every replacement is "new complete first, then swap, old removed last": files are written into a
`*.tmp-*` sibling and fsynced, renamed in, and only then is the old copy deleted, so a SIGKILL at
any point leaves the previous or the new version loadable. `fault_point(name)` marks each such
point; TSALLIS_RL_FAULT=<name> (or <name>#<n> for its n-th hit) kills the process there (tests).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tsallis_rl.config import ConfigError

MARKER = ".tsallis-rl-run"
MARKER_VERSION = 1
TMP = ".tmp-"  # every temporary file or folder name contains this; stale ones are removed
OLD = ".old-"  # a previous version moved aside during a swap (restored if the swap was cut)

# fields that may differ between a run's config.yaml and a --resume of it (they change how long,
# how often or how visibly it runs, not what it learns); any other difference is refused
RESUME_MAY_CHANGE = (
    "steps",
    "eval_every",
    "save_every",
    "progress",
    "tensorboard",
    "wandb",
    "wandb_project",
    "resume",
    "overwrite",
    "workers",
    "threads",
    "micro_batch",
    "share_prompt",
    "out",
)

T = TypeVar("T")


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read (torn by a kill, truncated, corrupted)."""


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


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` via an fsynced temp file and a rename: readers see old or new, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP}", dir=path.parent)
    try:
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


def json_safe(obj: Any) -> Any:
    """`obj` with non-finite floats as None (strict JSON), recursing into dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# JSONL logs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of an append-only JSONL log; [] if absent.

    A torn LAST line (a kill during an append) is dropped with a warning naming the file; a bad
    line anywhere else is a ConfigError naming the file and line.
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
            raise ConfigError(f"{path}, line {i + 1}: corrupt record: {exc}") from None
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


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL log atomically."""
    write_atomic(path, "".join(json.dumps(json_safe(r)) + "\n" for r in records))


# --------------------------------------------------------------------------------------------------
# Run directories: marker, check (no writes), prepare (writes), resume config check


def is_run_dir(path: Path) -> bool:
    """True if `path` is a directory carrying this project's marker file."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == "tsallis-rl run"
    except (ValueError, AttributeError, OSError):
        return False


def mark_run_dir(path: Path) -> None:
    """Write the marker that makes `path` a run directory (and so deletable by --overwrite)."""
    payload = {"format": "tsallis-rl run", "version": MARKER_VERSION, "created": time.time()}
    write_atomic(Path(path) / MARKER, json.dumps(payload) + "\n")


def _saved_config(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the saved config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the saved config is not a mapping")
    return data


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} for every field of `new` that differs from `saved`.

    A field the saved config lacks (added to the project later) counts as unchanged.
    """
    return {k: (saved[k], v) for k, v in new.items() if k in saved and saved[k] != v}


def check_resume_config(config_path: Path, new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The allowed changes of a --resume; a ConfigError naming every other changed field."""
    changes = config_changes(_saved_config(config_path), new)
    refused = {k: v for k, v in changes.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        what = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"resume: {config_path} was run with a different config ({what}); only "
            f"{', '.join(RESUME_MAY_CHANGE)} may change on --resume (use a new --out instead)"
        )
    return {k: v for k, v in changes.items() if k not in ("resume", "overwrite")}


def check_out(cfg: Any) -> None:
    """Check that cfg.out may be used as asked (fresh, --resume, --overwrite); writes nothing."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a directory")
    if not out.exists() or not _has_content(out):
        return
    if not is_run_dir(out):
        raise ConfigError(
            f"out: {out} exists and is not a tsallis-rl run directory (no {MARKER}); "
            "refusing to write into it or delete it; choose another --out"
        )
    if cfg.overwrite:
        return
    if not cfg.resume:
        raise ConfigError(
            f"out: {out} already exists; pass --resume to continue it or --overwrite to replace it"
        )
    if (out / "config.yaml").exists():
        check_resume_config(out / "config.yaml", cfg.to_dict())


def _has_content(folder: Path) -> bool:
    """True if `folder` holds anything but temporary files of a killed write (ours)."""
    return any(TMP not in p.name for p in folder.iterdir())


def prepare_out(cfg: Any) -> Path:
    """Create (or replace, or reopen) cfg.out after `check_out` and every other check passed.

    --overwrite moves the old run aside, creates the new one, and only then deletes the old one.
    A fresh run gets the marker and config.yaml; a resume appends its changes to resumes.jsonl.
    """
    check_out(cfg)
    out = Path(cfg.out)
    if cfg.overwrite and out.exists() and _has_content(out):
        os.replace(out, out.with_name(f".{out.name}{OLD}{os.getpid()}"))
        fault_point("overwrite:aside")
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    start_run_dir(out, cfg.to_dict(), resume=cfg.resume)
    # the old run, and any an earlier --overwrite was killed before deleting, go last
    for aside in out.parent.glob(f".{out.name}{OLD}*"):
        if is_run_dir(aside):
            shutil.rmtree(aside)
    return out


def start_run_dir(run_dir: Path, cfg_dict: dict[str, Any], *, resume: bool) -> None:
    """Mark `run_dir` and write its config once; on a resume check and record what changed."""
    import yaml

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_run_dir(run_dir):  # first, so that a kill from here on leaves a resumable run dir
        mark_run_dir(run_dir)
    config = run_dir / "config.yaml"
    if resume and config.exists():
        changes = check_resume_config(config, cfg_dict)
        entry = {"time": time.time(), "changed": {k: list(v) for k, v in changes.items()}}
        history = run_dir / "resumes.jsonl"
        rewrite_jsonl(history, [*read_jsonl(history), entry])
    else:
        write_atomic(config, yaml.safe_dump(cfg_dict, sort_keys=False))


def clean_stale(run_dir: Path) -> list[Path]:
    """Remove temporary leftovers of killed writes; put back a best/ whose swap was cut.

    Returns what was removed.
    """
    run_dir = Path(run_dir)
    removed = []
    best = run_dir / "best"
    asides = sorted(run_dir.glob(f"best{OLD}*"))
    if asides and not best.exists():  # killed between moving the old best aside and the swap-in
        os.replace(asides[-1], best)
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if TMP in p.name or OLD in p.name:
                _remove(p)
                removed.append(p)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _swap_in(tmp: Path, dest: Path, point: str) -> Path | None:
    """Rename complete `tmp` to `dest`; an existing `dest` is moved aside first (returned)."""
    aside = None
    if dest.exists():
        aside = dest.with_name(f"{dest.name}{OLD}{os.getpid()}")
        os.replace(dest, aside)
        fault_point(f"{point}:aside")
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return aside


def save_checkpoint(
    ckpts: Path, step: int, write: Callable[[Path], None], *, keep: int = 2
) -> Path:
    """checkpoints/step-N: `write(tmp)` fills a temp folder, which is fsynced and renamed in;
    then `latest` is updated atomically, and only then are all but the `keep` newest removed."""
    ckpts = Path(ckpts)
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP}", dir=ckpts))
    write(tmp)
    fsync_tree(tmp)
    fault_point("ckpt:written")
    aside = _swap_in(tmp, final, "ckpt")
    fault_point("ckpt:renamed")
    write_atomic(ckpts / "latest", final.name + "\n")
    fault_point("ckpt:latest")
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    for old in checkpoint_dirs(ckpts)[keep:]:
        doomed = old.with_name(f"{old.name}{TMP}prune")
        os.replace(old, doomed)  # a cut removal leaves a *.tmp-* name, never a half step-N
        fault_point("ckpt:prune")
        shutil.rmtree(doomed, ignore_errors=True)
    return final


def checkpoint_dirs(ckpts: Path) -> list[Path]:
    """checkpoints/step-N folders, newest first (temporary ones excluded)."""
    if not Path(ckpts).is_dir():
        return []
    found = [p for p in Path(ckpts).glob("step-*") if p.is_dir() and TMP not in p.name]
    return sorted((p for p in found if OLD not in p.name), key=lambda p: p.name, reverse=True)


def load_checkpoint(ckpts: Path, read: Callable[[Path], T]) -> tuple[Path, T] | None:
    """`read` the newest intact checkpoint: `latest` first, then step-N newest first.

    `read` raises CorruptCheckpoint for a damaged file; that checkpoint is skipped with a warning
    naming it. None if there is no checkpoint; a ConfigError if every one is damaged.
    """
    ckpts = Path(ckpts)
    order = checkpoint_dirs(ckpts)
    pointer = ckpts / "latest"
    if pointer.is_file():
        named = ckpts / pointer.read_text(errors="replace").strip()
        if named in order:
            order.remove(named)
            order.insert(0, named)
    problems = []
    for ckpt in order:
        try:
            return ckpt, read(ckpt)
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
            warnings.warn(f"skipping damaged checkpoint {ckpt}: {exc}", stacklevel=2)
    if problems:
        raise ConfigError(
            f"resume: no intact checkpoint in {ckpts}: "
            + "; ".join(problems)
            + " (--overwrite starts the run again)"
        )
    return None


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """trainer_state.pt of a checkpoint (weights_only); CorruptCheckpoint naming it if damaged."""
    import torch

    path = Path(ckpt) / "trainer_state.pt"
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} is missing")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torn zip, bad pickle, truncated tensor data
        raise CorruptCheckpoint(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CorruptCheckpoint(f"{path} is not a trainer state")
    return state


def read_weights(ckpt: Path) -> dict[str, Any]:
    """All tensors of a checkpoint's *.safetensors files; CorruptCheckpoint naming a damaged one."""
    from safetensors.torch import load_file

    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise CorruptCheckpoint(f"no *.safetensors weights in {ckpt}")
    state: dict[str, Any] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors' own errors say nothing of the file
            raise CorruptCheckpoint(f"{f} is damaged ({type(exc).__name__}: {exc})") from None
    return state


def load_weights(model: Any, state: dict[str, Any], source: Path) -> None:
    """Load saved weights into `model` (plain or peft) strictly; a mismatch names `source`."""
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        try:
            result = set_peft_model_state_dict(model, state)
        except RuntimeError as exc:
            raise ConfigError(
                f"{source}: weights do not fit the model: {_first_line(exc)}"
            ) from None
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ConfigError(f"{source}: unexpected adapter weights {_some(unexpected)}")
        return
    own = model.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        raise ConfigError(
            f"{source}: saved weights have another architecture than the model: {_some(shapes)}"
        )
    unexpected = [k for k in state if k not in own]
    loaded_ptrs = {own[k].data_ptr() for k in state if k in own}
    # tied weights (lm_head = embeddings) are saved once: missing only if not shared with a loaded one
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
    if unexpected or missing:
        raise ConfigError(
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


def save_best(run_dir: Path, write: Callable[[Path], None]) -> Path:
    """best/: `write(tmp)` fills a temp folder, fsynced; then swapped in, the old one removed last."""
    dest = Path(run_dir) / "best"
    tmp = Path(tempfile.mkdtemp(prefix=f"best{TMP}", dir=run_dir))
    write(tmp)
    fsync_tree(tmp)
    fault_point("best:written")
    aside = _swap_in(tmp, dest, "best")
    fault_point("best:swapped")
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------------------------------
# Loggers


class Loggers:
    """metrics.jsonl always (append-only, fsynced); TensorBoard and W&B when asked."""

    def __init__(self, run_dir: Path, cfg: Any, name: str) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.sinks: list[Callable[[dict[str, Any]], None]] = []
        self.closers: list[Callable[[], Any]] = []
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            self.closers.append(tb.close)
            self.sinks.append(
                lambda rec: [
                    tb.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])
                    for k, v in rec.items()
                    if isinstance(v, float | int) and k != "step"
                ]
            )
        if cfg.wandb:
            import wandb

            wb = wandb.init(
                project=cfg.wandb_project, name=name, config=cfg.to_dict(), dir=str(run_dir)
            )
            self.closers.append(wb.finish)
            self.sinks.append(
                lambda rec: wb.log(
                    {f"{rec['kind']}/{k}": v for k, v in rec.items() if isinstance(v, float | int)},
                    step=rec["step"],
                )
            )

    def close(self) -> None:
        """Flush and close the TensorBoard / W&B sinks."""
        for close in self.closers:
            close()

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)
        for sink in self.sinks:
            sink(record)

    def truncate_after(self, step: int) -> None:
        """Keep the records up to `step` (a resumed run rewrites the later ones); drops a torn tail."""
        rewrite_jsonl(self.path, [r for r in read_jsonl(self.path) if r["step"] <= step])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive cross-process lock (fcntl.flock) on `path`, held for the `with` block.

    The OS releases it when the holder dies, so a killed holder never blocks the next one.
    """
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
