"""A suite over several seeds: `--seeds` parsing and refusals, the aggregation math on hand-made
rows, and a two-seed suite whose aggregate rows are the mean/sd of its per-seed rows."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from tsallis_rl.cli import main
from tsallis_rl.config import ConfigError, TrainConfig, add_arguments, from_args
from tsallis_rl.report import aggregate_seeds, seed_curve, spread, t_quantile
from tsallis_rl.suite import suite_jobs

T_975_DF2 = 4.302652729911275  # Student t 0.975-quantile, 2 degrees of freedom (tables)

SMALL = ["--val-size", "3", "--test-size", "3", "--eval-k", "2", "--batch-size", "2"]
SMALL += ["--num-rollouts", "3", "--thinking-budget", "8", "--answer-budget", "3"]
SMALL += ["--threads", "1", "--progress", "false"]


def _cfg(*flags: str) -> TrainConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(list(flags)))


# ------------------------------------------------------------------------------------------------
# the math


def test_spread_is_mean_sample_sd_and_student_t_interval():
    s = spread([1.0, 2.0, 4.0])
    assert s.n == 3 and s.mean == pytest.approx(7 / 3, abs=1e-12)
    assert s.sd == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]), abs=1e-12)  # n - 1
    assert s.sd == pytest.approx(math.sqrt(7 / 3), abs=1e-12)
    half = T_975_DF2 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (s.lo, s.hi) == (pytest.approx(7 / 3 - half, abs=1e-9), pytest.approx(7 / 3 + half))
    assert t_quantile(0.975, 2) == pytest.approx(T_975_DF2, abs=1e-9)
    assert t_quantile(0.975, 10**6) == pytest.approx(1.959964, abs=1e-5)  # tends to the normal's


def test_spread_of_one_seed_has_a_mean_and_no_sd_or_interval_and_none_has_nothing():
    assert spread([0.5]) == (1, 0.5, None, None, None)
    assert spread([]) == (0, None, None, None, None)
    assert spread([None, float("nan")]) == (0, None, None, None, None)
    assert spread([0.5, None, 0.7]).n == 2  # a seed without the value is left out, not a 0
    assert spread([0.3, 0.3]).sd == 0.0 and spread([0.3, 0.3]).lo == pytest.approx(0.3)


def test_aggregate_seeds_gives_one_row_per_method_in_order_with_mean_sd_and_interval():
    rows = [
        {"method": "grpo", "q": None, "seed": 0, "test_p@1": 0.0, "best_step": 10},
        {"method": "garl_q1", "q": 1.0, "seed": 0, "test_p@1": 0.5, "best_step": 20},
        {"method": "grpo", "q": None, "seed": 1, "test_p@1": 0.0, "best_step": 30},
        {"method": "garl_q1", "q": 1.0, "seed": 1, "test_p@1": 0.7, "best_step": None},
        {"method": "garl_q1", "q": 1.0, "seed": 2, "test_p@1": 0.9, "best_step": 40},
    ]
    agg = aggregate_seeds(rows)
    assert [a["method"] for a in agg] == ["grpo", "garl_q1"]
    grpo, garl = agg
    assert grpo["seeds"] == [0, 1] and grpo["n_seeds"] == 2 and grpo["seed"] is None
    assert grpo["q"] is None and garl["q"] == 1.0
    assert grpo["test_p@1"] == 0.0 and grpo["test_p@1_sd"] == 0.0
    assert grpo["test_p@1_ci95"] == [0.0, 0.0]
    assert grpo["best_step"] == 20 and grpo["best_step_sd"] == pytest.approx(math.sqrt(200))
    assert garl["test_p@1"] == pytest.approx(0.7)
    assert garl["test_p@1_sd"] == pytest.approx(0.2)
    lo, hi = garl["test_p@1_ci95"]  # a fraction's interval is clipped to [0, 1] (issue 25)
    assert lo == pytest.approx(0.7 - T_975_DF2 * 0.2 / math.sqrt(3), abs=1e-9) and hi == 1.0
    assert garl["best_step"] == 30 and garl["best_step_sd"] == pytest.approx(math.sqrt(200))
    assert set(garl) == {"method", "q", "seed", "seeds", "n_seeds"} | {
        f"{k}{s}" for k in ("test_p@1", "best_step") for s in ("", "_sd", "_ci95")
    }
    one = aggregate_seeds([rows[0]])[0]
    assert one["test_p@1"] == 0.0 and one["test_p@1_sd"] is None and one["test_p@1_ci95"] is None


def test_seed_curve_averages_the_steps_every_seed_logged():
    a = [{"kind": "eval", "step": s, "p@1": v} for s, v in ((0, 0.0), (5, 0.2), (10, 0.4))]
    b = [{"kind": "eval", "step": s, "p@1": v} for s, v in ((0, 0.0), (5, 0.6))]
    b.append({"kind": "train", "step": 10, "p@1": 9.0})  # another kind does not count
    assert seed_curve([a, b], "eval", "p@1") == [(0, 0.0, 0.0, 0.0), (5, 0.4, 0.2, 0.6)]
    assert seed_curve([], "eval", "p@1") == []


# ------------------------------------------------------------------------------------------------
# the option


def test_seeds_lists_the_runs_of_every_method_once_per_seed():
    cfg = _cfg("--estimators", "grpo,garl:0.75", "--seeds", "2,0")
    assert cfg.seed_list() == [2, 0]
    jobs = suite_jobs(cfg)
    assert [j.run for j in jobs] == [
        "grpo/seed-2",
        "grpo/seed-0",
        "garl_q0.75/seed-2",
        "garl_q0.75/seed-0",
    ]
    assert [j.cfg.seed for j in jobs] == [2, 0, 2, 0] and {j.cfg.seeds for j in jobs} == {None}
    assert [j.cfg.estimator for j in jobs] == ["grpo", "grpo", "garl", "garl"]


def test_one_seed_in_seeds_is_that_seed():
    cfg = _cfg("--estimators", "garl:0.75", "--seeds", "3")
    assert (cfg.seed, cfg.seeds) == (3, None)
    assert [j.run for j in suite_jobs(cfg)] == ["garl_q0.75"]
    assert cfg.to_dict() == _cfg("--estimators", "garl:0.75", "--seed", "3").to_dict()


def test_seeds_from_a_yaml_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"seeds": [0, 1, 2]}))
    assert _cfg("--config", str(path)).seed_list() == [0, 1, 2]
    path.write_text(yaml.safe_dump({"seeds": [0, "x"]}))
    with pytest.raises(ConfigError, match="seeds"):
        _cfg("--config", str(path))


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--seed", "1", "--seeds", "0,1"], "seed and seeds both given"),
        (["--seed", "0", "--seeds", "0,1"], "seed and seeds both given"),
        (["--seeds", "0,a"], "integers"),
        (["--seeds", "1,1"], "distinct"),
        (["--seeds", "0,-1"], ">= 0"),
        (["--seeds", ","], "empty"),
    ],
)
def test_bad_seeds_exit_2_naming_the_field_before_anything_is_written(
    tmp_path, monkeypatch, capsys, flags, needle
):
    import tsallis_rl.suite as exp

    monkeypatch.setattr(exp, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "never"
    assert main(["train", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "seeds" in err and "Traceback" not in err
    assert not out.exists()


def test_a_config_with_seed_and_seeds_is_refused_by_validate():
    with pytest.raises(ConfigError, match="seed = 3 both given"):
        TrainConfig(seed=3, seeds="0,1").validate()
    TrainConfig(seeds="0,1").validate()


# ------------------------------------------------------------------------------------------------
# the suite


def _suite(out: Path, model: Path, *extra: str) -> int:
    flags = ["train", "--model", str(model), "--estimators", "grpo,garl:0.75", "--seeds", "0,1"]
    flags += ["--steps", "2", "--eval-every", "1", "--out", str(out), *SMALL, *extra]
    return main(flags)


@pytest.mark.slow  # about 30 s: four 2-step runs of a tiny model in two worker processes
def test_a_two_seed_suite_writes_per_seed_rows_and_their_mean_and_sd(tmp_path, tiny_model_dir):
    out = tmp_path / "seeds"
    assert _suite(out, tiny_model_dir) == 0
    summary = json.loads((out / "summary.json").read_text())
    aggregate = [r for r in summary if r["seed"] is None]
    per_seed = [r for r in summary if r["seed"] is not None]
    assert [r["method"] for r in aggregate] == ["grpo", "garl_q0.75"]  # first: old consumers
    assert summary[:2] == aggregate
    assert [(r["method"], r["seed"]) for r in per_seed] == [
        ("grpo", 0),
        ("grpo", 1),
        ("garl_q0.75", 0),
        ("garl_q0.75", 1),
    ]
    for row in per_seed:  # each per-seed row is its own run's result, trained with its seed
        run = out / row["method"] / f"seed-{row['seed']}"
        assert row["run"] == f"{row['method']}/seed-{row['seed']}"
        final = json.loads((run / "final.json").read_text())
        assert row["test_p@1"] == final["test"]["p@1"] and row["test_m@2"] == final["test"]["m@2"]
        assert row["wall_seconds"] == final["wall_seconds"]
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == row["seed"]
    fields = ["test_p@1", "test_p@2", "test_m@2", "best_step", "wall_seconds", "initial_log_p"]
    for agg in aggregate:
        mine = [r for r in per_seed if r["method"] == agg["method"]]
        assert agg["seeds"] == [0, 1] and agg["n_seeds"] == 2
        for f in fields:
            values = [r[f] for r in mine]
            assert agg[f] == pytest.approx(statistics.mean(values), abs=1e-12), f
            assert agg[f"{f}_sd"] == pytest.approx(statistics.stdev(values), abs=1e-12), f
            half = t_quantile(0.975, 1) * statistics.stdev(values) / math.sqrt(2)
            assert agg[f"{f}_ci95"] == pytest.approx([agg[f] - half, agg[f] + half], abs=1e-9)
    merged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["method"], r["seed"]) for r in merged} == {
        (m, s) for m in ("grpo", "garl_q0.75") for s in (0, 1)
    }
    report = (out / "report.md").read_text()
    assert "## Over 2 seeds: mean ± sd [95% interval]" in report and "## Per seed" in report
    assert "| garl_q0.75 | 1 |" in report and "garl_q0.75/seed-1" in report
    for name in ("val_p_at_1.png", "val_m_at_k.png", "val_log_p.png", "max_advantage.png"):
        assert (out / name).stat().st_size > 0

    # --resume keeps every finished (method, seed); changing the seeds is refused
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/final.json")}
    assert len(mtimes) == 4
    assert _suite(out, tiny_model_dir, "--resume") == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/final.json")} == mtimes
    assert json.loads((out / "summary.json").read_text()) == summary
    flags = ["train", "--model", str(tiny_model_dir), "--estimators", "grpo,garl:0.75"]
    flags += ["--seeds", "0,2", "--steps", "2", "--eval-every", "1", "--out", str(out), *SMALL]
    assert main([*flags, "--resume"]) == 2


# ------------------------------------------------------------------------------------------------
# bench/peer_comparison.py on a hand-made finished suite


def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "peer_comparison.py"
    spec = importlib.util.spec_from_file_location("peer_comparison", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_suite(out: Path) -> None:
    """OUT of a two-seed suite as `tsallis-rl train --seeds 0,1` leaves it (only what is read)."""
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({**TrainConfig().to_dict(), "eval_k": 2}))
    rows = []
    for method, p1 in (("grpo", (0.0, 0.0)), ("garl_q1", (0.4, 0.8))):
        for seed in (0, 1):
            run = out / method / f"seed-{seed}"
            run.mkdir(parents=True)
            evals = [(0, 0.0), (5, p1[seed] / 2), (10, p1[seed])]
            (run / "metrics.jsonl").write_text(
                "".join(
                    json.dumps({"kind": "eval", "step": s, "p@1": v, "rationale_correct": 0.5})
                    + "\n"
                    for s, v in evals
                )
            )
            rows.append({"method": method, "seed": seed, "run": f"{method}/seed-{seed}"})
            rows[-1].update({"test_p@1": p1[seed], "test_p@2": p1[seed], "test_m@2": p1[seed]})
            rows[-1].update({"best_step": 10, "wall_seconds": 60.0 + seed})
    (out / "summary.json").write_text(json.dumps(aggregate_seeds(rows) + rows))


def test_peer_table_reports_seed_means_escapes_and_writes_only_the_readme_block(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "suite"
    _finished_suite(out)
    rows, cfg = bench.run_rows(out)
    assert [(r["method"], r["seed"], r["max_val_p@1"], r["first_step_p@1>0"]) for r in rows] == [
        ("grpo", 0, 0.0, None),
        ("grpo", 1, 0.0, None),
        ("garl_q1", 0, 0.4, 5),
        ("garl_q1", 1, 0.8, 5),
    ]
    text = bench.block(rows, cfg, None)
    assert "| grpo | 2 | 0/2 | 0.000 ± 0.000 |" in text
    assert f"| garl_q1 | 2 | 2/2 | 0.600 ± {statistics.stdev([0.4, 0.8]):.3f} |" in text
    assert "| garl_q1 | 1 | 0.800 |" in text and "changed: eval_k 2" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{bench.START}\nold\n{bench.END}\nafter\n")
    assert (
        bench.main(["--table-only", "--out", str(out), "--write-readme", "--readme", str(readme)])
        == 0
    )
    doc = readme.read_text()
    assert doc.startswith("# x\nbefore\n") and doc.endswith(f"{bench.END}\nafter\n")
    assert "\nold\n" not in doc and text in doc
    readme.write_text("# no markers\n")
    assert (
        bench.main(["--table-only", "--out", str(out), "--write-readme", "--readme", str(readme)])
        == 1
    )
    assert readme.read_text() == "# no markers\n" and "peer-table:start" in capsys.readouterr().err
