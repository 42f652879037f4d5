"""Plots are readable: rate axes never run below 0, the bias panels' titles never overlap."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_an_all_zero_m_at_k_plot_keeps_its_axis_at_or_above_zero():
    from tsallis_rl.report import plot_metric

    per_run = {"grpo": [{"kind": "eval", "step": s, "m@16": 0.0} for s in (0, 25, 50)]}
    fig = plot_metric(per_run, "eval", "m@16", "validation m@16")
    low, high = fig.axes[0].get_ylim()
    assert low >= 0.0 and high >= 1.0


def test_bias_figure_titles_do_not_overlap():
    from tsallis_rl.dynamics.lab import TheoryConfig, run_bias
    from tsallis_rl.dynamics.report import bias_figures

    cfg = TheoryConfig(bias_m=[2, 4], bias_q=[0.0, 0.5], bias_replicates=20, bias_fit_m_min=2)
    for fig in bias_figures(run_bias(cfg)):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
        if fig._suptitle is not None:
            boxes.append(fig._suptitle.get_window_extent(renderer))
        assert len(boxes) >= 3
        for a, b in itertools.combinations(boxes, 2):
            assert not _overlap(a, b)


# -- issue 25 item 17 and item 16 ----------------------------------------------------------------


def _curves() -> dict[str, list[dict]]:
    """Five runs as the cold start leaves them: m@k 0 throughout for GRPO and GARL q = 0 (the
    same line), max advantages spread over decades (the legend's old corner)."""
    runs = {}
    for i, tag in enumerate(["grpo", "garl_q0", "garl_q0.75", "garl_q1", "paft_q0.75"]):
        recs = []
        for step in range(0, 60, 5):
            m = 0.0 if tag in ("grpo", "garl_q0") else min(1.0, step / 50 * (i / 4))
            recs.append({"kind": "eval", "step": step, "m@4": m, "log_p_hat": -12 + step / 5})
            recs.append({"kind": "train", "step": step, "max_adv": 10.0 ** (-i) * (1 + step)})
        runs[tag] = recs
    return runs


def test_the_legend_sits_outside_the_axes_and_inside_the_figure():
    """max_advantage.png / val_m_at_k.png: no curve is ever under the legend."""
    from tsallis_rl.report import plot_metric

    for kind, key in (("train", "max_adv"), ("eval", "m@4")):
        fig = plot_metric(_curves(), kind, key, key)
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent()
        axes = ax.get_window_extent()
        assert legend.x0 >= axes.x1  # right of the plotting area: overlaps no data
        assert legend.x1 <= fig.bbox.x1 + 0.5  # and not cut off by the figure's edge


def test_runs_that_coincide_stay_visible_each_with_its_own_marker():
    """GRPO and GARL q = 0 sit at m@k 0 together: the earlier-drawn line's marker is larger and
    hollow, so it shows around the later one, and every run has its own marker and dash."""
    from tsallis_rl.report import plot_metric

    fig = plot_metric(_curves(), "eval", "m@4", "m@4")
    lines = fig.axes[0].lines
    styles = [(ln.get_marker(), ln.get_linestyle()) for ln in lines]
    assert len(set(styles)) == len(lines) == 5
    sizes = [ln.get_markersize() for ln in lines]
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    assert all(ln.get_markerfacecolor() == "none" for ln in lines)


def test_a_fractions_interval_stays_within_zero_and_one():
    from tsallis_rl.report import aggregate_seeds

    rows = [
        {"method": "m", "seed": s, "q": 0.5, "test_p@1": v, "initial_log_p": v * 10}
        for s, v in enumerate([1.0, 0.5, 1.0])
    ]
    (agg,) = aggregate_seeds(rows)
    lo, hi = agg["test_p@1_ci95"]
    assert 0.0 <= lo and hi == 1.0 and agg["test_p@1"] < 1.0
    assert agg["initial_log_p_ci95"][1] > 10.0  # an unbounded metric is not clipped
