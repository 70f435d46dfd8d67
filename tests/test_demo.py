"""The two end-to-end jobs: ``aaren-rl demo`` and ``scripts/results.py``, on a dataset made here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from script_helpers import load_script

from aaren_rl.cli import main

OBS, ACT = 11, 3  # Hopper-v5
REFS = (-5.0, 95.0)
REPO = Path(__file__).resolve().parent.parent


def _write_task(tmp_path: Path, max_episode_steps: int = 20) -> Path:
    """A D4RL-layout file (12..30-step episodes, actions a function of states) and its spec."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(12, 31, size=8)
    obs = rng.normal(size=(int(lengths.sum()), OBS)).astype(np.float32)
    weights = rng.normal(size=(OBS, ACT)) / math.sqrt(OBS)
    ends = np.cumsum(lengths) - 1
    timeouts = np.zeros(len(obs), dtype=bool)
    timeouts[ends] = True
    with h5py.File(tmp_path / "toy.hdf5", "w") as f:
        f["observations"] = obs
        f["actions"] = np.tanh(obs @ weights).astype(np.float32)
        f["rewards"] = np.ones(len(obs), dtype=np.float32)
        f["terminals"] = np.zeros(len(obs), dtype=bool)
        f["timeouts"] = timeouts
    spec = {
        "name": "toy-hopper",
        "env_id": "Hopper-v5",
        "dataset": str(tmp_path / "toy.hdf5"),
        "max_episode_steps": max_episode_steps,
        "reward_scale": 0.01,
        "target_returns": [30.0, 15.0],
        "reference_scores": list(REFS),
        "reference_source": "hand-made",
    }
    path = tmp_path / "toy-hopper.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _score(ret: float) -> float:
    return 100.0 * (ret - REFS[0]) / (REFS[1] - REFS[0])


def test_demo_trains_evaluates_and_reports_step_costs(tmp_path, capsys):
    task = _write_task(tmp_path)
    out = tmp_path / "demo"
    args = ["demo", "--task", str(task), "--out", str(out), "--steps", "3", "--episodes", "2"]
    args += ["--envs", "2", "--profile-steps", "30", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "demo.json").read_text())
    ev = report["evaluation"]
    assert report["train"]["steps"] == 3 and (out / "train" / "checkpoint.pt").is_file()
    assert len(ev["returns"]) == 2 and all(1 <= n <= 20 for n in ev["lengths"])
    assert ev["normalized_scores"] == pytest.approx([_score(r) for r in ev["returns"]])
    assert f"normalised score {np.mean(ev['normalized_scores']):.1f}" in printed
    costs = report["step_costs"]
    aaren = costs["Aaren, the model's own step"]["state_bytes_per_env"]
    # docs/design.md: (d_head + 2) float32 numbers per head per layer: 3 layers, 1 head of 128
    assert aaren == [3 * 1 * (128 + 2) * 4] * 30
    # the rollout's FastDecisionStep is timed too, on numba (a default dependency): the same
    # Aaren memory plus the pending action it carries (3 float32, an int64 timestep, a flag)
    fast = costs["Aaren, FastDecisionStep"]
    assert fast["backend"] == "numba"
    assert costs["Aaren, the model's own step"]["backend"] == "model"
    assert fast["state_bytes_per_env"] == [3 * 1 * (128 + 2) * 4 + 3 * 4 + 8 + 1] * 30
    assert "rollout step: FastDecisionStep compiled by numba" in printed
    assert "Aaren, FastDecisionStep (numba)" in printed
    kv = np.asarray(costs["Transformer, full KV cache"]["state_bytes_per_env"])
    assert np.all(np.diff(kv) == kv[1] - kv[0]) and kv[1] > kv[0]  # grows linearly with t
    window = np.asarray(costs["Transformer, DT window recompute"]["state_bytes_per_env"])
    assert window[-1] == window[20] > window[0]  # bounded by DT's 20-step window
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second demo resumes the finished run instead of training again
    mtime = (out / "train" / "checkpoint.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "train" / "checkpoint.pt").stat().st_mtime_ns == mtime
    # a folder holding someone else's demo.json is refused, the file left alone
    other = tmp_path / "other"
    other.mkdir()
    (other / "demo.json").write_text('{"mine": true}')
    assert main(["demo", "--task", str(task), "--out", str(other), "--steps", "1"]) == 2
    assert "not written by `aaren-rl demo`" in capsys.readouterr().err
    assert (other / "demo.json").read_text() == '{"mine": true}'


def _results_module():
    return load_script("results")


def test_results_script_trains_both_samplers_writes_the_table_and_resumes(tmp_path, capsys):
    results = _results_module()
    task = _write_task(tmp_path, max_episode_steps=15)
    agent = tmp_path / "tiny.yaml"
    model = {"backbone": "aaren", "d_model": 16, "n_layers": 1, "context": 5, "max_timestep": 64}
    train = {"sampler": "prefix", "max_len": 40, "batch_size": 4, "warmup_steps": 1}
    agent.write_text(yaml.safe_dump({"name": "tiny", "model": model, "train": train}))
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nHand-written protocol notes.\n")
    argv = ["--tasks", str(task), "--agents", str(agent), f"{agent}@window", "--seeds", "0", "1"]
    argv += ["--steps", "2", "--eval-episodes", "2", "--protocol", "", "--runs"]
    argv += [str(tmp_path / "runs"), "--doc", str(doc), "--device", "cpu", "--no-progress"]
    assert results.main(argv) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nHand-written protocol notes.\n")
    assert results.BEGIN in text and results.END in text
    assert "--eval-episodes 2" in text  # the exact command is recorded
    runs = tmp_path / "runs" / "published-2steps" / "toy-hopper"
    for label in ("tiny", "tiny-window"):
        scores = []
        for seed in (0, 1):
            metrics = json.loads((runs / label / f"seed{seed}" / "metrics.json").read_text())
            final = metrics["final_eval"]
            assert [r["target_return"] for r in final] == [30.0, 15.0]
            assert final[0]["normalized_mean"] == pytest.approx(
                np.mean([_score(r) for r in final[0]["returns"]])
            )
            scores.append(final[0]["normalized_mean"])
        cell = f"{np.mean(scores):.1f} ± {np.std(scores):.1f} (n=2)"
        assert cell in text
    config = yaml.safe_load((runs / "tiny-window" / "seed0" / "config.yaml").read_text())
    assert config["agent"]["train"]["sampler"] == "window"
    capsys.readouterr()

    # run again: every run is skipped, nothing is retrained, the table is rewritten in place
    ckpt = runs / "tiny" / "seed0" / "checkpoint.pt"
    mtime = ckpt.stat().st_mtime_ns
    assert results.main(argv) == 0
    assert capsys.readouterr().out.count("skip ") == 4
    assert ckpt.stat().st_mtime_ns == mtime
    assert doc.read_text().count(results.BEGIN) == 1
