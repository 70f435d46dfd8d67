"""Exact resume and its logs: a second stop signal, TensorBoard after a resume, the logged loss
window, resuming on other data, and SIGTERM to ``aaren-rl fit`` (each checked against an
uninterrupted run or the files on disk)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_heads_forecast import _write_csv
from test_trainer import _trainer, _write_presets

from aaren_rl.agents.checkpoint import load_checkpoint
from aaren_rl.cli import main
from aaren_rl.training import TrainingInterrupted, TrainingLoop
from aaren_rl.training.checkpoint import load_checkpoint as load_run_checkpoint
from aaren_rl.training.loop import TrainingAborted

ROOT = Path(__file__).resolve().parent.parent
KW = {"sampler": "prefix", "max_len": 40}


def _signal_in_step(monkeypatch, at_step: int, signals: list[int]) -> None:
    """Raise ``signals`` (one after the other) inside the loss of step ``at_step``."""
    original = TrainingLoop.compute_loss

    def loss(self, batch):
        out = original(self, batch)
        if self.step + 1 == at_step:
            for sig in signals:
                signal.raise_signal(sig)
        return out

    monkeypatch.setattr(TrainingLoop, "compute_loss", loss)


def _scalars(tb: Path, tag: str) -> list[tuple[int, float]]:
    """What TensorBoard shows for ``tag`` (its own reader, which applies the purges)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), purge_orphaned_data=True)
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


# ------------------------------------------------------------------ a second signal


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_inside_a_step_saves_nothing_half_finished(tmp_path, monkeypatch, sig):
    kw = {**KW, "steps": 8, "checkpoint_every": 2}
    _signal_in_step(monkeypatch, 6, [sig, sig])  # the second 0 s after the first, mid-step
    trainer = _trainer(tmp_path / "run", **kw)
    with pytest.raises(TrainingAborted) as err:
        trainer.train()
    assert "half-finished step was not saved" in str(err.value) and "(step 4) is kept" in str(
        err.value
    )
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()
    resumed = _trainer(tmp_path / "run", resume=True, **kw).train()
    straight = _trainer(tmp_path / "straight", **kw).train()
    assert resumed.losses == straight.losses[4:]
    for a, b in zip(
        straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_second_signal_during_the_final_write_waits_for_it(tmp_path, monkeypatch):
    import aaren_rl.training.checkpoint as ckpt

    kw = {**KW, "steps": 8, "checkpoint_every": 100}
    _signal_in_step(monkeypatch, 3, [signal.SIGINT])
    real_save = torch.save

    def save_then_signal(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C again while the checkpoint is written

    monkeypatch.setattr(ckpt.torch, "save", save_then_signal)
    with pytest.raises(TrainingInterrupted) as err:
        _trainer(tmp_path / "run", **kw).train()
    assert err.value.step == 3
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    resumed = _trainer(tmp_path / "run", resume=True, **kw).train()
    assert resumed.losses == _trainer(tmp_path / "straight", **kw).train().losses[3:]


# ------------------------------------------------------------------ logs after a resume


def test_tensorboard_and_eval_log_keep_the_checkpoint_step_after_a_resume(tmp_path):
    """Stop at 4 (a checkpoint, a logged loss and an evaluation there), resume to 8: every
    point appears once with the uninterrupted run's value."""
    from test_heads_forecast import ForecastData, get_head

    from aaren_rl.heads.fit import BackboneConfig, HeadTrainer
    from aaren_rl.training.config import LoopConfig

    data = ForecastData.from_csv(_write_csv(tmp_path / "s.csv"), 24, 6)
    head = get_head("forecast")

    def trainer(out: Path, resume: bool = False) -> HeadTrainer:
        torch.manual_seed(0)
        model = head.build_model(data, BackboneConfig("aaren", 16, 1, 2).build(), patch_len=4)
        cfg = LoopConfig(
            steps=8,
            batch_size=4,
            lr=1e-3,
            warmup_steps=2,
            checkpoint_every=100,
            log_every=2,
            eval_every=4,
        )
        return HeadTrainer(head, model, data, cfg, out_dir=out, resume=resume, progress=False)

    trainer(tmp_path / "straight").train()
    trainer(tmp_path / "run").train(stop_at=4)
    trainer(tmp_path / "run", resume=True).train()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "eval/test_mse"):
        got = _scalars(tmp_path / "run" / "tb", tag)
        assert got == _scalars(tmp_path / "straight" / "tb", tag), tag
    assert [s for s, _ in _scalars(tmp_path / "run" / "tb", "train/loss")] == [2, 4, 6, 8]
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "eval.jsonl").open()]
    assert steps == [4, 8]


def test_eval_log_drops_the_records_a_killed_run_wrote_past_its_checkpoint(tmp_path):
    kw = {**KW, "steps": 6, "checkpoint_every": 2}
    trainer = _trainer(tmp_path / "run", **kw)
    trainer.train(stop_at=2)
    with open(tmp_path / "run" / "eval.jsonl", "a") as f:  # a run killed at step 3 wrote these
        f.write(json.dumps({"step": 2, "x": 1}) + "\n" + json.dumps({"step": 3, "x": 1}) + "\n")
        f.write('{"step": 3, "x"')  # cut by the kill
    _trainer(tmp_path / "run", resume=True, **kw).train()
    records = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").open()]
    assert records == [{"step": 2, "x": 1}]  # eval_episodes=0: the resumed run evaluates none


def test_loss_logged_after_a_sigterm_resume_is_the_mean_of_the_whole_window(tmp_path, monkeypatch):
    kw = {**KW, "steps": 10, "checkpoint_every": 100, "log_every": 10}
    _signal_in_step(monkeypatch, 4, [signal.SIGTERM])
    with pytest.raises(TrainingInterrupted):
        _trainer(tmp_path / "run", **kw).train()
    monkeypatch.undo()
    _trainer(tmp_path / "run", resume=True, **kw).train()
    straight = _trainer(tmp_path / "straight", **kw).train()
    logged = _scalars(tmp_path / "run" / "tb", "train/loss")
    assert logged == _scalars(tmp_path / "straight" / "tb", "train/loss")
    assert logged[0][0] == 10 and logged[0][1] == pytest.approx(np.mean(straight.losses), 1e-6)


# ------------------------------------------------------------------ resuming on other data


def test_resume_on_other_data_of_the_same_shape_is_refused_naming_both(tmp_path):
    kw = {**KW, "steps": 6, "checkpoint_every": 2}
    _trainer(tmp_path / "run", **kw).train(stop_at=2)
    other = _trainer(tmp_path / "scratch", **kw)
    other.dataset.rewards[:] += 1.0  # the same shapes, other numbers
    other.dataset.source = "other.hdf5"
    from aaren_rl.agents.trainer import Trainer

    with pytest.raises(ValueError, match="cannot resume") as err:
        Trainer(
            other.model,
            other.dataset,
            other.task,
            other.cfg,
            agent_config=other.agent_config,
            out_dir=tmp_path / "run",
            resume=True,
            progress=False,
        )
    message = str(err.value)
    assert "\n" not in message and "other.hdf5" in message and "<arrays>" in message
    assert "differ in hash" in message and "another --out" in message


def test_cli_resume_with_another_task_is_refused_and_keeps_config_yaml(tmp_path, capsys):
    agent, task = _write_presets(tmp_path, steps=4, checkpoint_every=2)
    out = tmp_path / "run"
    argv = ["train", "--agent", str(agent), "--out", str(out), "--no-progress"]
    assert main([*argv, "--task", str(task)]) == 0  # a finished run
    config_before = (out / "config.yaml").read_text()
    spec = yaml.safe_load(task.read_text())
    other = tmp_path / "other-task.yaml"
    other.write_text(yaml.safe_dump({**spec, "name": "other-hopper"}))
    capsys.readouterr()
    assert main([*argv, "--task", str(other), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[0]
    assert "toy-hopper" in err[0] and "other-hopper" in err[0]
    assert (out / "config.yaml").read_text() == config_before


def test_fit_forecast_resume_on_another_csv_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["fit", "forecast", "--input-len", "24", "--horizon", "6", "--patch-len", "4"]
    args += ["--d-model", "16", "--n-layers", "1", "--batch-size", "8", "--out", str(out)]
    args += ["--no-progress", "--warmup-steps", "2", "--steps", "2"]
    first = _write_csv(tmp_path / "a.csv", n=300)
    second = _write_csv(tmp_path / "b.csv", n=300, seed=1)
    assert main([*args, "--data", str(first)]) == 0
    capsys.readouterr()
    assert main([*args, "--data", str(second), "--resume", "--steps", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.csv" in err[0] and "b.csv" in err[0] and "cannot resume" in err[0]
    assert load_run_checkpoint(out / "aaren" / "checkpoint.pt")["step"] == 2


# ------------------------------------------------------------------ SIGTERM to `fit`


@pytest.mark.slow
def test_sigterm_to_fit_exits_cleanly_with_a_resumable_checkpoint(tmp_path):
    csv = _write_csv(tmp_path / "s.csv", n=300)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aaren_rl.cli", "fit", "forecast", "--data", str(csv)]
    cmd += ["--input-len", "24", "--horizon", "6", "--patch-len", "4", "--d-model", "16"]
    cmd += ["--n-layers", "1", "--batch-size", "8", "--out", str(out), "--no-progress"]
    cmd += ["--steps", "100000", "--checkpoint-every", "1"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
    )
    deadline = time.monotonic() + 120
    while not (out / "aaren" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("aaren-rl fit: interrupted: SIGTERM at step ") and "--resume" in err
    assert load_run_checkpoint(out / "aaren" / "checkpoint.pt")["step"] >= 1
