"""The length curriculum: stretching the timestep table, fine-tuning from a checkpoint, and
scripts/memory_results.py's --curriculum-from protocol.

References: the stretched table against linear interpolation by hand, the recurrent rollout of
a stretched model against its own parallel forward, and the checkpoint's weights and buffers
against the fine-tuned model's starting point.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from script_helpers import load_script

from aaren_rl.agents.checkpoint import load_agent
from aaren_rl.agents.decision_model import build_decision_model, stretch_timesteps
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.agents.train_cli import init_model_from, resolve_agent, run_training
from aaren_rl.data.d4rl_reader import load_d4rl
from aaren_rl.data.tasks import task_from_dict
from aaren_rl.envs import register_tmaze
from aaren_rl.envs.memory_datasets import build_dataset

REPO = Path(__file__).resolve().parent.parent
SMALL = {"d_model": 16, "n_layers": 2, "n_heads": 1, "context": 4, "dropout": 0.0}


def _model(max_timestep: int, **extra):
    torch.manual_seed(0)
    config = {**SMALL, "action_space": "discrete", "max_timestep": max_timestep, **extra}
    return build_decision_model(config, 3, 4, state_std=[0.3, 0.3, 0.4])


def test_stretch_keeps_every_old_row_and_interpolates_between_them():
    model = _model(5)
    old = model.embed_timestep.weight.detach().clone()
    others = {k: v.clone() for k, v in model.state_dict().items() if "embed_timestep" not in k}
    stretch_timesteps(model, 9)  # (5 - 1) * 2 + 1: every old row k lands on new row 2 k
    new = model.embed_timestep.weight.detach()
    assert new.shape == (9, 16) and model.config.max_timestep == 9
    for k in range(5):
        torch.testing.assert_close(new[2 * k], old[k], rtol=0, atol=1e-6)
    for k in range(4):
        torch.testing.assert_close(new[2 * k + 1], (old[k] + old[k + 1]) / 2, rtol=0, atol=1e-6)
    for key, value in model.state_dict().items():
        if "embed_timestep" not in key:
            torch.testing.assert_close(value, others[key], rtol=0, atol=0)
    # a shrink reads the old table at j * 8 / 2: rows 0, 4 and 8
    stretch_timesteps(model, 3)
    torch.testing.assert_close(
        model.embed_timestep.weight.detach(), old[[0, 2, 4]], atol=1e-6, rtol=0
    )
    assert stretch_timesteps(model, 3).embed_timestep.weight.shape == (3, 16)  # no-op
    with pytest.raises(ValueError, match="max_timestep must be a positive integer"):
        stretch_timesteps(model, 0)


def test_a_stretched_model_rolls_out_like_its_parallel_forward():
    model = stretch_timesteps(_model(7), 13).eval()
    env_id = "aaren_rl.envs:" + register_tmaze(12)
    result = evaluate_agent(model, env_id, 1.0, n_episodes=2, n_envs=2, seed=0, record=True)
    for ep in result.episodes:
        assert len(ep.rewards) == 13  # L + 1 steps, every one with its own (stretched) row
        # the return-to-go the rollout fed: the target minus the rewards before each step
        returns = torch.full((1, len(ep.rewards)), 1.0)
        returns[0, 1:] -= torch.as_tensor(np.cumsum(ep.rewards)[:-1], dtype=torch.float32)
        with torch.no_grad():
            logits, _ = model(
                torch.as_tensor(ep.observations)[None],
                torch.as_tensor(ep.actions)[None],
                returns,
                torch.arange(len(ep.rewards))[None],
            )
        np.testing.assert_array_equal(logits[0].argmax(-1).numpy(), ep.actions.argmax(1))


def _task(tmp_path: Path, length: int):
    env_id = "aaren_rl.envs:" + register_tmaze(length)
    data = tmp_path / f"tmaze-l{length}.hdf5"
    raw = {
        "name": f"tmaze-l{length}",
        "env_id": env_id,
        "dataset": str(data),
        "dataset_format": "d4rl",
        "max_episode_steps": length + 1,
        "reward_scale": 1.0,
        "target_returns": [1.0],
        "reference_scores": {"success": [0.0, 1.0], "use": "success"},
    }
    task = task_from_dict(raw, tmp_path / f"tmaze-l{length}.yaml")
    build_dataset(task, n_episodes=24, seed=0)
    return task, load_d4rl(data, max_episode_steps=length + 1)


def _write_task_spec(tmp_path: Path, length: int) -> None:
    """``tmp_path/tmaze-l{length}.yaml``: a task spec over ``_task``'s dataset, as a user writes
    one for ``--task PATH``."""
    import yaml

    task, _ = _task(tmp_path, length)
    raw = {
        "name": f"tmaze-l{length}",
        "env_id": task.env_id,
        "dataset": str(tmp_path / f"tmaze-l{length}.hdf5"),
        "dataset_format": "d4rl",
        "max_episode_steps": length + 1,
        "reward_scale": 1.0,
        "target_returns": [1.0],
        "reference_scores": {"success": [0.0, 1.0], "use": "success"},
    }
    (tmp_path / f"tmaze-l{length}.yaml").write_text(yaml.safe_dump(raw))


def _agent(length: int, lr: float = 1e-3) -> dict:
    return {
        "name": "tiny",
        "model": {**SMALL, "backbone": "aaren", "max_timestep": length + 1},
        "train": {
            "sampler": "full",
            "max_len": length + 1,
            "batch_size": 4,
            "steps": 3,
            "warmup_steps": 1,
            "lr": lr,
            "eval_every": 0,
            "eval_episodes": 0,
            "checkpoint_every": 1000,
        },
    }


def test_init_from_starts_at_the_checkpoints_weights_and_normalisation(tmp_path):
    task4, data4 = _task(tmp_path, 4)
    task8, data8 = _task(tmp_path, 8)
    first = run_training(_agent(4), task4, out_dir=tmp_path / "l4", progress=False, dataset=data4)
    ckpt = tmp_path / "l4" / "checkpoint.pt"
    trained, _ = load_agent(ckpt)
    preset = resolve_agent(_agent(8), overrides={"model.action_space": "discrete"})
    start = init_model_from(ckpt, preset, data8)
    assert start.config.max_timestep == 9
    want = stretch_timesteps(trained, 9).state_dict()
    for key, value in start.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0)
    # the L = 4 data's statistics, not the L = 8 data's (the cue is rarer in longer episodes)
    torch.testing.assert_close(start.state_mean, first.model.state_mean)
    assert not np.allclose(start.state_mean.numpy(), data8.state_mean)

    # a near-zero learning rate: the fine-tuned run is still the checkpoint's model
    tuned = run_training(
        _agent(8, lr=1e-12),
        task8,
        out_dir=tmp_path / "l8",
        progress=False,
        dataset=data8,
        init_from=ckpt,
    )
    assert tuned.end_step == 3 and tuned.model.config.max_timestep == 9
    for key, value in tuned.model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=1e-6)

    other = _agent(8)
    other["model"]["d_model"] = 32
    with pytest.raises(ValueError, match="cannot fine-tune .* d_model: 16 there, 32 here"):
        run_training(other, task8, out_dir=tmp_path / "bad", progress=False, init_from=ckpt)


def _script():
    return load_script("memory_results")


def test_memory_results_curriculum_protocol(tmp_path):
    """--curriculum-from trains each agent at L0, then fine-tunes that run at each length;
    the datasets, run folders, records and table say so; a second call is a resume."""
    script = _script()
    work, out = tmp_path / "work", tmp_path / "out"
    argv = [
        "--lengths", "8", "--seeds", "0", "--agents", "aaren", "dt",
        "--curriculum-from", "4", "--steps", "2", "--steps-at", "4=3",
        "--batch-size", "2", "--batch-at", "4=4",
        "--eval-episodes", "2", "--eval-envs", "2", "--episodes", "12",
        "--work", str(work), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert script.main(argv) == 0
    for length in (4, 8):
        data = load_d4rl(work / "data" / f"tmaze-l{length}-mixed-v0.hdf5")
        assert {len(ep) for ep in data.episodes} == {length + 1}
    for agent in ("aaren", "dt"):
        pre = work / "runs" / "L4-3steps-bs4" / agent / "seed0"
        tuned = work / "runs" / "L8-2steps-bs2-from-L4-3steps-bs4" / agent / "seed0"
        record = json.loads((tuned / "run.json").read_text())
        assert record["init_from"] == {"length": 4, "steps": 3, "batch_size": 4}
        assert record["steps"] == 2 and record["batch_size"] == 2
        assert 0.0 <= record["zero_shot_success"] <= 1.0
        assert 0.0 <= record["zero_shot_clamped_success"] <= 1.0
        assert json.loads((pre / "run.json").read_text())["init_from"] is None
        model, info = load_agent(tuned / "checkpoint.pt")
        assert model.config.max_timestep == 9 and info["train_config"]["batch_size"] == 2
    table = (out / "memory-results.md").read_text()
    assert (
        "| Decision Aaren | 8 | 2 | batch 2, fine-tuned from L=4 (3 steps, batch 4) | 1 |" in table
    )
    assert "| DT K=20 (recompute) | 4 | 3 | batch 4 | 1 |" in table

    mtime = (tuned / "run.json").stat().st_mtime_ns
    assert script.main(argv) == 0  # every run is finished: nothing is retrained
    assert (tuned / "run.json").stat().st_mtime_ns == mtime
    # a run recorded before the clamped zero-shot was measured gets it on the next call
    record = json.loads((tuned / "run.json").read_text())
    clamped = record.pop("zero_shot_clamped_success")
    (tuned / "run.json").write_text(json.dumps(record))
    assert script.main(argv) == 0
    assert json.loads((tuned / "run.json").read_text())["zero_shot_clamped_success"] == clamped

    # records of runs whose folders are gone (not committed) stay in the tables
    payload = json.loads((out / "memory-results.json").read_text())
    # (in the format of the first session's records: no batch_size, no init_from)
    old = {k: v for k, v in payload["records"][0].items() if k not in ("batch_size", "init_from")}
    gone = {**old, "length": 1000, "seed": 7}
    payload["records"].append(gone)
    (out / "memory-results.json").write_text(json.dumps(payload))
    assert script.main(["--report-only", "--work", str(work), "--out", str(out)]) == 0
    kept = json.loads((out / "memory-results.json").read_text())["records"]
    assert sum(r["length"] == 1000 and r["seed"] == 7 for r in kept) == 1
    assert len(kept) == len(payload["records"])

    # --finetune-lr: the fine-tune at another rate is a run of its own (folder, record, row);
    # the L0 run it starts from is the same one
    argv_lr = [*argv[:5], "aaren", *argv[7:], "--finetune-lr", "1e-4"]
    assert script.main(argv_lr) == 0
    slow = work / "runs" / "L8-2steps-bs2-lr0.0001-from-L4-3steps-bs4" / "aaren" / "seed0"
    assert json.loads((slow / "run.json").read_text())["lr"] == 1e-4
    assert load_agent(slow / "checkpoint.pt")[1]["train_config"]["lr"] == 1e-4
    table = (out / "memory-results.md").read_text()
    assert "| 8 | 2 | batch 2, lr 0.0001, fine-tuned from L=4 (3 steps, batch 4) | 1 |" in table


def test_cue_weights_are_softmax_weights_at_the_turn(tmp_path):
    """The script's attention read-out: every layer's weights at the turn sum to one, the
    first step's three tokens weigh at least s_0 alone, and one wide-open layer (zero scores)
    weighs every token alike."""
    script = _script()
    _, data = _task(tmp_path, 6)
    model = _model(7, backbone="aaren").eval()
    cue = script.cue_weight(model, data)
    first = script.cue_weight(model, data, first_steps=1)
    everything = script.cue_weight(model, data, first_steps=7)
    assert len(cue) == len(first) == 2
    assert all(0 < c <= f + 1e-4 for c, f in zip(cue, first, strict=True))
    np.testing.assert_allclose(everything, 1.0, atol=1e-4)
    attention = model.backbone.layers[0].attn
    with torch.no_grad():
        attention.query.zero_()
        attention.q_proj.bias.zero_()
    tokens = 3 * 6 + 2  # R, s, a for steps 0..5, then R_6 and s_6 (the turn)
    assert script.cue_weight(model, data)[0] == pytest.approx(1 / tokens, abs=1e-4)


def test_train_cli_init_from(tmp_path, capsys):
    """``aaren-rl train --init-from CKPT`` fine-tunes at a longer length from a checkpoint."""
    import yaml

    from aaren_rl.cli import main

    for length in (4, 8):
        _write_task_spec(tmp_path, length)
        (tmp_path / f"agent-l{length}.yaml").write_text(yaml.safe_dump(_agent(length)))
    common = ["--threads", "1", "--no-progress"]
    assert main(["train", "--agent", str(tmp_path / "agent-l4.yaml"),
                 "--task", str(tmp_path / "tmaze-l4.yaml"), "--out", str(tmp_path / "a"),
                 *common]) == 0  # fmt: skip
    ckpt = str(tmp_path / "a" / "checkpoint.pt")
    assert main(["train", "--agent", str(tmp_path / "agent-l8.yaml"),
                 "--task", str(tmp_path / "tmaze-l8.yaml"), "--out", str(tmp_path / "b"),
                 "--init-from", ckpt, *common]) == 0  # fmt: skip
    model, info = load_agent(tmp_path / "b" / "checkpoint.pt")
    assert model.config.max_timestep == 9 and info["step"] == 3
    bad = ["--set", "model.n_layers=3"]
    assert main(["train", "--agent", str(tmp_path / "agent-l8.yaml"),
                 "--task", str(tmp_path / "tmaze-l8.yaml"), "--out", str(tmp_path / "c"),
                 "--init-from", ckpt, *bad, *common]) == 2  # fmt: skip
    assert "cannot fine-tune from this checkpoint" in capsys.readouterr().err


def test_evaluate_cli_plays_another_task_with_the_table_stretched(tmp_path, capsys):
    """``aaren-rl evaluate CKPT --task LONGER --stretch-timesteps``: the zero-shot transfer of
    the curriculum, equal to ``evaluate_agent`` on the stretched model, episode for episode."""
    import yaml

    from aaren_rl.cli import main

    for length in (4, 8):
        _write_task_spec(tmp_path, length)
    (tmp_path / "agent-l4.yaml").write_text(yaml.safe_dump(_agent(4)))
    common = ["--threads", "1", "--no-progress"]
    assert main(["train", "--agent", str(tmp_path / "agent-l4.yaml"),
                 "--task", str(tmp_path / "tmaze-l4.yaml"), "--out", str(tmp_path / "a"),
                 *common]) == 0  # fmt: skip
    ckpt = tmp_path / "a" / "checkpoint.pt"
    out = tmp_path / "zero-shot.json"
    assert main(["evaluate", str(ckpt), "--task", str(tmp_path / "tmaze-l8.yaml"),
                 "--stretch-timesteps", "--episodes", "6", "--envs", "3", "--seed", "5",
                 "--json", str(out), *common]) == 0  # fmt: skip
    assert "timestep table stretched from 5 to 9 rows" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["task"] == "tmaze-l8" and got["env_id"] == "aaren_rl.envs:" + register_tmaze(8)
    model, _ = load_agent(ckpt)
    want = evaluate_agent(
        stretch_timesteps(model, 9).eval(), got["env_id"], 1.0, n_episodes=6, n_envs=3, seed=5
    )
    assert got["results"][0]["returns"] == [float(r) for r in want.returns]
    assert all(n == 9 for n in got["results"][0]["lengths"])  # L = 8: 9 steps per episode
    missing = str(tmp_path / "nowhere.yaml")
    assert main(["evaluate", str(ckpt), "--task", missing, *common]) == 2
    assert "--task" in capsys.readouterr().err


def test_cue_share_is_the_share_of_up_cues_the_rollout_plays():
    """Chance on an evaluation set: the script's cue count equals the cues of the episodes
    ``evaluate_agent`` really plays (read from their first observations), whatever the policy."""
    script = _script()
    model = _model(5).eval()  # untrained: its turns do not matter, the cues are the env's
    env_id = "aaren_rl.envs:" + register_tmaze(4)
    for n_episodes, n_envs, seed in [(10, 3, 7), (12, 4, 10_000), (5, 5, 1)]:
        result = evaluate_agent(
            model, env_id, 1.0, n_episodes=n_episodes, n_envs=n_envs, seed=seed, record=True
        )
        up = np.mean([ep.observations[0][0] == 1.0 for ep in result.episodes])
        assert script.cue_share(4, n_episodes, n_envs, seed) == pytest.approx(up)
