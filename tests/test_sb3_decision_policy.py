"""DecisionAarenPolicy under SB3's recurrent contract, against the library's own rollout."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_helpers import VARLEN_ID
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from aaren_rl.agents.checkpoint import CheckpointError, save_checkpoint
from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.sb3 import DecisionAarenPolicy, RewardFeedback

CONFIGS = {
    "aaren-fast": (dict(backbone="aaren", n_heads=2), True),
    "aaren-model-step": (dict(backbone="aaren", n_heads=2), False),
    "transformer-kv": (dict(backbone="transformer", step_mode="kv_cache", context=4), True),
    "transformer-window": (dict(backbone="transformer", step_mode="recompute", context=4), True),
}


def _model(obs_dim: int, act_dim: int, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = dict(d_model=32, n_layers=2, n_heads=1, dropout=0.0, max_timestep=300)
    config.update(overrides)
    model = build_decision_model(config, obs_dim, act_dim, reward_scale=0.1)
    return model.eval()


def _run(policy: DecisionAarenPolicy, venv, n_steps: int) -> np.ndarray:
    """Actions [n_steps, n_envs, act_dim] of a plain SB3-style loop over a wrapped VecEnv."""
    env = RewardFeedback(venv, policy)
    obs, state, starts = env.reset(), None, np.ones(env.num_envs, dtype=bool)
    actions = []
    for _ in range(n_steps):
        action, state = policy.predict(obs, state=state, episode_start=starts)
        actions.append(action)
        obs, _, starts, _ = env.step(action)
    env.close()
    return np.stack(actions)


def _varlen_venv(first_seed: int, n_envs: int) -> DummyVecEnv:
    venv = DummyVecEnv([lambda: gym.make(VARLEN_ID) for _ in range(n_envs)])
    venv.seed(first_seed)  # env i gets first_seed + i at its first reset
    return venv


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_env_gets_the_actions_it_gets_alone(name):
    overrides, fast = CONFIGS[name]
    policy = DecisionAarenPolicy(_model(3, 2, **overrides), target_return=20.0, fast_step=fast)
    n_steps = 70  # several episodes of 4 to 30 steps per env, ending at different steps
    together = _run(policy, _varlen_venv(10, 4), n_steps)
    for i in range(4):
        alone = _run(policy, _varlen_venv(10 + i, 1), n_steps)
        np.testing.assert_allclose(together[:, i], alone[:, 0], atol=1e-5, rtol=0)


def test_state_none_matches_any_env_count_and_is_numpy():
    policy = DecisionAarenPolicy(_model(3, 2), target_return=5.0)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    action, state = policy.predict(obs)
    assert action.shape == (6, 2)
    assert isinstance(state, tuple) and all(isinstance(a, np.ndarray) for a in state)
    assert len(state) == len(policy.state_names)
    assert state[-3].shape == (6,) and state[-2].tolist() == [1] * 6
    np.testing.assert_allclose(state[-1], action)
    action3, state3 = policy.predict(obs[:3])  # a different count, fresh state
    np.testing.assert_allclose(action3, action[:3], atol=1e-6)
    single, _ = policy.predict(obs[0])
    assert single.shape == (2,)


@pytest.mark.parametrize("fast", [True, False])
def test_episode_start_resets_only_its_env_by_select(fast):
    policy = DecisionAarenPolicy(_model(3, 2), target_return=5.0, fast_step=fast)
    rng = np.random.default_rng(1)
    obs = [rng.normal(size=(3, 3)).astype(np.float32) for _ in range(3)]
    _, state = policy.predict(obs[0])
    policy.receive_rewards(np.array([1.0, 2.0, 3.0]))
    before = tuple(a.copy() for a in state)
    _, state = policy.predict(obs[1], state, episode_start=np.array([False, True, False]))
    for a, b in zip(state, before, strict=True):  # the caller's arrays are untouched
        assert a is not b
    policy.receive_rewards(np.array([0.5, 0.5, 0.5]))
    action, state = policy.predict(obs[2], state, episode_start=np.zeros(3, bool))
    assert all(np.isfinite(a).all() for a in state if a.dtype.kind == "f" and a.size)
    # env 1 restarted at obs[1]: it acts as a fresh env that saw obs[1] then obs[2]
    _, s1 = policy.predict(obs[1][1:2])
    policy.receive_rewards(np.array([0.5]))
    a1, _ = policy.predict(obs[2][1:2], s1)
    np.testing.assert_allclose(action[1], a1[0], atol=1e-5)
    assert state[-3][1] == pytest.approx(5.0 - 0.5) and state[-2][1] == 2
    # envs 0 and 2 kept their memory: same as a run with no restart at all
    _, s = policy.predict(obs[0][[0, 2]])
    policy.receive_rewards(np.array([1.0, 3.0]))
    _, s = policy.predict(obs[1][[0, 2]], s)
    policy.receive_rewards(np.array([0.5, 0.5]))
    a02, _ = policy.predict(obs[2][[0, 2]], s)
    np.testing.assert_allclose(action[[0, 2]], a02, atol=1e-5)


def test_predict_without_rewards_says_to_wrap():
    policy = DecisionAarenPolicy(_model(3, 2), target_return=5.0)
    obs = np.zeros((2, 3), np.float32)
    _, state = policy.predict(obs)
    with pytest.raises(RuntimeError, match="RewardFeedback"):
        policy.predict(obs, state, episode_start=np.zeros(2, bool))


def _checkpoint(tmp_path, model, target):
    return save_checkpoint(
        tmp_path / "checkpoint.pt",
        model=model,
        optimizer=None,
        scheduler=None,
        step=0,
        agent_config={},
        train_config={},
        task={"name": "test", "target_returns": [target]},
        rng_state={},
    )


@pytest.mark.parametrize("env_id,vec", [(VARLEN_ID, "dummy"), ("Pendulum-v1", "subproc")])
def test_evaluate_policy_matches_evaluate_agent(tmp_path, env_id, vec):
    env = gym.make(env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    model = _model(obs_dim, act_dim, seed=3)
    path = _checkpoint(tmp_path, model, target=-50.0)
    policy = DecisionAarenPolicy.load(path)
    assert policy.target_return == -50.0
    n_envs, n_episodes, seed = 2, 5, 7
    fns = [lambda: gym.make(env_id) for _ in range(n_envs)]
    venv = DummyVecEnv(fns) if vec == "dummy" else SubprocVecEnv(fns, start_method="fork")
    venv.seed(seed)
    returns, lengths = evaluate_policy(
        policy,
        RewardFeedback(venv, policy),
        n_eval_episodes=n_episodes,
        return_episode_rewards=True,
        warn=False,
    )
    venv.close()
    ref = evaluate_agent(policy.model, env_id, -50.0, n_episodes, n_envs=n_envs, seed=seed)
    np.testing.assert_allclose(sorted(returns), sorted(ref.returns), rtol=1e-5)
    assert sorted(lengths) == sorted(ref.lengths.tolist())


def test_bad_checkpoint_and_mismatched_env_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        DecisionAarenPolicy.load(bad, target_return=1.0)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        DecisionAarenPolicy.load(tmp_path / "missing.pt", target_return=1.0)
    policy = DecisionAarenPolicy(_model(5, 2), target_return=1.0)
    venv = DummyVecEnv([lambda: gym.make(VARLEN_ID)])
    with pytest.raises(ValueError, match=r"obs_dim"):
        RewardFeedback(venv, policy)
    policy = DecisionAarenPolicy(_model(3, 1), target_return=1.0)
    with pytest.raises(ValueError, match=r"act_dim"):
        RewardFeedback(venv, policy)
    with pytest.raises(ValueError, match="obs_dim=3"):
        policy.predict(np.zeros((2, 4), np.float32))
