"""tsallis_rl.integrations.verl_trainer: the config checks, the TaskRunner, the entry points.

Runs in .venv-verl (`make test-verl`); skipped where verl is not installed. What is pinned:
  - the `verl` extra's environment imports verl's trainer entry points (v0 and v1) and ours, and
    Hydra finds verl's config from our entry point;
  - the example's teacher-forced launch composes against verl's config and passes every check;
    each check refuses its bad setting with an error naming the key; bf16 log-probs only warn;
  - `main` refuses a bad config before Ray starts and hands run_ppo our TaskRunner;
  - verl's legacy TaskRunner.run, run as ours on a tiny local model and exported data, builds
    TeacherForcedRayPPOTrainer (and leaves verl's module as it found it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

verl = pytest.importorskip("verl")
pytest.importorskip("cachetools")  # verl's ray_trainer imports it (the `verl` extra installs it)

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from verl_launch import FIXTURE, recorded_launch  # noqa: E402

from tsallis_rl.integrations import verl_trainer as vt  # noqa: E402


def test_verl_trainer_entry_points_import_in_the_extras_environment():
    import importlib

    for name in (
        "verl.trainer.main_ppo",
        "verl.trainer.main_ppo_v0",  # legacy trainer: needs cachetools
        "verl.workers.engine_workers",  # actor/rollout workers: need uvicorn, fastapi
        "verl.trainer.ppo.v1",  # the default v1 trainer: needs TransferQueue, pyzmq, msgspec
        "transfer_queue",
        # what RayPPOTrainer.init_workers imports once Ray is up
        "verl.experimental.reward_loop",
        "verl.experimental.agent_loop",
        "verl.checkpoint_engine",
        "verl.workers.rollout.replica",
    ):
        importlib.import_module(name)
    from verl.trainer.ppo.v1 import get_trainer_cls

    for mode in ("sync", "colocate_async", "separate_async"):
        try:
            assert get_trainer_cls(mode) is not None
        except (KeyError, ValueError):
            continue  # a mode name this verl does not know; the import above is the check


def test_hydra_finds_verls_config_from_our_entry_point():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tsallis_rl.integrations.verl_trainer", "--cfg", "job"]
    cmd += ["algorithm.adv_estimator=garl", "+algorithm.tsallis_weight=teacher_forced"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tsallis_weight: teacher_forced" in out.stdout and "ppo_mini_batch_size" in out.stdout


def composed(overrides: list[str]):
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.fixture(scope="module")
def tf_args(tmp_path_factory):
    """The example's teacher-forced launch on a cold start (which reward weights refuse): the
    module it runs and its overrides."""
    tmp = tmp_path_factory.mktemp("example")
    args = recorded_launch(tmp, WEIGHT="teacher_forced", REGIME="cold")
    assert args[:2] == ["-m", "tsallis_rl.integrations.verl_trainer"]
    assert (tmp / "data" / "train.parquet").is_file()  # exported, not refused
    return args[2:]


def test_example_teacher_forced_launch_passes_every_check(tf_args):
    cfg = composed(tf_args)
    assert vt.check_teacher_forced_config(cfg) == []  # no error, no warning (fp32)
    assert cfg.algorithm.tsallis_weight == "teacher_forced" and not cfg.trainer.use_v1


BAD = [
    ("trainer.use_v1=True", "trainer.use_v1"),
    ("actor_rollout_ref.actor.ppo_epochs=2", "actor_rollout_ref.actor.ppo_epochs"),
    ("actor_rollout_ref.actor.ppo_mini_batch_size=16", "actor_rollout_ref.actor.ppo_mini_batch_size"),
    ("actor_rollout_ref.actor.loss_agg_mode=token-mean", "actor_rollout_ref.actor.loss_agg_mode"),
    ("actor_rollout_ref.actor.policy_loss.loss_mode=gspo", "actor_rollout_ref.actor.policy_loss.loss_mode"),
    ("actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.use_kl_loss"),
    ("actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.entropy_coeff"),
    ("algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction.rollout_is"),
    ("algorithm.rollout_correction.rollout_rs=token_k1", "algorithm.rollout_correction.rollout_rs"),
    ("algorithm.rollout_correction.bypass_mode=True", "algorithm.rollout_correction.bypass_mode"),
    ("actor_rollout_ref.rollout.temperature=0.7", "actor_rollout_ref.rollout.temperature"),
    ("actor_rollout_ref.rollout.multi_turn.enable=True", "actor_rollout_ref.rollout.multi_turn.enable"),
    ("algorithm.adv_estimator=grpo", "algorithm.adv_estimator"),
    ("algorithm.tsallis_q=2", "algorithm.tsallis_q"),
]  # fmt: skip


@pytest.mark.parametrize("override, key", BAD, ids=[k for _, k in BAD])
def test_each_check_refuses_its_bad_setting_naming_the_key(tf_args, override, key):
    cfg = composed(tf_args + [override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        vt.check_teacher_forced_config(cfg)


def test_bf16_log_probs_warn_but_run(tf_args, caplog):
    key = "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype"
    cfg = composed(tf_args + [f"{key}=bf16"])
    warnings = vt.check_teacher_forced_config(cfg)
    assert len(warnings) == 1 and f"{key}=bf16" in warnings[0]
    assert "fp32 is recommended" in caplog.text


def test_main_refuses_before_ray_and_hands_run_ppo_our_task_runner(tf_args, monkeypatch):
    seen = []
    monkeypatch.setattr(vt, "run_ppo", lambda config, task_runner_class: seen.append(task_runner_class))  # fmt: skip
    bad = composed(tf_args + ["actor_rollout_ref.actor.ppo_epochs=3"])
    with pytest.raises(ValueError, match="ppo_epochs"):
        vt.main.__wrapped__(bad)
    assert seen == []  # nothing started
    vt.main.__wrapped__(composed(tf_args))
    (runner,) = seen
    assert runner.__ray_actor_class__ is vt.TeacherForcedTaskRunner


class _Built(Exception):
    """Raised by init_workers: stops the TaskRunner once its trainer is built (no Ray needed)."""


def test_legacy_task_runner_run_builds_the_teacher_forced_trainer(tf_args, tmp_path, monkeypatch):
    from verl.trainer import main_ppo_v0

    from tsallis_rl.cli import main as cli
    from tsallis_rl.models.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "model", hidden_size=16, num_layers=1, num_heads=2)
    data = tmp_path / "data"
    argv = ["export", "verl", "--task", "jsonl", "--data", str(FIXTURE), "--out", str(data)]
    assert cli([*argv, "--val-size", "2", "--test-size", "2"]) == 0
    cfg = composed(
        tf_args
        + [
            f"actor_rollout_ref.model.path={model}",
            f"data.train_files={data / 'train.parquet'}",
            f"data.val_files={data / 'val.parquet'}",
            "data.train_batch_size=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "actor_rollout_ref.rollout.n=2",
            "data.max_prompt_length=512",
            "data.max_response_length=16",
            "trainer.n_gpus_per_node=1",
            "trainer.device=cpu",
            "trainer.logger=[console]",
        ]
    )
    with open_dict(cfg):  # the char tokenizer has no chat template: give it a trivial one
        cfg.data.apply_chat_template_kwargs = {
            "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}<think>"
        }
    OmegaConf.set_struct(cfg, False)

    def stop(self):
        raise _Built(self)

    monkeypatch.setattr(vt.TeacherForcedRayPPOTrainer, "init_workers", stop)
    original = main_ppo_v0.RayPPOTrainer
    with pytest.raises(_Built) as built:
        vt.TeacherForcedTaskRunner().run(cfg)
    trainer = built.value.args[0]
    assert type(trainer) is vt.TeacherForcedRayPPOTrainer
    assert trainer.tsallis.weight == "teacher_forced" and trainer.tsallis_tokens.think_close
    assert main_ppo_v0.RayPPOTrainer is original  # the swap is undone
