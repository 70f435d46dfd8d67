"""Discrete actions in the decision model: the categorical head, its loss, rollout and errors.

References: the cross-entropy by hand (log-softmax gathered at the target), the parallel
forward's argmax against the recurrent rollout's actions on the recorded episodes, the
softmax probabilities against sampled frequencies, and training to the oracle on a T-maze.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_rl.agents.checkpoint import load_agent, save_checkpoint
from aaren_rl.agents.decision_model import (
    CategoricalActionHead,
    DecisionModelConfig,
    action_dim,
    action_space_kind,
    build_decision_model,
)
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.agents.trainer import (
    action_loss,
    masked_action_cross_entropy,
    masked_action_mse,
)
from aaren_rl.data.tasks import task_from_dict
from aaren_rl.envs import register_tmaze

SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 4, "dropout": 0.0}
BACKBONES = {
    "aaren": {"backbone": "aaren"},
    "transformer-kv-full": {
        "backbone": "transformer",
        "step_mode": "kv_cache",
        "full_attention": True,
    },
    "transformer-recompute": {"backbone": "transformer", "step_mode": "recompute"},
    "aaren-merged": {"backbone": "aaren", "return_token": "merged"},
}
TMAZE = "aaren_rl.envs:" + register_tmaze(6)


def discrete_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = {**SMALL, "action_space": "discrete", "max_timestep": 16, **overrides}
    return build_decision_model(config, 3, 4, state_std=[0.3, 0.3, 0.4])


def test_cross_entropy_matches_the_hand_computed_likelihood():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g)
    classes = torch.randint(0, 4, (3, 5), generator=g)
    target = torch.nn.functional.one_hot(classes, 4).float()
    mask = torch.rand(3, 5, generator=g) > 0.3
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    nll = -logp.gather(-1, classes[..., None])[..., 0]
    expected = nll[mask].mean()
    torch.testing.assert_close(masked_action_cross_entropy(logits, target, mask), expected)
    torch.testing.assert_close(masked_action_cross_entropy(logits, target, None), nll.mean())
    with pytest.raises(ValueError, match="action logits"):
        masked_action_cross_entropy(logits, target[..., :3], mask)


def test_action_loss_dispatches_on_the_configs_action_space():
    pred, target = torch.randn(2, 3, 4), torch.eye(4)[torch.tensor([[0, 1, 2], [3, 0, 1]])]
    box = build_decision_model(SMALL, 3, 4)
    torch.testing.assert_close(
        action_loss(box, pred, target, None), masked_action_mse(pred, target, None)
    )
    torch.testing.assert_close(
        action_loss(discrete_model(), pred, target, None),
        masked_action_cross_entropy(pred, target, None),
    )


def test_head_selects_the_argmax_or_samples_the_softmax():
    head = CategoricalActionHead(8, 3)
    logits = torch.tensor([[2.0, 0.0, -1.0], [-3.0, 1.0, 1.5]])
    greedy = head.select(logits)
    torch.testing.assert_close(greedy, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = head.select(logits.expand(n, 2, 3), sample=True, generator=g)
    assert draws.shape == (n, 2, 3) and torch.all(draws.sum(-1) == 1)
    freq = draws.mean(0)
    probs = torch.softmax(logits, -1)
    sd = (probs * (1 - probs) / n).sqrt()
    assert torch.all((freq - probs).abs() <= 5 * sd)


def _parallel_logits(model, ep):
    with torch.inference_mode():
        logits, _ = model(
            torch.as_tensor(ep.observations, dtype=torch.float32)[None],
            torch.as_tensor(ep.actions)[None],
            torch.as_tensor(ep.returns_to_go, dtype=torch.float32)[None],
            torch.as_tensor(ep.timesteps)[None],
        )
    return logits[0]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_recurrent_rollout_equals_the_parallel_forward_on_recorded_episodes(name):
    model = discrete_model(seed=1, **BACKBONES[name]).eval()
    result = evaluate_agent(model, TMAZE, 1.0, n_episodes=4, n_envs=2, seed=0, record=True)
    assert len(result.episodes) == 4
    for ep in result.episodes:
        assert ep.actions.shape == (len(ep.rewards), 4)
        np.testing.assert_array_equal(ep.actions.sum(axis=1), 1.0)
        logits = _parallel_logits(model, ep)
        np.testing.assert_array_equal(logits.argmax(-1).numpy(), ep.actions.argmax(1))


@pytest.mark.parametrize("name", ["aaren", "transformer-recompute"])
def test_sampled_rollout_equals_draws_from_the_parallel_softmax(name):
    """With one env, the rollout's generator (seeded with ``seed``) makes one draw per step:
    replaying those draws on the parallel forward's softmax gives the same actions."""
    model = discrete_model(seed=1, **BACKBONES[name]).eval()
    taken = []
    for seed in range(3):
        (ep,) = evaluate_agent(
            model, TMAZE, 1.0, n_episodes=1, seed=seed, record=True, sample=True
        ).episodes
        probs = torch.softmax(_parallel_logits(model, ep), -1)
        g = torch.Generator().manual_seed(seed)
        replay = [
            int(torch.multinomial(probs[t : t + 1], 1, generator=g)) for t in range(len(probs))
        ]
        assert replay == ep.actions.argmax(1).tolist()
        taken.extend(replay)
    assert len(set(taken)) > 1  # really sampled, not the argmax


def test_sampled_rollouts_are_reproducible_by_seed():
    model = discrete_model(seed=2)
    a = evaluate_agent(model, TMAZE, 1.0, n_episodes=2, seed=5, record=True, sample=True)
    b = evaluate_agent(model, TMAZE, 1.0, n_episodes=2, seed=5, record=True, sample=True)
    for x, y in zip(a.episodes, b.episodes, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)


def _write_checkpoint(model, path, task):
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=1,
        agent_config={"model": model.config.to_dict()},
        train_config={},
        task=task,
        rng_state={},
    )
    return path


def _checkpoint(model, tmp_path, env_id):
    path = tmp_path / f"{model.config.action_space}.pt"
    return load_agent(_write_checkpoint(model, path, {"name": "t", "env_id": env_id}))[0]


def test_space_mismatch_between_checkpoint_and_env_is_a_clear_error(tmp_path):
    box = _checkpoint(build_decision_model(SMALL, 3, 4), tmp_path, "Pendulum-v1")
    assert box.config.action_space == "box"
    with pytest.raises(
        ValueError,
        match=r"TMaze-L6-v0 takes discrete actions \(Discrete\(4\)\) but the model was trained "
        r"for box actions",
    ):
        evaluate_agent(box, TMAZE, 1.0, n_episodes=1)
    # Pendulum-v1 observes 3 numbers too: only the action kind differs
    discrete = _checkpoint(discrete_model(), tmp_path, TMAZE)
    assert discrete.config.action_space == "discrete"
    with pytest.raises(
        ValueError, match=r"Pendulum-v1 takes box actions .* trained for discrete actions"
    ):
        evaluate_agent(discrete, "Pendulum-v1", 1.0, n_episodes=1)
    five = build_decision_model({**SMALL, "action_space": "discrete"}, 3, 5)
    with pytest.raises(ValueError, match="Discrete\\(4\\) but the model predicts 5 actions"):
        evaluate_agent(five, TMAZE, 1.0, n_episodes=1)


def test_action_space_in_the_config():
    with pytest.raises(ValueError, match="'action_space' is 'multi'"):
        DecisionModelConfig(action_space="multi")
    old = {k: v for k, v in DecisionModelConfig().to_dict().items() if k != "action_space"}
    assert DecisionModelConfig.from_dict(old).action_space == "box"  # older checkpoints
    import gymnasium as gym

    assert action_space_kind(gym.spaces.Discrete(3)) == "discrete"
    assert action_dim(gym.spaces.Discrete(3)) == 3
    assert action_dim(gym.spaces.Box(-1, 1, (2,))) == 2
    with pytest.raises(ValueError, match="neither Box nor Discrete"):
        action_space_kind(gym.spaces.MultiBinary(2))


def _task(tmp_path, length):
    return task_from_dict(
        {
            "env_id": "aaren_rl.envs:" + register_tmaze(length),
            "dataset": str(tmp_path / "d.hdf5"),
            "max_episode_steps": length + 1,
            "reward_scale": 1.0,
            "target_returns": [1.0],
            "reference_scores": [0.0, 1.0],
            "reference_source": "success",
        },
        tmp_path / f"tmaze-l{length}.yaml",
    )


def test_training_on_a_tmaze_learns_the_cue_with_cross_entropy(tmp_path):
    """Decision Aaren trained on whole episodes turns the cued way (the data's blind
    episodes alone would score 50%)."""
    from aaren_rl.agents.train_cli import run_training
    from aaren_rl.envs.memory_datasets import build_dataset

    task = _task(tmp_path, 4)
    build_dataset(task, n_episodes=120, seed=0)
    agent = {
        "name": "tiny",
        "model": {**SMALL, "backbone": "aaren", "max_timestep": 5},
        "train": {
            "sampler": "full",
            "max_len": 5,
            "batch_size": 16,
            "steps": 150,
            "warmup_steps": 10,
            "lr": 3e-3,
            "eval_every": 0,
            "eval_episodes": 40,
            "eval_envs": 8,
            "checkpoint_every": 1000,
        },
    }
    result = run_training(agent, task, out_dir=tmp_path / "run", progress=False)
    assert result.model.config.action_space == "discrete"  # set from the env
    assert result.losses[-1] < 0.5 * result.losses[0]
    (record,) = result.evaluations
    assert record.mean_return >= 0.95
    bad = {**agent, "model": {**agent["model"], "action_space": "box"}}
    with pytest.raises(ValueError, match="model.action_space is 'box' but task .* discrete"):
        run_training(bad, task, out_dir=tmp_path / "bad", progress=False)


def test_evaluate_cli_samples_discrete_actions_like_evaluate_agent(tmp_path, capsys):
    import json

    from aaren_rl.cli import main

    model = discrete_model(seed=3)
    path = tmp_path / "d.pt"
    task = {"name": "t", "env_id": TMAZE, "target_returns": [1.0], "max_episode_steps": 7}
    _write_checkpoint(model, path, task)
    out = tmp_path / "e.json"
    argv = ["evaluate", str(path), "--episodes", "6", "--envs", "2", "--seed", "4", "--sample"]
    assert main([*argv, "--json", str(out), "--no-progress", "--device", "cpu"]) == 0
    (row,) = json.loads(out.read_text())["results"]
    direct = evaluate_agent(model, TMAZE, 1.0, 6, n_envs=2, seed=4, sample=True)
    np.testing.assert_array_equal(row["returns"], direct.returns)
    box = build_decision_model(SMALL, 3, 4)
    with pytest.raises(ValueError, match="sample=True .* continuous actions"):
        evaluate_agent(box, "Pendulum-v1", 1.0, n_episodes=1, sample=True)


def test_a_discrete_model_steps_with_its_own_act_not_the_fused_box_step():
    from aaren_rl.agents.fast_step import check_supported
    from aaren_rl.agents.rollout import rollout_policy

    model = discrete_model()
    assert rollout_policy(model) is model
    with pytest.raises(ValueError, match="continuous \\(Box\\) action heads"):
        check_supported(model)
