"""scripts/offline_curves.py: trains the cpu-curve protocol, resumes or skips, and writes a
table whose numbers are the runs' own evaluations."""

from __future__ import annotations

import json
from pathlib import Path

from script_helpers import load_script

REPO = Path(__file__).resolve().parents[1]


def _curves_module():
    return load_script("offline_curves")


def test_eval_points_keep_the_first_target_and_the_last_record_of_a_step(tmp_path):
    curves = _curves_module()
    rows = [
        {"step": 5, "target_return": 3600.0, "normalized_mean": 1.0},
        {"step": 5, "target_return": 1800.0, "normalized_mean": 9.0},
        {"step": 5, "target_return": 3600.0, "normalized_mean": 2.0},  # evaluated again
        {"step": 10, "target_return": 3600.0, "normalized_mean": 3.0},
    ]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = curves.eval_points(tmp_path)
    assert {s: p["normalized_mean"] for s, p in points.items()} == {5: 2.0, 10: 3.0}
    assert curves.eval_points(tmp_path / "missing") == {}


def test_trains_renders_and_skips_finished_runs(tmp_path, capsys):
    curves = _curves_module()
    curves.PREFIX_BATCH = {"hopper-medium-small": 3}  # the per-task prefix batch reaches the run
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nhand-written text\n")
    args = [
        "--tasks", "hopper-medium-small", "--steps", "3", "--runs", str(tmp_path / "runs"),
        "--doc", str(doc), "--plot", str(tmp_path / "curves.png"), "--no-progress",
    ]  # fmt: skip
    assert curves.main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nhand-written text\n")  # the rest of the doc is kept
    block = text.split(curves.BEGIN)[1].split(curves.END)[0]
    for agent in ("decision-aaren", "decision-transformer"):
        run = tmp_path / "runs" / "cpu-curve-3steps" / "hopper-medium-small" / agent / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        score = metrics["final_eval"][0]["normalized_mean"]
        row = next(line for line in block.splitlines() if f"| {agent} |" in line)
        assert f"| {score:.1f} |" in row  # the table's number is the run's own evaluation
        assert len((run / "wall.jsonl").read_text().splitlines()) == 1
        config = (run / "config.yaml").read_text()
        assert "fast_dropout: true" in config
        assert ("pack: true" in config) == (agent == "decision-aaren")
        batch = "batch_size: 3" if agent == "decision-aaren" else "batch_size: 64"
        assert batch in config
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert curves.main(args) == 0  # the same command again: both runs are finished
    out = capsys.readouterr().out
    assert out.count("skip  hopper-medium-small") == 2 and "train " not in out
    run = tmp_path / "runs" / "cpu-curve-3steps" / "hopper-medium-small" / "decision-aaren"
    assert len((run / "seed0" / "wall.jsonl").read_text().splitlines()) == 1
