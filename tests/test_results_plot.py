"""scripts/results.py's score plot: the bars are the table's means, one per agent and task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from script_helpers import load_script

REPO = Path(__file__).resolve().parents[1]


def _results_module():
    return load_script("results")


def _run(score: float) -> dict:
    return {"final_eval": [{"normalized_mean": score}, {"normalized_mean": -1.0}]}


def test_plot_scores_bars_are_the_mean_over_seeds_at_the_first_target(tmp_path):
    results = _results_module()
    runs = {
        ("hopper-medium", "decision-aaren"): [_run(30.0), _run(34.0), _run(35.0)],
        ("hopper-medium", "decision-transformer"): [_run(20.0), _run(28.0)],
        ("walker2d-medium", "decision-aaren"): [_run(6.0)],
        ("walker2d-medium", "decision-transformer"): [],
    }
    path = tmp_path / "gpu-1500steps" / "scores.png"
    heights = results.plot_scores(
        runs, ["decision-aaren", "decision-transformer"], path, "Decision Aaren vs DT"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert heights["decision-aaren"] == [np.mean([30.0, 34.0, 35.0]), 6.0]
    assert heights["decision-transformer"][0] == 24.0  # (20 + 28) / 2, the first target only
    assert math.isnan(heights["decision-transformer"][1])  # no run: no bar
    assert results.protocol_dir(tmp_path, "gpu", 1500) == path.parent
    assert results.protocol_dir(tmp_path, None, 100) == tmp_path / "published-100steps"
