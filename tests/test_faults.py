"""Fault injection: SIGKILL at every write point of a run, then --resume; nothing is lost.

TSALLIS_RL_FAULT=<point>#<n> makes `io.fault_point` kill the process at the n-th time it reaches
<point> (see tsallis_rl.io). For each point of a checkpoint save, a metrics.jsonl append, the
run directory's own files and the final results, a short training run (tiny model, 4 steps, a
checkpoint every step) is killed there in a forked process, optionally has its newest checkpoint
damaged as well, and is then resumed: it must end with the same metrics and final.json as an
uninterrupted run (no completed step lost). best/ replacement, the base-model build and
--overwrite are killed at each of their points directly and must leave a whole, loadable result.
Kills happen in forked children (real processes, real SIGKILL, no import cost).
"""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path

import pytest

from tsallis_rl import rundir
from tsallis_rl.cli import main
from tsallis_rl.io import OLD, TMP

pytestmark = pytest.mark.slow

TAG = "garl_q0.75"


def _argv(out: Path, model: Path) -> list[str]:
    return [
        "train", "--model", str(model), "--task", "chainsum", "--estimator", "garl", "--q", "0.75",
        "--steps", "4", "--save-every", "1", "--eval-every", "2", "--train-size", "12",
        "--val-size", "3", "--test-size", "3", "--eval-k", "2", "--batch-size", "2",
        "--num-rollouts", "3", "--thinking-budget", "6", "--answer-budget", "3", "--threads", "1",
        "--workers", "1", "--progress", "false", "--out", str(out),
    ]  # fmt: skip


def _outcome(out: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl and final.json of the run, minus wall-clock fields."""
    recs = [json.loads(x) for x in (out / TAG / "metrics.jsonl").read_text().splitlines()]
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in recs]
    final = json.loads((out / TAG / "final.json").read_text())
    final.pop("wall_seconds")
    return metrics, final


def _killed_in_fork(fault: str, fn, *args) -> None:
    """Call fn(*args) in a forked child with the fault armed (no re-import, so fast); the child
    must die by SIGKILL at that point."""
    pid = os.fork()
    if pid == 0:  # the child; reaching the end means the point was never hit
        code = 99
        try:
            os.environ["TSALLIS_RL_FAULT"] = fault
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            fn(*args)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"fault point {fault} was not reached (status {status})"
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> tuple[list[dict], dict]:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(out, tiny_model_dir)) == 0
    return _outcome(out)


def _damage(ckpts: Path, what: str) -> None:
    newest = rundir.checkpoint_dirs(ckpts)[0]
    if what == "latest":
        (ckpts / "latest").write_text("step-999999\x00garbage")
        return
    path = newest / what
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


# (point#n, damage after the kill, point#n of a second kill during the first resume): metrics appends
# are 1 eval@0, 2 train@1, 3 train@2, 4 eval@2, 5 train@3, 6 train@4, 7 eval@4; checkpoints are
# saved after steps 1, 2, 3, 4
RUN_FAULTS = [
    ("atomic:.tsallis-rl-run#1", None, None),  # the suite's run-dir marker
    ("atomic:config.yaml#1", None, None),  # the suite's config
    ("atomic:config.yaml#2", None, None),  # the run's config
    ("atomic:metrics.jsonl#1", None, None),  # a fresh start clears the log
    ("best:written#1", None, None),
    ("best:swapped#1", None, None),
    ("metrics:torn#3", None, None),
    ("metrics:appended#5", None, None),
    ("ckpt:weights#2", None, None),
    ("ckpt:written#2", None, None),
    ("ckpt:renamed#2", None, None),
    ("atomic:latest#2", None, None),
    ("ckpt:latest#2", None, None),
    ("ckpt:prune#1", None, None),
    ("ckpt:weights#4", None, None),  # the final save
    ("ckpt:latest#4", None, None),
    ("atomic:test_records.jsonl#1", None, None),
    ("atomic:final.json#1", None, None),
    ("metrics:torn#6", "model.safetensors", None),  # and the newest checkpoint is torn
    ("metrics:torn#6", "trainer_state.pt", None),
    ("metrics:torn#6", "latest", None),
    # the resume falls back to step 2 and saves step 3 again beside the torn one: killed there too
    ("metrics:torn#6", "model.safetensors", "ckpt:aside#1"),
]


@pytest.mark.parametrize(
    "fault,damage,again", RUN_FAULTS, ids=["+".join(map(str, case)) for case in RUN_FAULTS]
)
def test_a_run_killed_at_each_write_point_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_model_dir, reference, fault, damage, again
):
    out = tmp_path / "run"
    _killed_in_fork(fault, main, _argv(out, tiny_model_dir))
    if damage:
        _damage(out / TAG / "checkpoints", damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped damaged checkpoints / a dropped torn line
        if again:
            _killed_in_fork(again, main, [*_argv(out, tiny_model_dir), "--resume"])
        assert main([*_argv(out, tiny_model_dir), "--resume"]) == 0
    assert _outcome(out) == reference
    left = [p for p in out.rglob("*") if TMP in p.name or OLD in p.name]
    assert not left, left


def _version(v: str):
    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(v)
        (tmp / "model.safetensors").write_text(v * 1000)

    return write


@pytest.mark.parametrize(
    "fault,survivor", [("best:written", "1"), ("best:aside", "1"), ("best:swapped", "2")]
)
def test_a_best_replacement_killed_at_each_point_leaves_a_whole_best(tmp_path, fault, survivor):
    run = tmp_path / "run"
    run.mkdir()
    rundir.save_best(run, _version("1"))
    _killed_in_fork(fault, rundir.save_best, run, _version("2"))
    rundir.clean_stale(run)  # what a resume does first
    best = run / "best"
    assert (best / "config.json").read_text() == survivor
    assert (best / "model.safetensors").read_text() == survivor * 1000
    assert sorted(p.name for p in run.iterdir()) == ["best"]


TINY_BASE = dict(
    hidden_size=16,
    num_layers=1,
    num_heads=2,
    intermediate_size=32,
    steps=2,
    batch_size=4,
    threads=1,
)


@pytest.mark.parametrize("fault", ["base:weights", "base:written"])
def test_a_base_model_build_killed_at_each_point_is_rebuilt_whole(tmp_path, fault):
    from transformers import AutoModelForCausalLM

    from tsallis_rl.models.basemodel import BaseModelConfig, ensure_base_model

    cfg = BaseModelConfig(**TINY_BASE)
    _killed_in_fork(fault, ensure_base_model, cfg, tmp_path)
    built = [p for p in tmp_path.iterdir() if TMP not in p.name and p.suffix != ".lock"]
    assert not built  # only a temp folder (and the lock file) was left
    path = ensure_base_model(cfg, tmp_path, progress=False)
    AutoModelForCausalLM.from_pretrained(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]


def test_an_overwrite_killed_after_moving_the_old_run_aside_loses_nothing_and_is_cleaned(tmp_path):
    from tsallis_rl.config import TrainConfig

    out = tmp_path / "run"
    rundir.prepare_out(TrainConfig(out=str(out)))
    (out / "summary.json").write_text("old results")
    again = TrainConfig(out=str(out), overwrite=True, steps=7)
    _killed_in_fork("overwrite:aside", rundir.prepare_out, again)
    (aside,) = tmp_path.glob(".run.old-*")  # the old run, whole, until the new one exists
    assert (aside / "summary.json").read_text() == "old results"
    rundir.prepare_out(again)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert rundir.is_run_dir(out) and not (out / "summary.json").exists()
