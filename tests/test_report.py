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
