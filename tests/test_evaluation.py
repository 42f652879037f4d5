"""Evaluation: every rank evaluates a disjoint share and the gathered metrics equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tsallis_rl.config import ConfigError, TrainConfig

SETUP = """
import dataclasses, json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
import tsallis_rl.evaluation as ev
from tsallis_rl.config import TrainConfig
from tsallis_rl.suite import make_splits
from tsallis_rl.tasks import get_task
from tsallis_rl.trainer import Trainer


def build(model_dir, run_dir, accelerator=None):
    cfg = TrainConfig(model=str(model_dir), task="chainsum", batch_size=2, num_rollouts=2,
                      thinking_budget=8, answer_budget=3, val_size=5, test_size=2, train_size=10,
                      eval_k=3, progress=False, out=str(run_dir), threads=1).validate()
    task = get_task("chainsum")
    return Trainer(cfg, model=AutoModelForCausalLM.from_pretrained(model_dir),
                   tokenizer=AutoTokenizer.from_pretrained(model_dir), task=task,
                   splits=make_splits(task, cfg), run_dir=Path(run_dir),
                   device=torch.device("cpu"), accelerator=accelerator)
"""

WORKER = """
from accelerate import Accelerator
acc = Accelerator(cpu=True)
model_dir, out = sys.argv[1], Path(sys.argv[2])
tr = build(model_dir, out / "run", acc)
seen = []
share = ev._evaluate_share
def spy(*args):
    seen.extend(args[7])  # the example indices this rank evaluates
    return share(*args)
ev._evaluate_share = spy
res = tr.evaluate("val")
(out / f"rank{acc.process_index}.json").write_text(json.dumps({"summary": res.summary, "seen": seen}))
"""


@pytest.mark.slow
def test_two_process_evaluation_shards_examples_and_equals_one_process(tmp_path, tiny_model_dir):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SETUP) + textwrap.dedent(WORKER))
    torchrun = Path(sys.executable).parent / "torchrun"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
         str(tiny_model_dir), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seen"] == [0, 2, 4] and ranks[1]["seen"] == [1, 3]  # disjoint, all covered
    assert ranks[0]["summary"] == ranks[1]["summary"]  # every rank returns the gathered result
    namespace: dict = {}
    exec(compile(textwrap.dedent(SETUP), "setup", "exec"), namespace)  # our own test code
    one = namespace["build"](tiny_model_dir, tmp_path / "one").evaluate("val").summary
    two = ranks[0]["summary"]
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-5), key


def test_top_p_below_one_is_refused_for_on_policy_estimators():
    with pytest.raises(ConfigError, match="top_p"):
        TrainConfig(top_p=0.9).validate()
    TrainConfig(top_p=1.0).validate()


def _spied_step(tmp_path, tiny_model_dir, estimator):
    """One train_step at T = 0.5 with spies: (rollouts, a copy of the model before the step, the
    positional inputs the estimator received)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tsallis_rl.suite import make_splits
    from tsallis_rl.tasks import get_task
    from tsallis_rl.trainer import Trainer

    cfg = TrainConfig(
        model=str(tiny_model_dir), estimator=estimator, batch_size=2, num_rollouts=2,
        thinking_budget=6, answer_budget=3, answer_prefix="A", val_size=2, test_size=2,
        train_size=10, temperature=0.5, progress=False, out=str(tmp_path), threads=1,
    ).validate()  # fmt: skip
    task = get_task("chainsum")
    tr = Trainer(
        cfg, model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), task=task,
        splits=make_splits(task, cfg), run_dir=tmp_path, device=torch.device("cpu"),
    )  # fmt: skip
    before = copy.deepcopy(tr.model)
    seen: dict = {}
    sample_, call_ = tr._sample, tr._estimator_call

    def spy_sample(*args, **kwargs):
        seen["rollouts"] = sample_(*args, **kwargs)
        return seen["rollouts"]

    def spy_call(q):
        fn = call_(q)

        def spy(*args, **kwargs):
            seen["args"] = [a.detach() if torch.is_tensor(a) else a for a in args]
            return fn(*args, **kwargs)

        return spy

    tr._sample, tr._estimator_call = spy_sample, spy_call
    tr.train_step()
    return seen["rollouts"], before, seen["args"]


def test_estimator_sees_rationale_log_probs_of_the_tempered_sampling_distribution(
    tmp_path, tiny_model_dir
):
    """Issue 10: a trainer sampling at T = 0.5 hands the estimator log softmax(logits / 0.5)."""
    rolls, model, args = _spied_step(tmp_path, tiny_model_dir, "garl")
    want = []
    for r in rolls:
        toks = r.prompt + r.rationale
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([toks])).logits[0] / 0.5, -1)
        want.append(sum(lp[j - 1, toks[j]] for j in range(len(r.prompt), len(toks))))
    assert torch.allclose(args[0].flatten(), torch.stack(want), atol=1e-5)


def test_forced_answer_prefix_gets_no_policy_gradient_under_grpo(tmp_path, tiny_model_dir):
    rolls, _, args = _spied_step(tmp_path, tiny_model_dir, "grpo")
    mask = args[1].reshape(len(rolls), -1)  # GRPO's token mask [B*M, T] over the completion
    for r, m in zip(rolls, mask):
        start = len(r.rationale) + len(r.forced)
        assert r.answer_prefix and r.answer
        assert m[: len(r.rationale)].all() and not m[len(r.rationale) : start + 1].any()
        assert m[start + 1 : start + 1 + len(r.answer)].all()
