"""The escape-time study: detector, censored fit (synthetic curves with known slopes), CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tsallis_rl.escape_study import (
    EscapeTime,
    bootstrap_slope,
    censored_fit,
    escape_time,
    fit_group,
    log_interval,
)


def synthetic_curve(log_p0: float, t_escape: float, steps: np.ndarray, threshold: float):
    """A log P-hat curve rising linearly from log_p0 at step 0 through `threshold` at t_escape."""
    rate = (threshold - log_p0) / t_escape
    return np.minimum(log_p0 + rate * steps, 0.0)


def synthetic_runs(slope: float, horizon: int, every: int, noise: float, seed: int = 0):
    """Runs over a p0 grid with log T = 1 + slope * log(1/p0) + noise, observed every `every`
    steps up to `horizon`: returns log(1/p0) [N] and their detected EscapeTimes."""
    rng = np.random.default_rng(seed)
    steps = np.arange(0, horizon + 1, every, dtype=float)
    log_inv_p0 = np.repeat(np.linspace(2.0, 14.0, 7), 6)
    times = []
    for x in log_inv_p0:
        t = math.exp(1.0 + slope * x + noise * rng.standard_normal())
        times.append(escape_time(steps, synthetic_curve(-x, t, steps, -0.7), -0.7))
    return log_inv_p0, times


def test_escape_time_is_first_crossing_with_its_interval():
    steps = np.array([0, 5, 10, 15, 20])
    et = escape_time(steps, np.array([-9.0, -6.0, -0.9, -0.5, -0.1]), -1.0)
    assert (et.step, et.lo, et.hi, et.censored) == (10, 5.0, 10.0, False)


def test_escape_time_censors_a_run_that_never_crosses_at_its_last_step():
    et = escape_time(np.array([0, 5, 10]), np.array([-9.0, -8.0, -7.0]), -1.0)
    assert et.censored and et.step == 10 and et.lo == 10 and et.hi == math.inf


def test_escape_time_marks_a_run_already_past_the_threshold_at_its_first_record():
    et = escape_time(np.array([0, 5]), np.array([-0.5, -0.2]), -1.0)
    assert et.before_start and et.hi == 0 and not et.censored


def test_escape_time_rejects_mismatched_arrays():
    with pytest.raises(ValueError):
        escape_time(np.array([0, 1]), np.array([0.0]), -1.0)


@pytest.mark.parametrize("slope", [0.0, 0.25, 0.5])
def test_censored_fit_recovers_known_slope_from_detected_escape_steps(slope):
    x, times = synthetic_runs(slope, horizon=100_000, every=1, noise=0.1)
    lo, hi = log_interval(times)
    fit = censored_fit(x, lo, hi)
    assert fit is not None and abs(fit.slope - slope) < 0.05


def test_censored_fit_recovers_slope_when_many_runs_are_censored():
    """Slope 0.5 with a horizon that censors the hardest p0 settings (about a third of the runs):
    the Tobit fit recovers it; treating censored steps as escapes biases it far down."""
    x, times = synthetic_runs(0.5, horizon=400, every=4, noise=0.2, seed=1)
    n_cens = sum(t.censored for t in times)
    assert 8 <= n_cens < len(times) - 12
    lo, hi = log_interval(times)
    fit = censored_fit(x, lo, hi)
    assert fit is not None and abs(fit.slope - 0.5) < 0.05
    naive = np.polyfit(x, np.log([t.step for t in times]), 1)[0]
    assert naive < 0.4  # the bias the censored likelihood removes


def test_censored_fit_is_none_when_every_run_is_censored():
    x = np.array([2.0, 4.0, 6.0])
    assert censored_fit(x, np.log([50.0] * 3), np.full(3, np.inf)) is None


def test_fit_group_reports_slope_interval_and_counts():
    x, times = synthetic_runs(0.25, horizon=2000, every=2, noise=0.1)
    res = fit_group(x, times, "log_inv_p0", n_boot=100, seed=0)
    assert abs(res["slope"] - 0.25) < 0.05
    assert res["ci_low"] < res["slope"] < res["ci_high"]
    assert res["n"] == len(times) and res["excluded"] == 0


def test_fit_group_on_loglog_recovers_the_q1_law():
    """T = c * log(1/p0) is a slope of 1 against log log(1/p0)."""
    steps = np.arange(0, 5001, dtype=float)
    x = np.repeat(np.linspace(3.0, 20.0, 6), 3)
    times = [escape_time(steps, synthetic_curve(-v, 30 * v, steps, -0.7), -0.7) for v in x]
    res = fit_group(x, times, "loglog_inv_p0", n_boot=50, seed=0)
    assert abs(res["slope"] - 1.0) < 0.05


def test_fit_group_needs_escapes_at_two_dial_settings_when_dials_are_given():
    """Two seeds of dial 1 escape (their p0 differ a little), dials 2-3 never do: no slope."""
    x = np.array([12.5, 14.5, 21.6, 22.1, 26.5, 27.1])
    times = [EscapeTime(80, 75.0, 80.0, False), EscapeTime(90, 85.0, 90.0, False)]
    times += [EscapeTime(200, 200.0, np.inf, True)] * 4
    dials = np.array([1, 1, 2, 2, 3, 3])
    res = fit_group(x, times, "log_inv_p0", n_boot=20, seed=0, settings=dials)
    assert res["slope"] is None and res["settings_escaped"] == 1
    assert fit_group(x, times, "log_inv_p0", n_boot=20, seed=0)["slope"] is not None
    times[2] = EscapeTime(150, 145.0, 150.0, False)  # one dial-2 run escapes too
    res = fit_group(x, times, "log_inv_p0", n_boot=20, seed=0, settings=dials)
    assert res["slope"] is not None and res["settings_escaped"] == 2


def test_bootstrap_drops_resamples_whose_escapes_fall_in_one_dial():
    """Without groups, a resample holding only the two dial-1 escapes still 'fits' a slope."""
    x = np.array([12.5, 14.5, 21.6, 26.5, 27.1])
    lo, hi = np.log([75.0, 85.0, 145.0, 200.0, 200.0]), np.log([80.0, 90.0, 150.0, np.inf, np.inf])
    dials = np.array([1, 1, 2, 3, 3])
    grouped = bootstrap_slope(x, lo, hi, n_boot=200, seed=0, groups=dials)
    plain = bootstrap_slope(x, lo, hi, n_boot=200, seed=0)
    assert grouped["n_valid"] < plain["n_valid"]
    assert censored_fit(x[[0, 1, 3]], lo[[0, 1, 3]], hi[[0, 1, 3]], groups=dials[[0, 1, 3]]) is None


def test_fit_group_leaves_out_runs_escaped_before_start():
    times = [EscapeTime(0, 0.0, 0.0, False, before_start=True)] + [
        EscapeTime(int(10 * v), 10 * v - 1, 10 * v, False) for v in (2.0, 4.0, 8.0)
    ]
    res = fit_group(np.array([0.5, 2.0, 4.0, 8.0]), times, "log_inv_p0", n_boot=20, seed=0)
    assert res["excluded"] == 1 and res["n"] == 3


# --------------------------------------------------------------------------------------------------
# The command


def study(tmp_path: Path, *flags: str) -> int:
    from tsallis_rl.cli import main

    return main(["study", "escape", "--out", str(tmp_path / "out"), *flags])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--q", ","], "at least one value"),
        (["--dial", ""], "at least one value"),
        (["--q", "0.5,1.5"], "[0, 1]"),
        (["--optimizers", "adam,rmsprop"], "rmsprop"),
        (["--dial", "0,42"], "--dial"),
        (["--lr", "sgd=0"], "--lr"),
        (["--model", "/nonexistent/model"], "--model"),
    ],
)
def test_study_refuses_bad_grids_before_building_anything(
    tmp_path, capsys, monkeypatch, flags, message
):
    import tsallis_rl.models.basemodel as basemodel

    monkeypatch.setattr(basemodel, "ensure_base_model", lambda *a, **k: pytest.fail("built"))
    assert study(tmp_path, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~15-25 s: four short training runs on the tiny model
def test_study_escape_on_a_2x2x1_grid_writes_every_output(tmp_path, tiny_model_dir, monkeypatch):
    from tsallis_rl.escape_study import OUTPUT_NAMES

    flags = [
        "--model", str(tiny_model_dir), "--q", "0.5,1", "--dial", "0,3", "--optimizers", "sgd",
        "--steps", "2", "--eval-every", "1", "--probe-size", "2", "--eval-k", "2",
        "--bootstrap", "20", "--workers", "1", "--threads", "1",
    ]  # fmt: skip
    assert study(tmp_path, *flags) == 0
    out = tmp_path / "out"
    for name in OUTPUT_NAMES:
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 and {r["dial"] for r in results["runs"]} == {0, 3}
    for r in results["runs"]:
        assert r["curve"]["step"] == [0.0, 1.0, 2.0]
        assert r["escape_log_p"]["censored"] or r["escape_log_p"]["step"] <= 2
    # q = 1 gets the log log(1/p0) fit as well; both criteria are fitted
    assert len(results["fits"]) == 2 * 1 + 2 * 2
    assert "Escape-time study" in (out / "report.md").read_text()
    # a second call refuses the non-empty folder; --resume keeps the finished runs (no training)
    assert study(tmp_path, "--model", str(tiny_model_dir)) == 2
    before = (out / "runs" / "garl_q1_dial3_sgd_s0" / "metrics.jsonl").read_text()
    import tsallis_rl.suite as suite

    monkeypatch.setattr(suite, "train_run", lambda *a, **k: pytest.fail("retrained"))
    assert study(tmp_path, *flags, "--resume") == 0
    assert (out / "runs" / "garl_q1_dial3_sgd_s0" / "metrics.jsonl").read_text() == before


# --------------------------------------------------------------------------------------------------
# The theory reference runs to the study's own threshold (issue 22 item 8)

DELTA = -5.0  # log(delta): the escape-hour study's threshold


def test_theory_log_time_is_the_gradient_flow_time_to_delta():
    from tsallis_rl.escape_study import theory_log_time

    x = np.array([6.0, 13.84, 21.70, 39.92])
    for q in (0.0, 0.5, 0.75):
        a = 1 - q
        want = np.log((np.exp(a * x) - math.exp(-a * DELTA)) / a)
        assert np.allclose(theory_log_time(q, x, DELTA), want, rtol=1e-12)
    assert np.allclose(theory_log_time(1.0, x, DELTA), np.log(x + DELTA), rtol=1e-12)
    # already past delta: no time; log(1/p0) in the thousands stays finite
    assert np.isnan(theory_log_time(0.75, np.array([4.0, 5.0]), DELTA)).all()
    assert np.isfinite(theory_log_time(0.5, np.array([5000.0]), DELTA)).all()


def test_theory_slope_over_the_study_p0_includes_the_threshold():
    from tsallis_rl.escape_study import theory_slope

    dials = np.array([13.84, 21.70, 27.49, 39.92])  # the escape-hour study's mean log(1/p0)
    # SGD q = 0.75 escaped at dials 1 and 2 only: the theory's secant there is 0.263, not 0.25
    assert theory_slope(0.75, "log_inv_p0", dials[:2], DELTA) == pytest.approx(0.263, abs=5e-4)
    # q = 1 against log log(1/p0): ~1.3 over dials 1-4, not the asymptote 1
    assert theory_slope(1.0, "loglog_inv_p0", dials, DELTA) == pytest.approx(1.30, abs=5e-3)
    # the secant formula, written out
    f = np.exp(0.25 * dials[:2]) - math.exp(0.25 * 5)
    assert theory_slope(0.75, "log_inv_p0", dials[:2], DELTA) == pytest.approx(
        math.log(f[1] / f[0]) / (dials[1] - dials[0]), rel=1e-12
    )
    # one p0: the local derivative; far below delta: the asymptotes 1 - q and 1
    assert theory_slope(1.0, "log_inv_p0", np.array([20.0]), DELTA) == pytest.approx(1 / 15)
    far = np.array([3000.0, 4000.0])
    assert theory_slope(0.5, "log_inv_p0", far, DELTA) == pytest.approx(0.5, abs=1e-9)
    assert theory_slope(1.0, "loglog_inv_p0", far, DELTA) == pytest.approx(1.0, abs=3e-3)
    assert theory_slope(0.75, "log_inv_p0") == 0.25  # no p0 given: the asymptote


def _hour_results():
    path = Path(__file__).parents[1] / "bench" / "results" / "escape-hour" / "results.json"
    return json.loads(path.read_text())


def _hour_cfg():
    from tsallis_rl.escape_study import EscapeStudyConfig

    return EscapeStudyConfig(
        q=[0.5, 0.75, 1.0], dials=[1, 2, 3, 4], optimizers=["sgd", "adam"], seeds=[0, 1, 2],
        steps=200, eval_every=5, probe_size=16, eval_k=4, bootstrap=50,
    )  # fmt: skip


def test_reanalyse_recomputes_escapes_and_theory_slopes_from_stored_curves():
    from tsallis_rl.escape_study import reanalyse

    old = _hour_results()
    new = reanalyse(_hour_cfg(), old)
    for a, b in zip(old["runs"], new["runs"]):
        assert a["escape_log_p"]["step"] == b["escape_log_p"]["step"]
        assert a["escape_p1"]["censored"] == b["escape_p1"]["censored"]
    fit = next(f for f in new["fits"] if (f["optimizer"], f["q"], f["criterion"], f["regressor"])
               == ("sgd", 1.0, "escape_log_p", "loglog_inv_p0"))  # fmt: skip
    assert fit["theory_slope"] == pytest.approx(1.30, abs=0.01) and fit["asymptote_slope"] == 1.0
    assert fit["slope"] == pytest.approx(2.736, abs=1e-3)  # the fit itself is unchanged


def test_escape_steps_plot_explains_the_censored_marker(tmp_path, monkeypatch):
    """Issue 25 item 17: the open triangles (censored runs) have a legend entry."""
    import matplotlib.figure

    from tsallis_rl.escape_study import plot_escape_steps, reanalyse

    cfg = _hour_cfg()
    results = reanalyse(cfg, _hour_results())
    seen = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **k):
        seen.append([t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()])
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot_escape_steps(cfg, results, tmp_path / "e.png")
    labels = seen[0]
    assert any("censored" in t for t in labels)
    assert any("delta" in t for t in labels)  # the theory line is the time to the threshold
