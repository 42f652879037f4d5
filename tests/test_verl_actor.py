"""verl's real FSDP actor, in one CPU process without Ray: the teacher-forced update is the core's.

Runs in .venv-verl (`make test-verl`); skipped where verl is not installed. The test runs this file
as a script in a fresh interpreter (it creates a process group and sets verl's platform, which
must not leak into other tests). The script
  - creates a gloo process group first, registers a CPU platform with verl's PlatformRegistry
    (verl 0.9 ships CUDA / NPU / ROCm ones only) and sets VERL_ENGINE_DEVICE=cuda (verl's FSDP
    engine registers for cuda/npu only; the tensors stay on the CPU platform's device);
  - builds verl's `ActorRolloutRefWorker(role="actor")` on a tiny local Qwen3 (FSDP2, fp32
    mixed precision, eager attention) and calls `init_model`;
  - runs `TeacherForcedRayPPOTrainer._update_actor` with that worker in place of the Ray worker
    group: the splice, the actor's log-prob pass, verl's own `update_actor`; the optimiser is SGD
    with lr 1 and no weight decay or clipping, so the parameter change is minus the gradient;
  - computes the core's gradient (`garl_loss` with its pathwise term / `paft_loss`) with a plain
    HF model at the starting parameters on the same spliced rows, and prints both as JSON.
The test then pins: the engine's log-probs equal the HF model's, and verl's update equals the
core gradient (relative error, and the grad norm verl logs).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------------
# The test (parent process)


def test_real_fsdp_actor_update_equals_core_gradient(tmp_path):
    pytest.importorskip("verl")
    pytest.importorskip("cachetools")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TSALLIS_TEST_OUT": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, str(HERE), "garl", "paft"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=HERE.parent,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "result.json").read_text())
    assert [r["estimator"] for r in results] == ["garl", "paft"]
    for res in results:
        print(json.dumps(res))  # measured numbers, shown with pytest -s
        assert res["logprob_max_abs_diff"] < 1e-5  # fp32 engine == HF eager model
        assert res["core_grad_norm"] > 1e-3 and res["pathwise_nonzero"]
        assert res["grad_rel_err"] < 1e-4
        logged, core = res["verl_logged_grad_norm"], res["core_grad_norm"]
        assert abs(logged - core) < 1e-4 * core
        assert res["update_advantages_on_forced_tokens"] == 0.0


# --------------------------------------------------------------------------------------------------
# The harness (child process)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_platform():
    """A verl platform whose device is the CPU (registered under the name "cpu")."""
    import torch
    from verl.plugin.platform import PlatformBase, PlatformRegistry

    class CPUDevice:
        """torch.cpu plus the memory and name queries verl makes of a device module."""

        def __getattr__(self, name):
            if hasattr(torch.cpu, name):
                return getattr(torch.cpu, name)
            return lambda *args, **kwargs: 0  # memory_reserved, max_memory_allocated, ...

        def mem_get_info(self, *args, **kwargs):
            return 0, 0

        def get_device_name(self, *args, **kwargs):
            return "CPU"

    @PlatformRegistry.register(platform="cpu")
    class CPUPlatform(PlatformBase):
        device_name = property(lambda self: "cpu")
        vendor_name = property(lambda self: "cpu")
        device_module = property(lambda self: CPUDevice())

        def is_available(self):
            return True

        def current_device(self):
            return "cpu"  # verl moves modules to get_device_id(): an int would mean an accelerator

        def device_count(self):
            return 1

        def set_device(self, index):
            pass

        def synchronize(self, index=None):
            pass

        def manual_seed(self, seed):
            torch.manual_seed(seed)

        def manual_seed_all(self, seed):
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings):
            pass

        def empty_cache(self):
            pass

        def get_device_capability(self, index=0):
            return None, None

        def communication_backend_name(self):
            return "gloo"

        def visible_devices_envvar(self):
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg):
            yield

        def profiler_start(self):
            pass

        def profiler_stop(self):
            pass

        def ray_resource_name(self):
            return "CPU"

        def ray_noset_envvars(self):
            return []

        def is_ipc_supported(self):
            return False

        def cudart(self):
            return None

    return CPUPlatform()


class InProcessWorkerGroup:
    """The two calls the trainer makes of its actor worker group, on one in-process worker."""

    def __init__(self, worker):
        self.worker = worker
        self.log_prob_outputs, self.update_inputs, self.seconds = [], [], {}

    def compute_log_prob(self, data):
        t = time.perf_counter()
        out = self.worker.compute_log_prob(data)
        self.seconds["compute_log_prob"] = time.perf_counter() - t
        self.log_prob_outputs.append(out)
        return out

    def update_actor(self, data):
        self.update_inputs.append(data.clone())
        t = time.perf_counter()
        out = self.worker.update_actor(data)
        self.seconds["update_actor"] = time.perf_counter() - t
        return out


def setup_process() -> None:
    """One gloo process group and the CPU platform, before verl builds anything."""
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        VERL_ENGINE_DEVICE="cuda",  # verl's FSDP engine registers for cuda/npu only
    )  # fmt: skip
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1)  # before verl builds its device mesh
    from verl.plugin.platform import set_platform

    set_platform(_cpu_platform())


def harness(estimator: str, out_dir: Path) -> dict:
    """One teacher-forced update of a fresh actor with `estimator`; verl's and the core's gradient."""
    import numpy as np
    import torch
    import verl
    from hydra import compose, initialize_config_dir
    from test_verl_teacher_forced import _char_batch, _groups
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    from tsallis_rl.estimators import garl_loss, paft_loss
    from tsallis_rl.integrations import verl_splice as vs
    from tsallis_rl.integrations import verl_trainer as vt
    from tsallis_rl.models.tiny import save_tiny_model

    model = save_tiny_model(out_dir / estimator, hidden_size=32, num_layers=2, num_heads=2)
    sizes, n = (4, 4, 4), 4
    rows = sum(sizes)
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    actor = "actor_rollout_ref.actor"
    overrides = [
        f"actor_rollout_ref.model.path={model}",
        "+actor_rollout_ref.model.override_config.attn_implementation=eager",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"{actor}.strategy=fsdp2",
        f"+{actor}.fsdp_config.mixed_precision={{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}}",
        f"{actor}.use_torch_compile=False",
        f"{actor}.fsdp_config.use_torch_compile=False",
        f"data.train_batch_size={len(sizes)}",
        f"{actor}.ppo_mini_batch_size={len(sizes)}",
        f"actor_rollout_ref.rollout.n={n}",
        f"{actor}.ppo_micro_batch_size_per_gpu={rows}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={rows}",
        f"{actor}.loss_agg_mode=seq-mean-token-sum",
        # SGD, lr 1, no decay, no clipping: the parameter change is minus the gradient
        f"{actor}.optim.optimizer=SGD", f"{actor}.optim.lr=1.0",
        f"{actor}.optim.weight_decay=0.0", f"{actor}.optim.clip_grad=1e9",
        "trainer.use_v1=False",
        f"algorithm.adv_estimator={estimator}",
        "+algorithm.tsallis_weight=teacher_forced",
        "+algorithm.tsallis_q=0.75",
        "+algorithm.tsallis_seed=3",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    assert vt.check_teacher_forced_config(cfg) == []

    t = time.perf_counter()
    worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
    worker.init_model()
    init_s = time.perf_counter() - t

    tok = AutoTokenizer.from_pretrained(model)
    trainer = object.__new__(vt.TeacherForcedRayPPOTrainer)  # the driver side, without Ray
    trainer.config = cfg
    trainer.tokenizer = tok
    trainer._setup_teacher_forced()
    trainer.actor_rollout_wg = InProcessWorkerGroup(worker)
    hf = AutoModelForCausalLM.from_pretrained(
        model, attn_implementation="eager", dtype=torch.float32
    )
    theta0 = {name: p.detach().clone() for name, p in hf.named_parameters()}

    batch = _char_batch(tok, sizes=sizes)
    out = trainer._update_actor(batch)
    metrics = out.meta_info["metrics"]

    # verl's gradient: minus the parameter change of its SGD step
    g_verl = {}
    for name, p in worker.actor.engine.module.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        g_verl[name] = theta0[name] - full.detach()

    # the core's gradient at theta0 on the same spliced rows
    tokens = trainer.tsallis_tokens
    golds = vs.gold_answers(batch.non_tensor_batch, tokens.gold)
    s = vs.splice_teacher_forced(batch, golds, tokens.think_close, tokens.eos_ids, tokens.pad_id)
    td = s.batch.batch
    P = td["prompts"].shape[1]
    logits = hf(
        input_ids=td["input_ids"],
        attention_mask=td["attention_mask"],
        position_ids=td["position_ids"],
    ).logits
    lp = torch.log_softmax(logits[:, P - 1 : -1], -1).gather(-1, td["responses"][..., None])[..., 0]
    idx = _groups(np.asarray(batch.non_tensor_batch["uid"]))
    z = (lp.double() * s.rationale_mask).sum(-1)[idx]
    y = (lp.double() * s.answer_mask).sum(-1)[idx]
    if estimator == "garl":
        core = garl_loss(z, y, 0.75)
    else:
        core = paft_loss(z, y, 0.75, generator=torch.Generator().manual_seed(3))
    core.loss.backward()
    g_core = {name: p.grad for name, p in hf.named_parameters()}

    first = trainer.actor_rollout_wg.log_prob_outputs[0]
    engine_lp = no_padding_2_padding(
        first["log_probs"], left_right_2_no_padding(s.batch.to_tensordict())
    )
    trained = (s.rationale_mask + s.answer_mask).bool()
    diff = sum(((g_verl[k] - g_core[k]) ** 2).sum() for k in g_core)
    norm = sum((g_core[k] ** 2).sum() for k in g_core)
    sent = trainer.actor_rollout_wg.update_inputs[0]
    forced = (td["attention_mask"][:, P:].bool() & ~trained).float()
    return {
        "estimator": estimator,
        "logprob_max_abs_diff": (engine_lp - lp.detach())[trained].abs().max().item(),
        "grad_rel_err": (diff / norm).sqrt().item(),
        "core_grad_norm": norm.sqrt().item(),
        "verl_logged_grad_norm": float(np.mean(metrics["actor/grad_norm"])),
        "pathwise_nonzero": bool((core.answer_grad != 0).any()),
        "update_advantages_on_forced_tokens": (sent["advantages"].abs() * forced).sum().item(),
        "frac_budget_forced": metrics["tsallis/frac_budget_forced"],
        "seconds": {"init_model": init_s, **trainer.actor_rollout_wg.seconds},
    }


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    out_dir = Path(os.environ["TSALLIS_TEST_OUT"])
    setup_process()
    results = [harness(name, out_dir) for name in sys.argv[1:]]
    (out_dir / "result.json").write_text(json.dumps(results))
