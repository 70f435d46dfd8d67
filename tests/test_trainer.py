"""The trainer: schedule and loss against hand values, learning, exact resume, DDP, CLI, logs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from aaren_rl.agents.checkpoint import load_checkpoint
from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.agents.train_cli import resolve_agent
from aaren_rl.agents.trainer import (
    LRSchedule,
    TrainConfig,
    Trainer,
    masked_action_mse,
    seed_everything,
)
from aaren_rl.data.d4rl_reader import load_d4rl
from aaren_rl.data.tasks import task_from_dict
from aaren_rl.data.trajectories import TrajectoryDataset

OBS, ACT = 11, 3  # Hopper-v5's spaces, so that the rollout can run on the real environment
REFS = (-5.0, 95.0)


def _synthetic_arrays(n_episodes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of 12..30 steps whose actions are a fixed smooth function of the states."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(OBS, ACT)) / math.sqrt(OBS)
    lengths = rng.integers(12, 31, size=n_episodes)
    obs = rng.normal(size=(int(lengths.sum()), OBS)).astype(np.float32)
    actions = np.tanh(1.5 * obs @ weights).astype(np.float32)
    rewards = (1.0 + 0.1 * obs[:, 0]).astype(np.float32)
    ends = np.cumsum(lengths) - 1
    terminals = np.zeros(len(obs), dtype=bool)
    timeouts = np.zeros(len(obs), dtype=bool)
    terminals[ends[::2]] = True
    timeouts[ends[1::2]] = True
    return {
        "observations": obs,
        "actions": actions,
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
    }


def _task_dict(dataset: str = "toy.hdf5") -> dict:
    return {
        "name": "toy-hopper",
        "env_id": "Hopper-v5",
        "dataset": dataset,
        "max_episode_steps": 40,
        "reward_scale": 0.01,
        "target_returns": [30.0],
        "reference_scores": list(REFS),
        "reference_source": "hand-made",
    }


def _tiny_model_cfg(backbone: str = "aaren", dropout: float = 0.1) -> dict:
    return {
        "backbone": backbone,
        "d_model": 16,
        "n_layers": 1,
        "n_heads": 1,
        "dropout": dropout,
        "context": 5,
        "max_timestep": 64,
    }


def _dataset() -> TrajectoryDataset:
    arrays = _synthetic_arrays()
    return TrajectoryDataset.from_arrays(
        arrays["observations"],
        arrays["actions"],
        arrays["rewards"],
        arrays["terminals"],
        arrays["timeouts"],
    )


def _trainer(tmp_path: Path | None, resume: bool = False, **train_kw) -> Trainer:
    dataset = _dataset()
    task = task_from_dict(_task_dict(), "toy-hopper.yaml")
    model_cfg = _tiny_model_cfg(**train_kw.pop("model_kw", {}))
    cfg = TrainConfig.from_dict(
        {"steps": 8, "batch_size": 4, "lr": 1e-3, "warmup_steps": 3, "eval_episodes": 0} | train_kw
    )
    seed_everything(cfg.seed)
    model = build_decision_model(
        model_cfg, OBS, ACT, dataset.state_mean, dataset.state_std, task.reward_scale
    )
    return Trainer(
        model,
        dataset,
        task,
        cfg,
        agent_config={"name": "tiny", "model": model_cfg},
        out_dir=tmp_path,
        resume=resume,
        progress=False,
    )


def _write_d4rl_file(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in _synthetic_arrays().items():
            f.create_dataset(key, data=value)
    return path


def _write_presets(tmp_path: Path, steps: int = 6, **train_kw) -> tuple[Path, Path]:
    data = _write_d4rl_file(tmp_path / "toy.hdf5")
    task = tmp_path / "toy-hopper.yaml"
    task.write_text(yaml.safe_dump(_task_dict(str(data))))
    agent = tmp_path / "tiny-agent.yaml"
    train = {"sampler": "prefix", "max_len": 40, "batch_size": 4, "steps": steps}
    train |= {"warmup_steps": 2, "eval_episodes": 0, "log_every": 2}
    agent.write_text(
        yaml.safe_dump(
            {"name": "tiny", "model": _tiny_model_cfg(), "train": train | train_kw},
        )
    )
    return agent, task


# ------------------------------------------------------------------ hand-computed pieces


def test_lr_schedule_matches_hand_values():
    warm = LRSchedule(warmup_steps=4, total_steps=10, kind="constant")
    assert [warm(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = LRSchedule(warmup_steps=2, total_steps=6, kind="cosine", min_ratio=0.2)
    # after warmup, progress p = (s - 2) / 4; factor = 0.2 + 0.8 * (1 + cos(pi p)) / 2
    expected = [0.5, 1.0, 1.0, 0.2 + 0.4 * (1 + math.cos(math.pi / 4)), 0.6, 0.2 + 0.4 * 0.2929]
    got = [cos(s) for s in range(6)]
    assert got[:5] == pytest.approx(expected[:5], abs=1e-12)
    assert got[5] == pytest.approx(0.2 + 0.4 * (1 + math.cos(3 * math.pi / 4)), abs=1e-12)
    assert cos(6) == pytest.approx(0.2) and cos(100) == pytest.approx(0.2)
    # and the optimiser really sees lr * factor at each step
    trainer = _trainer(None, steps=5, warmup_steps=4, lr=1e-3)
    lrs = []
    for _ in range(5):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train_step()
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_masked_action_mse_counts_only_valid_positions():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # valid squared errors: 1, 4, 4, 9 -> mean 4.5 (the padded 81s are ignored)
    assert masked_action_mse(pred, target, mask).item() == pytest.approx(4.5)
    assert masked_action_mse(pred, target, None).item() == pytest.approx((18 + 162) / 6)


def test_train_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"agent\.yaml: unknown train key\(s\) \['stpes'\]"):
        TrainConfig.from_dict({"stpes": 10}, source="agent.yaml")
    with pytest.raises(ValueError, match="sampler='windows'"):
        TrainConfig.from_dict({"sampler": "windows"})
    agent, _ = _write_presets(tmp_path, lr=-1.0)
    with pytest.raises(ValueError, match=rf"{agent.name}.*lr=-1\.0"):
        resolve_agent(agent)
    with pytest.raises(ValueError, match="no protocol 'gpu'"):
        resolve_agent(agent, protocol="gpu")


# ------------------------------------------------------------------ behaviour


@pytest.mark.parametrize("sampler", ["prefix", "window"])
def test_loss_falls_on_a_tiny_dataset(sampler):
    trainer = _trainer(
        None, steps=150, batch_size=8, lr=3e-3, warmup_steps=10, sampler=sampler, max_len=40
    )
    losses = trainer.train().losses
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    # the actions are a deterministic function of the state: the model must learn most of it
    assert last < 0.3 * first, (first, last)


@pytest.mark.parametrize("cpu_curve", [False, True], ids=["default", "packed-fast-dropout"])
def test_resume_continues_exactly(tmp_path, cpu_curve):
    """8 steps straight == 4 steps, stop, new process state, resume, 4 more (bitwise); also
    with the cpu-curve protocol's packed prefixes and CPU dropout masks."""
    kw = {"steps": 8, "sampler": "prefix", "max_len": 40, "checkpoint_every": 100}
    if cpu_curve:
        kw |= {"pack": True, "fast_dropout": True}
    straight = _trainer(tmp_path / "straight", **kw).train()
    first = _trainer(tmp_path / "split", **kw).train(stop_at=4)
    assert first.end_step == 4 and not first.finished
    torch.manual_seed(12345)  # disturb every global stream: the checkpoint must restore them
    np.random.seed(12345)  # noqa: NPY002
    resumed_trainer = _trainer(tmp_path / "split", resume=True, **kw)
    assert resumed_trainer.step == 4
    second = resumed_trainer.train()
    assert second.finished and second.start_step == 4
    assert first.losses + second.losses == straight.losses  # float32, bitwise
    for (name, a), b in zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    _trainer(tmp_path, steps=2).train()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        _trainer(tmp_path, steps=2)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # resuming a finished run trains nothing and rewrites nothing
    again = _trainer(tmp_path, resume=True, steps=2).train()
    assert (again.start_step, again.end_step, again.losses, again.finished) == (2, 2, [], True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ValueError, match=r"model config differs in \['d_model'\]"):
        trainer = _trainer(tmp_path, resume=True, steps=4)
        trainer.model.config.d_model = 32  # as if the preset had changed
        trainer._load(tmp_path / "checkpoint.pt")


def test_checkpoint_from_before_new_model_keys_resumes(tmp_path):
    """A run written before model keys existed (return_token, clip_return, return_max)
    resumes: missing keys take their defaults, the weights and step carry over."""
    _trainer(tmp_path, steps=2).train()
    path = tmp_path / "checkpoint.pt"
    data = load_checkpoint(path)
    for key in ("return_token", "clip_return"):
        del data["model_config"][key]
    del data["model_state"]["return_max"]
    torch.save(data, path)
    resumed = _trainer(tmp_path, resume=True, steps=3)
    assert resumed.step == 2
    for name, value in data["model_state"].items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.train().end_step == 3
    # weights under other names (another library version) are a clear error, not a traceback
    data = load_checkpoint(path)
    data["model_state"] = {f"old.{k}": v for k, v in data["model_state"].items()}
    torch.save(data, path)
    with pytest.raises(ValueError, match=r"checkpoint.pt: cannot resume: the checkpoint's weights"):
        _trainer(tmp_path, resume=True, steps=4)


def test_evaluation_logs_normalised_scores_from_real_rollouts(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, steps=4, eval_every=2, eval_episodes=2, eval_envs=2, log_every=1)
    result = trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [2, 4]
    for rec in lines:
        assert len(rec["returns"]) == 2 and rec["target_return"] == 30.0
        scores = [100 * (r - REFS[0]) / (REFS[1] - REFS[0]) for r in rec["returns"]]
        assert rec["normalized_mean"] == pytest.approx(np.mean(scores))
        assert rec["mean_return"] == pytest.approx(np.mean(rec["returns"]))
        assert 1 <= rec["mean_length"] <= 40  # the task's time limit is respected
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["final_eval"] == lines[-1:]
    assert [r.step for r in result.evaluations] == [2, 4]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "eval/normalized_score/30", "eval/return/30"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert events.Scalars("eval/normalized_score/30")[-1].value == pytest.approx(
        lines[-1]["normalized_mean"], rel=1e-6
    )


def test_cli_trains_from_preset_files_and_resumes(tmp_path, capsys):
    from aaren_rl.cli import main

    agent, task = _write_presets(tmp_path, steps=4)
    out = tmp_path / "run"
    args = ["train", "--agent", str(agent), "--task", str(task), "--out", str(out)]
    assert main([*args, "--no-progress", "--device", "cpu"]) == 0
    first = load_checkpoint(out / "checkpoint.pt")
    assert first["step"] == 4
    # the largest return-to-go of the training data travels with the weights (clip_return)
    rtg_max = float(load_d4rl(tmp_path / "toy.hdf5").rtg.max())
    assert float(first["model_state"]["return_max"]) == pytest.approx(rtg_max, rel=1e-6)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["agent"]["train"]["sampler"] == "prefix"
    assert config["task"]["reference_scores"] == list(REFS)
    # a second run into the same folder is refused with a clear message, file untouched
    assert main([*args, "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--no-progress", "--resume", "--steps", "6"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    # overrides reach the model; a bad task file is a clear error naming the field
    bad_task = tmp_path / "bad-task.yaml"
    bad = _task_dict(str(tmp_path / "toy.hdf5"))
    del bad["env_id"]
    bad_task.write_text(yaml.safe_dump(bad))
    code = main(["train", "--agent", str(agent), "--task", str(bad_task), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "env_id" in err and "bad-task.yaml" in err


TORCHRUN_SCRIPT = """
import os, sys, torch
from aaren_rl.agents.train_cli import run_training

agent, task, out = sys.argv[1:4]
res = run_training(agent, task, out_dir=out, device="cpu", progress=False)
rank = int(os.environ["RANK"])
flat = torch.cat([p.detach().flatten() for p in res.model.parameters()])
torch.save({"params": flat, "losses": res.losses, "world": int(os.environ["WORLD_SIZE"])},
           os.path.join(os.path.dirname(out), f"rank{rank}.pt"))
"""


def test_torchrun_two_processes_train_and_replicas_stay_equal(tmp_path):
    agent, task = _write_presets(tmp_path, steps=5, checkpoint_every=2)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*cmd, str(script), str(agent), str(task), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert torch.equal(r0["params"], r1["params"])  # DDP kept the replicas identical
    assert r0["losses"][0] != r1["losses"][0]  # each rank drew its own batch
    assert all(np.isfinite(r0["losses"] + r1["losses"]))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 5 and ckpt["rng_state"]["world_size"] == 2
    assert len(ckpt["rng_state"]["ranks"]) == 2
    params = dict(build_decision_model(ckpt["model_config"], OBS, ACT).named_parameters())
    flat = torch.cat([ckpt["model_state"][name].flatten() for name in params])
    assert torch.equal(flat, r0["params"])
    assert "state_mean" in ckpt["model_state"]  # normalisation travels with the weights
    assert len(list((out / "tb").iterdir())) == 1  # only rank 0 logs
