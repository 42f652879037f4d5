"""The noise study: the memorisation probe against an independent calculation, collapse and theory
numbers, the grid, and that `study noise` trains through the escape study's pool and writer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tsallis_rl.noise_study import (
    NoiseStudyConfig,
    collapse_step,
    label_log_p_hat,
    theory_contamination,
)

# --------------------------------------------------------------------------------------------------
# The memorisation probe equals p(label | x, z) computed by hand from plain forward passes


def test_probe_p_hat_equals_the_mean_over_rationales_of_an_independent_full_forward(
    tmp_path, tiny_model_dir
):
    from tsallis_rl.config import TrainConfig
    from tsallis_rl.noise_study import NoiseTrainer
    from tsallis_rl.suite import build_trainer
    from tsallis_rl.tasks.noise import clean_example

    cfg = TrainConfig(model=str(tiny_model_dir), task="chainsum?noise=0.5", train_size=8,
                      val_size=3, test_size=0, eval_k=3, thinking_budget=6, threads=1,
                      progress=False, out=str(tmp_path / "run")).validate()  # fmt: skip
    tr = build_trainer(cfg, tmp_path / "run", trainer_cls=NoiseTrainer)
    assert isinstance(tr, NoiseTrainer)
    examples = tr.noisy_examples()
    assert len(examples) == 3
    prompts = [tr.prompt_ids(ex) for ex in examples]
    labels = [[tr.formatter.gold(ex), tr.formatter.gold(clean_example(ex))] for ex in examples]
    assert all(a != b for a, b in labels)
    settings = tr._sampling(answer_budget=0, temperature=1.0)
    log_p, rollouts = label_log_p_hat(tr.policy, prompts, labels, settings, k=3, seed=11)
    assert log_p.shape == (3, 2) and len(rollouts) == 9

    # by hand: one full forward of prompt + rationale + forced </think> + label, no cache, no
    # prompt sharing; p(label | x, z) = prod of the label tokens' softmax probabilities
    model = tr.policy.eval()
    for i in range(3):
        for li in range(2):
            probs = []
            for j in range(3):
                r = rollouts[i * 3 + j]
                head = r.prompt + r.rationale + r.forced
                ids = torch.tensor([head + labels[i][li]])
                with torch.no_grad():
                    logits = model(ids).logits[0].double()
                logp = torch.log_softmax(logits, dim=-1)
                tok = sum(float(logp[len(head) + t - 1, y]) for t, y in enumerate(labels[i][li]))
                probs.append(math.exp(tok))
            assert math.log(sum(probs) / 3) == pytest.approx(float(log_p[i, li]), abs=1e-4)

    # the same seed gives the same rationales (both labels are scored on them), another does not
    again, same = label_log_p_hat(tr.policy, prompts, labels, settings, k=3, seed=11)
    assert torch.equal(again, log_p) and [r.rationale for r in same] == [
        r.rationale for r in rollouts
    ]
    memo = tr.memorisation()
    assert set(memo) >= {"p_noisy", "p_clean", "log_p_noisy", "log_p_clean", "rationale_correct"}
    assert 0 <= memo["p_noisy"] <= 1 and 0 <= memo["p_clean"] <= 1 and memo["n"] == 3


# --------------------------------------------------------------------------------------------------
# Pure pieces


def test_collapse_is_a_fall_below_the_fraction_of_an_earlier_peak():
    steps = [0, 10, 20, 30, 40]
    c = collapse_step(steps, [0.1, 0.8, 0.5, 0.3, 0.9], fraction=0.5)
    assert c == {"peak": 0.9, "peak_step": 40, "collapsed": False, "collapse_step": None}
    c = collapse_step(steps, [0.1, 0.8, 0.5, 0.39, 0.7], fraction=0.5)
    assert c["collapsed"] and c["collapse_step"] == 30 and c["peak_step"] == 10
    # a peak below min_peak is no peak; a flat zero curve never collapses
    assert not collapse_step(steps, [0.1, 0.15, 0.0, 0.0, 0.0], min_peak=0.2)["collapsed"]
    assert not collapse_step(steps, [0.0] * 5)["collapsed"]


def test_theory_is_the_escort_equilibrium_of_prop_c2():
    from tsallis_rl.dynamics.noise import equilibrium_contamination, noise_drift

    for eps in (0.1, 0.2, 0.4):
        t = theory_contamination(1.0, eps)
        assert t["exact"] == pytest.approx(eps, rel=1e-9)  # = eps at q = 1
        assert t["approx"] == pytest.approx(eps / (1 - eps))
        for q in (0.25, 0.5, 0.75):
            t = theory_contamination(q, eps)
            r = (eps / (1 - eps)) ** (1 / q)
            assert t["approx"] == pytest.approx(r)
            assert t["exact"] / (1 - t["exact"]) == pytest.approx(r, rel=1e-8)
            assert t["exact"] == pytest.approx(equilibrium_contamination(q, eps), rel=1e-8)
            assert abs(float(noise_drift(t["exact"], q, eps))) < 1e-9  # the drift's root
    assert theory_contamination(0.25, 0.2)["exact"] < theory_contamination(1.0, 0.2)["exact"]
    assert theory_contamination(0.5, 0.0) == {"approx": 0.0, "exact": 0.0}


def test_grid_runs_every_constant_q_and_schedule_with_the_trainers_schedule_options():
    cfg = NoiseStudyConfig(q=[0.25, 1.0], noise=[0.0, 0.2], estimators=["garl", "paft"],
                           regimes=["cold"], schedules=["linear", "step"], steps=40,
                           seeds=[0, 1])  # fmt: skip
    grid = cfg.grid()
    assert len(grid) == 2 * (2 + 2) * 2 * 2 and len({r["tag"] for r in grid}) == len(grid)
    configs = cfg.validate().train_configs(Path("/tmp/x"))
    step = configs["garl_q1to0.25-step_eps0.2_cold_s1"]
    assert (step.q, step.q_end, step.q_schedule, step.q_switch_step) == (1.0, 0.25, "step", 20)
    lin = configs["paft_q1to0.25-linear_eps0_cold_s0"]
    assert (lin.q_schedule, lin.q_switch_step, lin.task) == (
        "linear",
        None,
        "chainsum?dial=2&noise=0",
    )
    both = NoiseStudyConfig(regimes=["warm", "cold"], noise=[0.4], seeds=[0]).grid()
    scheduled = {r["regime"] for r in both if r["q_schedule"] != "constant"}
    assert scheduled == {"cold"} and len(both) == 2 * 4 + 2 * 6  # schedules: cold by default
    warm = NoiseStudyConfig(regimes=["warm"], noise=[0.4]).train_configs(Path("/tmp/x"))
    assert all(c.task == "chainsum?answer_form=warm&noise=0.4" and c.regime == "warm"
               for c in warm.values())  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The CLI: the escape study's pool and writer, every output, the runs' records


def test_study_noise_trains_through_the_escape_studys_pool_and_writer(
    tmp_path, tiny_model_dir, monkeypatch
):
    import tsallis_rl.escape_study as es
    import tsallis_rl.suite as suite
    from tsallis_rl.cli import main
    from tsallis_rl.noise_study import OUTPUT_NAMES, NoiseStudyConfig, noise_train_run

    calls: dict[str, list] = {"train_grid": [], "train_pool": [], "write_outputs": []}

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls[name].append((args, kwargs))
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(es, "train_grid", spy("train_grid", es.train_grid))
    monkeypatch.setattr(es, "train_pool", spy("train_pool", suite.train_pool))
    monkeypatch.setattr(es, "write_outputs", spy("write_outputs", es.write_outputs))
    out = tmp_path / "out"
    flags = [
        "--model", str(tiny_model_dir), "--q", "1", "--noise", "0,0.5", "--estimators", "garl",
        "--regime", "warm", "--schedules", "linear", "--schedule-regimes", "warm", "--steps", "2", "--eval-every", "1",
        "--train-size", "8", "--val-size", "2", "--eval-k", "2", "--workers", "1", "--threads", "1",
    ]  # fmt: skip
    assert main(["study", "noise", "--out", str(out), *flags]) == 0
    assert len(calls["train_grid"]) == 1 and isinstance(
        calls["train_grid"][0][0][0], NoiseStudyConfig
    )
    assert calls["train_pool"][0][1]["runner"] is noise_train_run
    assert len(calls["write_outputs"]) == 1
    for name in OUTPUT_NAMES:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 and len(results["settings"]) == 4
    run = out / "runs" / "garl_q1_eps0.5_warm_s0"
    final = json.loads((run / "final.json").read_text())
    assert final["noise"] == 0.5 and final["noisy_train"] == 4
    assert len((run / "noise.jsonl").read_text().splitlines()) == 4
    probes = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probes if p["kind"] == "noise"] == [0, 1, 2]
    noisy = next(r for r in results["runs"] if r["tag"] == "garl_q1_eps0.5_warm_s0")
    assert noisy["memo"]["step"] == [0.0, 1.0, 2.0] and noisy["final_p_noisy"] is not None
    assert noisy["theory"]["exact"] == pytest.approx(0.5)
    clean = next(r for r in results["runs"] if r["tag"] == "garl_q1_eps0_warm_s0")
    assert (
        clean["memo"]["step"] == [] and not (out / "runs" / clean["tag"] / "noise.jsonl").exists()
    )
    assert "Noise study" in (out / "report.md").read_text()
    from tsallis_rl.noise_study import reanalyse

    cfg = NoiseStudyConfig(**json.loads(json.dumps(calls["train_grid"][0][0][0].to_dict())))
    assert reanalyse(cfg, results)["settings"] == results["settings"]  # from the stored curves
    # --resume keeps the finished runs (no training)
    monkeypatch.setattr(suite, "train_run", lambda *a, **k: pytest.fail("retrained"))
    monkeypatch.setattr("tsallis_rl.noise_study.noise_train_run", lambda *a, **k: pytest.fail("x"))
    assert main(["study", "noise", "--out", str(out), *flags, "--resume"]) == 0


def test_bench_presets_are_valid_study_flags_and_the_hour_preset_has_the_sized_180_runs():
    import argparse
    import importlib.util

    from tsallis_rl.commands.study import build_config, register

    path = Path(__file__).resolve().parents[1] / "bench" / "noise_study.py"
    spec = importlib.util.spec_from_file_location("bench_noise_study", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sizes = {}
    for name, flags in bench.PRESETS.items():
        cfg = build_config(parser.parse_args(["study", "noise", "--out", "/tmp/x", *flags]))
        sizes[name] = len(cfg.grid())
    assert sizes["hour"] == 72 + 108  # the docstring's sizing arithmetic
    assert sizes["smoke"] == 8 + 12
