"""Checkpoints: a round trip rebuilds the same agent, writes are atomic, errors name the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from aaren_rl.agents.checkpoint import (
    CheckpointError,
    load_agent,
    load_checkpoint,
    save_checkpoint,
)
from aaren_rl.agents.decision_model import build_decision_model

OBS, ACT = 5, 2
MODEL_CFG = {"backbone": "aaren", "d_model": 16, "n_layers": 1, "n_heads": 2, "dropout": 0.0}
TASK = {
    "name": "toy",
    "env_id": "Hopper-v5",
    "reward_scale": 0.01,
    "target_returns": [30.0],
    "reference_scores": [0.0, 100.0],
    "max_episode_steps": 50,
}


def _trained_model_and_optim(seed: int = 0):
    torch.manual_seed(seed)
    mean = np.linspace(-1.0, 1.0, OBS).astype(np.float32)
    std = np.linspace(0.5, 2.0, OBS).astype(np.float32)
    model = build_decision_model(MODEL_CFG, OBS, ACT, mean, std, reward_scale=0.01, return_max=77.0)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):  # a few real steps so optimiser moments and the schedule are non-trivial
        obs, act = torch.randn(2, 4, OBS), torch.rand(2, 4, ACT) * 2 - 1
        rtg, ts = torch.rand(2, 4) * 100, torch.arange(4).expand(2, 4)
        pred, _ = model(obs, act, rtg, ts)
        loss = (pred - act).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return model, optim, sched


def _save(path, model, optim, sched, run_id="run-a", **kw):
    return save_checkpoint(
        path,
        model=model,
        optimizer=optim,
        scheduler=sched,
        step=3,
        agent_config={"name": "toy-agent", "model": MODEL_CFG, "train": {"lr": 1e-3}},
        train_config={"lr": 1e-3, "steps": 10},
        task=TASK,
        rng_state={"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        run_id=run_id,
        **kw,
    )


def test_round_trip_rebuilds_the_same_agent_without_the_dataset(tmp_path):
    model, optim, sched = _trained_model_and_optim()
    path = _save(tmp_path / "ckpt.pt", model, optim, sched)
    rebuilt, info = load_agent(path)
    assert info["step"] == 3 and info["task"] == TASK and info["obs_dim"] == OBS
    assert info["agent_config"]["name"] == "toy-agent"
    # buffers (normalisation, reward scale) come from the file, not from defaults
    assert torch.equal(rebuilt.state_mean, model.state_mean)
    assert torch.equal(rebuilt.state_std, model.state_std)
    assert float(rebuilt.reward_scale) == pytest.approx(0.01)
    assert float(rebuilt.return_max) == 77.0
    for name, p in model.state_dict().items():
        assert torch.equal(p, rebuilt.state_dict()[name]), name
    model.eval()
    obs, act = torch.randn(3, 6, OBS), torch.rand(3, 6, ACT)
    rtg, ts = torch.rand(3, 6) * 50, torch.arange(6).expand(3, 6)
    with torch.no_grad():
        assert torch.equal(model(obs, act, rtg, ts)[0], rebuilt(obs, act, rtg, ts)[0])
        s1, s2 = model.initial_state(3), rebuilt.initial_state(3)
        a1, _ = model.act(obs[:, 0], rtg[:, 0], ts[:, 0], s1)
        a2, _ = rebuilt.act(obs[:, 0], rtg[:, 0], ts[:, 0], s2)
    assert torch.equal(a1, a2)
    assert not rebuilt.training


def test_optimizer_and_scheduler_state_round_trip(tmp_path):
    model, optim, sched = _trained_model_and_optim()
    rng_at_save = torch.get_rng_state()
    path = _save(tmp_path / "ckpt.pt", model, optim, sched)
    data = load_checkpoint(path)
    model2, optim2, sched2 = _trained_model_and_optim(seed=1)
    model2.load_state_dict(data["model_state"])
    optim2.load_state_dict(data["optimizer"])
    sched2.load_state_dict(data["scheduler"])
    assert sched2.last_epoch == sched.last_epoch == 3
    assert sched2.get_last_lr() == sched.get_last_lr()
    for group_a, group_b in zip(optim.state.values(), optim2.state.values(), strict=True):
        assert torch.equal(group_a["exp_avg"], group_b["exp_avg"])
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    assert torch.equal(data["rng_state"]["torch"], rng_at_save)
    assert data["rng_state"]["python"] == (3, (1, 2, 3), None)


def test_write_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path):
    model, optim, sched = _trained_model_and_optim()
    path = _save(tmp_path / "ckpt.pt", model, optim, sched)
    before = path.read_bytes()
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        _save(path, model, optim, sched, extra={"bad": Unpicklable()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_refuses_to_overwrite_another_runs_checkpoint(tmp_path):
    model, optim, sched = _trained_model_and_optim()
    path = _save(tmp_path / "ckpt.pt", model, optim, sched, run_id="run-a")
    _save(path, model, optim, sched, run_id="run-a")  # same run: fine
    with pytest.raises(CheckpointError, match="another run") as err:
        _save(path, model, optim, sched, run_id="run-b")
    assert str(path) in str(err.value)
    assert load_checkpoint(path)["run_id"] == "run-a"
    _save(path, model, optim, sched, run_id="run-b", overwrite=True)
    assert load_checkpoint(path)["run_id"] == "run-b"
    # a user's unrelated file is never replaced either
    other = tmp_path / "notes.pt"
    other.write_text("my notes")
    with pytest.raises(CheckpointError):
        _save(other, model, optim, sched)
    assert other.read_text() == "my notes"


def test_bad_paths_give_clear_errors(tmp_path):
    missing = tmp_path / "nope" / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint") as err:
        load_agent(missing)
    assert str(missing) in str(err.value)

    model, optim, sched = _trained_model_and_optim()
    good = _save(tmp_path / "good.pt", model, optim, sched)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated, corrupt") as err:
        load_checkpoint(truncated)
    assert str(truncated) in str(err.value)

    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_agent(text)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.raises(CheckpointError, match="not an aaren-rl checkpoint"):
        load_checkpoint(foreign)

    # a folder with a checkpoint.pt inside is accepted, as `aaren-rl evaluate RUN_DIR` needs
    run_dir = tmp_path / "run"
    _save(run_dir / "checkpoint.pt", model, optim, sched)
    assert load_checkpoint(run_dir)["step"] == 3
