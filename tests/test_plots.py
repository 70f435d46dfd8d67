"""Figures a user reads: plain-number ticks on log axes, a title on every panel, and a legend
entry for every line (the twin-axis peak-RSS line included), checked on the rendered figures."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aaren_rl.agents import demo  # noqa: E402
from aaren_rl.bench import agent as bench_agent  # noqa: E402
from aaren_rl.plots import legend_with_twins, plain_number, readable_log_axes  # noqa: E402


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.001, "0.001"), (0.05, "0.05"), (0.0123, "0.0123"), (1, "1"), (55.5, "55.5")]
    + [(100, "100"), (2000, "2,000"), (1e6, "1,000,000"), (0, "0")],
)
def test_plain_number_by_hand(value, text):
    assert plain_number(value) == text


def _tick_texts(axis) -> list[str]:
    labels = axis.get_majorticklabels() + axis.get_minorticklabels()
    return [t.get_text() for t in labels if t.get_text()]


def _check_figure(fig) -> None:
    """Every axes with lines has a title (or the figure one), labelled axes, plain ticks on log
    axes and every labelled line in a legend."""
    fig.canvas.draw()
    for ax in fig.axes:
        lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        if not lines:
            continue
        same_place = [a for a in fig.axes if a.get_position().bounds == ax.get_position().bounds]
        suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
        assert any(a.get_title() for a in same_place) or suptitle
        assert ax.get_ylabel() and any(a.get_xlabel() for a in same_place)  # twins share x
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                texts = _tick_texts(axis)
                assert texts and not any("10^" in t or "$" in t for t in texts), texts
        legend_texts = {
            t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()
        }
        for ln in lines:
            assert ln.get_label() in legend_texts, ln.get_label()


def _capture(monkeypatch, module) -> list:
    figures = []

    def keep(fig, path, dpi=110):
        figures.append(fig)
        return path

    monkeypatch.setattr(module, "save_figure_atomic", keep)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    return figures


def test_readable_log_axes_and_twin_legend():
    fig, ax = plt.subplots()
    ax.plot([1, 10, 100, 1000], [0.05, 2.0, 30.0, 2000.0], label="step")
    ax.set(xscale="log", yscale="log", xlabel="t", ylabel="ms", title="a")
    twin = ax.twinx()
    twin.plot([1, 1000], [5, 6], "k--", label="peak RSS")
    twin.set_ylabel("MiB")
    readable_log_axes(ax)
    legend_with_twins(ax, twin)
    _check_figure(fig)
    assert "2,000" in _tick_texts(ax.yaxis) or "1,000" in _tick_texts(ax.yaxis)
    plt.close(fig)


def test_bench_agent_figures(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, bench_agent)
    ts = [1, 10, 100, 1000, 10000]
    results = {
        "stamp": {"machine": "test box", "torch_threads": 1},
        "latency": [
            {"agent": a, "n_envs": n, "us_per_env": u * 100 / n}
            for a, u in (("Decision Aaren, FastDecisionStep", 0.6), ("DT window, K=20", 170.0))
            for n in (1, 16, 64)
        ],
        "memory": {
            "fast_step": [
                {"t": t, "state_bytes_per_env": 1581, "peak_rss_bytes": 3e8 + t} for t in ts
            ],
            "transformer": [
                {"t": t, "kv_cache_bytes": 3072 * t, "dt_window_bytes": 14_600} for t in ts
            ],
        },
        "training": [
            {"variant": v, "backbone": b, "T": n, "seconds": s * n / 1000, "peak_bytes": 2**20 * n}
            for v, b, s in (("aaren", "aaren", 1.0), ("transformer", "t", 3.0))
            + (("transformer-masked", "t", 4.5),)
            for n in (1000, 3000)
        ],
    }
    bench_agent.plot(results, tmp_path)
    assert len(figures) == 3
    for fig in figures:
        _check_figure(fig)
        assert "Aaren" in fig._suptitle.get_text() and "Hopper-v5" in fig._suptitle.get_text()
    memory = figures[1]
    legend = {t.get_text() for t in memory.axes[0].get_legend().get_texts()}
    assert any("peak RSS" in t for t in legend)


def test_demo_figure(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, demo)
    n = 50
    costs = {
        label: {
            "backend": backend,
            "latency_ms": list(np.full(n, ms)),
            "state_bytes_per_env": list(np.full(n, nbytes)),
        }
        for label, backend, ms, nbytes in (
            ("Aaren, FastDecisionStep", "numba", 0.06, 1581),
            ("Aaren, the model's own step", "model", 2.3, 1560),
            ("Transformer, full KV cache", "model", 5.0, 3072),
        )
    }
    demo.write_plot(tmp_path / "demo.png", costs, "Decision Aaren on hopper-medium-small: ...")
    (fig,) = figures
    _check_figure(fig)
    legend = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert "Aaren, FastDecisionStep (numba)" in legend
    assert "hopper-medium-small" in fig._suptitle.get_text()
