"""Run directories and checkpoints: the one module that writes, swaps, checks and recovers them.

A run directory holds `.tsallis-rl-run` (a marker only this project writes), config.yaml (written
once, never rewritten), resumes.jsonl (what each --resume changed), metrics.jsonl (append-only),
checkpoints/step-N (weights + trainer_state.pt), checkpoints/latest, best/ and final.json.

Every replacement is "new complete first, then swap, old removed last" (`tsallis_rl.io`'s atomic
writes): a SIGKILL at any point leaves the previous or the new version loadable; `io.fault_point`
marks each such point for the fault-injection tests.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tsallis_rl.errors import CheckpointError, ConfigError
from tsallis_rl.io import (
    OLD,
    TMP,
    fault_point,
    read_jsonl,
    read_yaml,
    remove,
    write_atomic,
    write_dir_atomic,
    write_jsonl,
    write_yaml,
)

MARKER = ".tsallis-rl-run"
MARKER_VERSION = 1

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


def run_dir_kind(path: Path) -> str | None:
    """The command that made a marked folder (train, eval, study, theory, export); None if unmarked."""
    if not is_run_dir(path):
        return None
    try:
        return str(json.loads((Path(path) / MARKER).read_text()).get("kind", "train"))
    except (ValueError, OSError):
        return None


def mark_run_dir(path: Path, kind: str = "train") -> None:
    """Write the marker that makes `path` our output folder (and so replaceable by --overwrite);
    `kind` records the command that made it."""
    payload = {
        "format": "tsallis-rl run", "version": MARKER_VERSION, "kind": kind,
        "created": time.time(),
    }  # fmt: skip
    write_atomic(Path(path) / MARKER, json.dumps(payload) + "\n")


def _saved_config(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the saved config is not a mapping")
    return data


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} for every field of `new` that differs from `saved`.

    A field the saved config lacks (added to the project later) counts as unchanged, and so does
    a relative path an older run saved that names the same place as the new absolute one.
    """
    return {
        k: (saved[k], v)
        for k, v in new.items()
        if k in saved and saved[k] != v and not _same_path(saved[k], v)
    }


def _same_path(saved: Any, new: Any) -> bool:
    return (
        isinstance(saved, str) and isinstance(new, str) and os.path.isabs(new)
        and not os.path.isabs(saved) and os.path.abspath(os.path.expanduser(saved)) == new
    )  # fmt: skip


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


def check_out_dir(out: Path, *, kind: str, overwrite: bool, resume: bool | None = None) -> None:
    """The one --out policy of every command that writes a folder; checks, writes nothing.

    An absent or empty folder is used. A file is refused. An existing folder without this
    project's marker is refused: never written into, never deleted. So is a marked folder that
    another command (`kind`: train, eval, study, theory, export) made: `eval --out RUN --overwrite`
    never replaces a training run. A marked one of the same kind needs --overwrite (it is
    replaced: see `claim_out_dir`) or, for commands that can continue their work (`resume` not
    None), --resume. With --resume, the folder must exist (a typo is not a fresh start). Raises
    ConfigError naming the folder and the way out.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file, not a directory")
    if resume and not overwrite and not out.exists():  # a typo in --out, not a fresh start
        raise ConfigError(f"resume: nothing to resume at {out} (no such folder); check --out")
    if not out.exists() or not _has_content(out):  # (a run killed before its first write: resumed)
        return
    if not is_run_dir(out):
        raise ConfigError(
            f"out: {out} exists and is not a tsallis-rl run directory (no {MARKER}); "
            "refusing to write into it or delete it; choose another --out"
        )
    made_by = run_dir_kind(out)
    if made_by != kind:
        raise ConfigError(
            f"out: {out} holds the output of `tsallis-rl {made_by}`, not of `{kind}`; refusing "
            "to write into it or replace it; choose another --out"
        )
    if overwrite or resume:
        return
    ways = (
        "--overwrite to replace it"
        if resume is None
        else ("--resume to continue it or --overwrite to replace it")
    )
    raise ConfigError(f"out: {out} already exists; pass {ways}")


def claim_out_dir(
    out: Path, *, overwrite: bool, kind: str, setup: Callable[[Path], None] | None = None
) -> Path:
    """Create (or replace, or reopen) `out` as a marked folder, once `check_out_dir` and every
    other check passed.

    --overwrite moves the old folder aside, creates and marks the new one, runs `setup(out)`
    (e.g. writes its config), and only then deletes the old one (a kill in between leaves one
    of them whole; a later claim removes the leftover).
    """
    out = Path(out)
    if overwrite and out.exists() and _has_content(out):
        os.replace(out, out.with_name(f".{out.name}{OLD}{os.getpid()}"))
        fault_point("overwrite:aside")
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    if not is_run_dir(out):  # first, so that a kill from here on leaves a marked folder
        mark_run_dir(out, kind)
    if setup is not None:
        setup(out)
    # the old folder, and any an earlier --overwrite was killed before deleting, go last
    for aside in out.parent.glob(f".{out.name}{OLD}*"):
        if is_run_dir(aside):
            shutil.rmtree(aside)
    return out


def check_out(cfg: Any) -> None:
    """Check that a training run's cfg.out may be used as asked (fresh, --resume, --overwrite),
    and that a --resume changes only what may change; writes nothing."""
    out = Path(cfg.out)
    check_out_dir(out, kind="train", overwrite=cfg.overwrite, resume=cfg.resume)
    if cfg.resume and not cfg.overwrite and (out / "config.yaml").exists():
        check_resume_config(out / "config.yaml", cfg.to_dict())


def _has_content(folder: Path) -> bool:
    """True if `folder` holds anything but temporary files of a killed write (ours)."""
    return any(TMP not in p.name for p in folder.iterdir())


def prepare_out(cfg: Any) -> Path:
    """Create (or replace, or reopen) a training run's cfg.out after every check passed.

    A fresh run gets the marker and config.yaml; a resume appends its changes to resumes.jsonl.
    """
    check_out(cfg)
    return claim_out_dir(
        Path(cfg.out),
        overwrite=cfg.overwrite,
        kind="train",
        setup=lambda out: start_run_dir(out, cfg.to_dict(), resume=cfg.resume),
    )


def start_run_dir(run_dir: Path, cfg_dict: dict[str, Any], *, resume: bool) -> None:
    """Mark `run_dir` and write its config once; on a resume check and record what changed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_run_dir(run_dir):  # first, so that a kill from here on leaves a resumable run dir
        mark_run_dir(run_dir, "train")
    config = run_dir / "config.yaml"
    if resume and config.exists():
        changes = check_resume_config(config, cfg_dict)
        entry = {"time": time.time(), "changed": {k: list(v) for k, v in changes.items()}}
        history = run_dir / "resumes.jsonl"
        write_jsonl(history, [*read_jsonl(history), entry])
    else:
        write_yaml(config, cfg_dict)


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
                remove(p)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    ckpts: Path, step: int, write: Callable[[Path], None], *, keep: int = 2
) -> Path:
    """checkpoints/step-N: `write(tmp)` fills a temp folder, which is fsynced and renamed in;
    then `latest` is updated atomically, and only then are all but the `keep` newest removed."""
    ckpts = Path(ckpts)
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step:06d}"
    aside = write_dir_atomic(final, write, "ckpt")
    fault_point("ckpt:renamed")
    write_atomic(ckpts / "latest", final.name + "\n")
    fault_point("ckpt:latest")
    remove(aside)
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

    `read` raises CheckpointError for a damaged file; that checkpoint is skipped with a warning
    naming it. None if there is no checkpoint; a CheckpointError if every one is damaged.
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
        except CheckpointError as exc:
            problems.append(str(exc))
            warnings.warn(f"skipping damaged checkpoint {ckpt}: {exc}", stacklevel=2)
    if problems:
        raise CheckpointError(
            f"resume: no intact checkpoint in {ckpts}: "
            + "; ".join(problems)
            + " (--overwrite starts the run again)"
        )
    return None


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """trainer_state.pt of a checkpoint (weights_only); CheckpointError naming it if damaged."""
    import torch

    path = Path(ckpt) / "trainer_state.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torn zip, bad pickle, truncated tensor data
        raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path} is not a trainer state")
    return state


def read_weights(ckpt: Path) -> dict[str, Any]:
    """All tensors of a checkpoint's *.safetensors files; CheckpointError naming a damaged one."""
    from safetensors.torch import load_file

    files = sorted(Path(ckpt).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {ckpt}")
    state: dict[str, Any] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors' own errors say nothing of the file
            raise CheckpointError(f"{f} is damaged ({type(exc).__name__}: {exc})") from None
    return state


def save_best(run_dir: Path, write: Callable[[Path], None]) -> Path:
    """best/: `write(tmp)` fills a temp folder, fsynced; then swapped in, the old one removed last."""
    dest = Path(run_dir) / "best"
    aside = write_dir_atomic(dest, write, "best")
    fault_point("best:swapped")
    remove(aside)
    return dest
