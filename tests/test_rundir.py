"""Run directories and checkpoints (tsallis_rl.rundir): nothing a user or a kill does loses work.

One test per finding of issue 12 (items 1-5, 6, 10; item 7 is in test_export_verl.py); each of
them fails on the code before the rundir module. Kills at every write point are in test_faults.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tsallis_rl import rundir
from tsallis_rl.cli import main
from tsallis_rl.config import TrainConfig
from tsallis_rl.errors import CheckpointError, ConfigError, ModelError
from tsallis_rl.io import file_lock, read_jsonl
from tsallis_rl.suite import build_trainer
from tsallis_rl.trainer import Trainer

MARKER = {"format": "tsallis-rl run", "version": 1}


def _fail_if_model_loaded(monkeypatch):
    import tsallis_rl.suite as exp

    def boom(*a, **k):
        raise AssertionError("a model was loaded (or the base model built)")

    monkeypatch.setattr(exp, "load_model", boom)
    monkeypatch.setattr("tsallis_rl.models.basemodel.ensure_base_model", boom)


def _run_dir(path: Path, cfg: TrainConfig) -> Path:
    """A run directory as a finished run leaves it (marker, config.yaml, a result)."""
    path.mkdir(parents=True)
    (path / ".tsallis-rl-run").write_text(json.dumps(MARKER))
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (path / "summary.json").write_text("[]")
    return path


def _trainer(run_dir: Path, model_dir: Path, accelerator=None, **overrides) -> Trainer:
    cfg = TrainConfig(
        model=str(model_dir), task="chainsum", batch_size=2, num_rollouts=3, thinking_budget=6,
        answer_budget=3, val_size=2, test_size=2, train_size=10, eval_k=2, progress=False,
        out=str(run_dir), threads=1, steps=2, eval_every=0,
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, **overrides).validate()
    return build_trainer(cfg, run_dir, accelerator=accelerator)


# -- item 1: --overwrite --------------------------------------------------------------------------


def test_overwrite_refuses_a_folder_that_only_holds_a_config_yaml(tmp_path, monkeypatch, capsys):
    _fail_if_model_loaded(monkeypatch)
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "thesis.tex").write_text("years of work")
    assert main(["train", "--out", str(mine), "--overwrite"]) == 2
    assert "not a tsallis-rl run directory" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_deletes_nothing_when_the_model_does_not_load(tmp_path, capsys):
    old = _run_dir(tmp_path / "run", TrainConfig(out=str(tmp_path / "run")))
    argv = ["train", "--out", str(old), "--overwrite", "--model", str(tmp_path / "typo")]
    assert main([*argv, "--task", "chainsum", "--progress", "false"]) == 2
    assert "model" in capsys.readouterr().err
    assert (old / "summary.json").read_text() == "[]"  # the previous run is intact


def test_overwrite_replaces_a_run_directory_only_after_creating_the_new_one(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "run"), overwrite=True)
    old = _run_dir(tmp_path / "run", cfg)
    out = rundir.prepare_out(cfg)
    assert out == old and rundir.is_run_dir(out)
    assert not (out / "summary.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the moved-aside copy is gone


def test_check_out_writes_nothing_and_refuses_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        rundir.check_out(TrainConfig(out=str(f)))
    rundir.check_out(TrainConfig(out=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()


# -- item 2: --resume with another config ---------------------------------------------------------


def test_resume_refuses_a_changed_config_naming_each_field_and_both_values(
    tmp_path, monkeypatch, capsys
):
    _fail_if_model_loaded(monkeypatch)
    out = _run_dir(tmp_path / "run", TrainConfig(out=str(tmp_path / "run")))
    saved = (out / "config.yaml").read_text()
    argv = ["train", "--out", str(out), "--resume", "--lr", "0.5", "--seed", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"lr: saved {TrainConfig().lr!r}, now 0.5" in err and "seed: saved 0, now 3" in err
    assert (out / "config.yaml").read_text() == saved
    assert "Traceback" not in err


def test_resume_may_change_steps_and_the_change_is_recorded_not_hidden(tmp_path):
    out = tmp_path / "run"
    rundir.prepare_out(TrainConfig(out=str(out), steps=10))
    saved = (out / "config.yaml").read_text()
    rundir.prepare_out(TrainConfig(out=str(out), steps=20, resume=True, progress=False))
    assert (out / "config.yaml").read_text() == saved  # the original config, as it was run
    (entry,) = read_jsonl(out / "resumes.jsonl")
    assert entry["changed"] == {"steps": [10, 20], "progress": [True, False]}


def test_every_field_outside_the_allow_list_is_refused_on_resume(tmp_path):
    out = tmp_path / "run"
    base = TrainConfig(out=str(out))
    rundir.prepare_out(base)
    changed = {"data": "other.jsonl", "q": 0.5, "estimator": "paft", "num_rollouts": 4}
    for name, value in changed.items():
        cfg = dataclasses.replace(base, resume=True, **{name: value})
        with pytest.raises(ConfigError, match=f"{name}: saved"):
            rundir.check_out(cfg)


# -- item 3: torn checkpoints, strict weights ------------------------------------------------------


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.pt"])
def test_a_torn_checkpoint_falls_back_to_the_previous_one_with_a_warning_naming_it(
    tmp_path, tiny_model_dir, damaged
):
    tr = _trainer(tmp_path, tiny_model_dir)
    tr.step = 1
    first = tr.save_checkpoint()
    tr.step = 2
    second = tr.save_checkpoint()
    path = second / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = _trainer(tmp_path, tiny_model_dir, resume=True)
    with pytest.warns(UserWarning, match=str(path)):
        assert again.load_checkpoint()
    assert again.step == 1
    for name, p in tr.policy.state_dict().items():  # weights of step 1 (unchanged since)
        assert torch.equal(p, again.policy.state_dict()[name]), name
    assert first.exists()


def test_when_every_checkpoint_is_torn_the_error_names_the_files(tmp_path, tiny_model_dir):
    tr = _trainer(tmp_path, tiny_model_dir)
    tr.step = 1
    ckpt = tr.save_checkpoint()
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 10)
    again = _trainer(tmp_path, tiny_model_dir, resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="model.safetensors"):
            again.load_checkpoint()


def test_weights_of_another_architecture_are_a_clear_error(tmp_path, tiny_model_dir):
    from tsallis_rl.models.tiny import save_tiny_model
    from tsallis_rl.tasks.chainsum import ALPHABET

    tr = _trainer(tmp_path / "run", tiny_model_dir)
    tr.step = 1
    tr.save_checkpoint()
    wider = save_tiny_model(tmp_path / "wide", ALPHABET, hidden_size=48, num_layers=2, num_heads=2)
    other = _trainer(tmp_path / "run", wider, resume=True)
    with pytest.raises(ModelError, match="another architecture"):
        other.load_checkpoint()


# -- item 4: a torn metrics.jsonl ------------------------------------------------------------------


def test_resume_after_a_torn_metrics_line_keeps_every_completed_step(tmp_path, tiny_model_dir):
    tr = _trainer(tmp_path, tiny_model_dir, steps=3, save_every=1)
    tr.fit()
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 4, "lo')  # a kill during the next append
    again = _trainer(tmp_path, tiny_model_dir, steps=4, save_every=1, resume=True)
    with pytest.warns(UserWarning, match="half-written"):
        again.fit()
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


# -- item 5: saved once, swapped in, fsynced, no stale temp folders --------------------------------


def test_the_last_step_is_saved_once_when_it_is_also_a_save_step(
    tmp_path, tiny_model_dir, monkeypatch
):
    tr = _trainer(tmp_path, tiny_model_dir, steps=2, save_every=2)
    saves = []
    real = Trainer.save_checkpoint
    monkeypatch.setattr(
        Trainer, "save_checkpoint", lambda self: saves.append(self.step) or real(self)
    )
    tr.fit()
    assert saves == [2]
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000002"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000002"]


def test_a_checkpoint_save_keeps_the_old_one_until_the_new_one_is_in(tmp_path):
    ckpts = tmp_path / "checkpoints"
    seen = []

    def write(step):
        def fill(tmp):
            seen.append(sorted(p.name for p in rundir.checkpoint_dirs(ckpts)))
            (tmp / "trainer_state.pt").write_text(str(step))

        return fill

    for step in (1, 2, 3, 3):  # the last one: the same step saved again (e.g. after a fallback)
        rundir.save_checkpoint(ckpts, step, write(step))
    assert seen == [
        [],
        ["step-000001"],
        ["step-000001", "step-000002"],
        ["step-000002", "step-000003"],
    ]
    assert [p.name for p in rundir.checkpoint_dirs(ckpts)] == ["step-000003", "step-000002"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000002", "step-000003"]


def test_stale_temp_folders_are_removed_and_a_cut_best_swap_is_undone(tmp_path):
    (tmp_path / "checkpoints" / "step-000002.tmp-abc").mkdir(parents=True)
    (tmp_path / "best.tmp-xyz").mkdir()
    (tmp_path / ".metrics.jsonl.tmp-q").write_text("")
    aside = tmp_path / "best.old-123"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    rundir.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoints"]
    assert (tmp_path / "best" / "config.json").exists()
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_resume_removes_stale_temp_folders(tmp_path, tiny_model_dir):
    tr = _trainer(tmp_path, tiny_model_dir, steps=1)
    tr.fit()
    stale = tmp_path / "checkpoints" / "step-000002.tmp-dead"
    stale.mkdir()
    _trainer(tmp_path, tiny_model_dir, steps=2, resume=True).fit()
    assert not stale.exists()


# -- item 6: two processes build the base model at once -------------------------------------------


def _tiny_base_cfg():
    from tsallis_rl.models.basemodel import BaseModelConfig

    return BaseModelConfig(
        hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, steps=2, batch_size=4,
        threads=1,
    )  # fmt: skip


def test_a_second_base_model_build_waits_for_the_first_and_reuses_it(tmp_path):
    """While another process holds the build lock, a second build waits (building nothing), then
    returns the model the first one built."""
    from tsallis_rl.models.basemodel import ensure_base_model, pretrain

    cfg = _tiny_base_cfg()
    path = tmp_path / f"chainsum-base-{cfg.key()}"
    with file_lock(path.with_name(path.name + ".lock")):  # "the first process"
        pid = os.fork()
        if pid == 0:  # the second process
            code = 1
            try:
                code = 0 if ensure_base_model(cfg, tmp_path, progress=False) == path else 3
            finally:
                os._exit(code)
        time.sleep(3)  # long enough for an unlocked build of this size to start and finish
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the second build did not wait for the lock"
        assert not path.exists() and not list(tmp_path.glob("*.tmp-*"))
        pretrain(cfg, path, progress=False)
        stamp = (path / "base_model.json").stat().st_mtime_ns
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (path / "base_model.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert ensure_base_model(cfg, tmp_path, progress=False) == path  # built cache: success


# -- item 10: each rank restores its own sampling RNG ----------------------------------------------


class _FakeAccelerator:
    """Just enough of accelerate.Accelerator for one rank of a two-process run, in one process."""

    def __init__(self, rank: int, world: int = 2) -> None:
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0

    def prepare(self, *objs):
        return objs

    def unwrap_model(self, model):
        return model

    def backward(self, loss):
        loss.backward()


def test_after_a_resume_each_rank_restores_its_own_sampling_rng(
    tmp_path, tiny_model_dir, monkeypatch
):
    rank1 = _trainer(tmp_path, tiny_model_dir, accelerator=_FakeAccelerator(1))
    torch.rand(5, generator=rank1.gen)  # rank 1 has drawn its own rollouts
    state1 = rank1._rng_state()
    rank0 = _trainer(tmp_path, tiny_model_dir, accelerator=_FakeAccelerator(0))
    gathered = [rank0._rng_state(), state1]  # what gather_object returns on both ranks
    monkeypatch.setattr("accelerate.utils.gather_object", lambda objs: gathered)
    rank0.step = 1
    rank0.save_checkpoint()
    resumed1 = _trainer(tmp_path, tiny_model_dir, accelerator=_FakeAccelerator(1), resume=True)
    assert resumed1.load_checkpoint()
    assert torch.equal(resumed1.gen.get_state(), state1["gen"])
    assert not torch.equal(resumed1.gen.get_state(), gathered[0]["gen"])


# -- issue 25: one --out policy for every command that writes -------------------------------------


@pytest.mark.parametrize("kind", ["eval", "study", "theory", "export"])
def test_a_folder_another_command_made_is_never_written_into_or_replaced(tmp_path, kind):
    """`eval --out RUN --overwrite` must not replace a training run (nor study/theory/export
    anyone else's output); a folder of the same kind is replaced only with --overwrite."""
    run = _run_dir(tmp_path / "run", TrainConfig())
    for overwrite, resume in ((False, None), (True, None), (False, True)):
        with pytest.raises(ConfigError, match="tsallis-rl train"):
            rundir.check_out_dir(run, kind=kind, overwrite=overwrite, resume=resume)
    rundir.check_out_dir(run, kind="train", overwrite=True)  # its own kind: may be replaced
    theirs = rundir.claim_out_dir(tmp_path / kind, overwrite=False, kind=kind)
    assert rundir.run_dir_kind(theirs) == kind
    with pytest.raises(ConfigError, match=f"tsallis-rl {kind}"):
        rundir.check_out(TrainConfig(out=str(theirs), overwrite=True))


def test_resume_of_a_folder_that_is_not_there_is_a_mistake_not_a_fresh_run(tmp_path, capsys):
    """A typo in `--out` with --resume must not train everything from scratch (status 2)."""
    with pytest.raises(ConfigError, match="nothing to resume at"):
        rundir.check_out(TrainConfig(out=str(tmp_path / "nothere"), resume=True))
    argv = ["train", "--out", str(tmp_path / "nothere"), "--resume", "--steps", "2"]
    assert main(argv) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "nothere").exists()


def test_a_resume_names_the_same_data_saved_relative_before_paths_were_recorded_absolute(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("")
    saved = {"data": "d.jsonl", "model": None}
    assert rundir.config_changes(saved, {"data": str(tmp_path / "d.jsonl"), "model": None}) == {}
    assert rundir.config_changes(saved, {"data": "/elsewhere/d.jsonl", "model": None})


def test_a_resume_that_finds_no_checkpoint_says_it_starts_from_step_0(
    tmp_path, tiny_model_dir, capsys
):
    trainer = _trainer(tmp_path / "r", tiny_model_dir, resume=True, steps=1)
    trainer.fit()
    assert "no checkpoint yet; starting from step 0" in capsys.readouterr().err
