"""sb3-contrib's RecurrentPPO tests, ported to AarenPPO.

Source: Stable-Baselines-Team/stable-baselines3-contrib, ``tests/test_lstm.py`` (every test),
the RecurrentPPO and MaskablePPO rows of ``tests/test_cnn.py::test_image_like_input`` and the
RecurrentPPO row of ``tests/test_deterministic.py``. The settings (envs, step counts, seeds,
keyword sets) are the originals'; the code is written for this project. Policy names map
``MlpLstmPolicy`` -> ``MlpAarenPolicy``, ``CnnLstmPolicy`` -> ``CnnAarenPolicy``,
``MultiInputLstmPolicy`` -> ``MultiInputAarenPolicy``, and the LSTM keywords as
:func:`aaren_keywords` does. Where an original only checks that training runs, the port also
checks what it built (the critic, the extractor, the image transpose) and that the update
changed the weights.

Differences, each a choice (docs/sb3.md, "sb3-contrib's tests"):

- ``test_check``'s first case (``shared_lstm=True`` with ``enable_critic_lstm=True``) cannot be
  written for AarenPPO: both map to the one ``critic`` keyword. The second case
  (``critic="shared"`` with ``share_features_extractor=False``) is refused with a
  ``ValueError`` that says what to write instead, where RecurrentPPO raises a bare
  ``AssertionError``.
- The performance test runs seeds 0, 1 and 2 (the original: seed 1) with AarenPPO's default
  memory (the original's LSTM keywords dropped) and without its ``EvalCallback``, which only
  logs: it plays separate eval envs with deterministic actions and changes no training step.
"""

from __future__ import annotations

import random
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecNormalize,
    VecTransposeImage,
    is_vecenv_wrapped,
)

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.envs import POSITIONS_ID, CartPolePositionsEnv, register_memory_envs
from aaren_rl.sb3.maskable import MaskableAarenPPO

register_memory_envs()


def aaren_keywords(lstm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """RecurrentPPO policy keywords -> AarenPPO's: ``lstm_hidden_size`` -> ``d_model``,
    ``n_lstm_layers`` -> ``n_layers``, ``lstm_kwargs=dict(dropout=p)`` -> ``dropout=p``,
    ``shared_lstm=True`` -> ``critic="shared"``, ``enable_critic_lstm`` True/False ->
    ``critic="separate"``/``"none"``; the rest unchanged."""
    out: dict[str, Any] = {}
    for key, value in lstm_kwargs.items():
        if key == "lstm_hidden_size":
            out["d_model"] = value
        elif key == "n_lstm_layers":
            out["n_layers"] = value
        elif key == "lstm_kwargs":
            out.update(value)
        elif key not in ("shared_lstm", "enable_critic_lstm"):
            out[key] = value
    if lstm_kwargs.get("shared_lstm"):
        out["critic"] = "shared"
    elif "enable_critic_lstm" in lstm_kwargs:
        out["critic"] = "separate" if lstm_kwargs["enable_critic_lstm"] else "none"
    return out


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def changed(before: list[torch.Tensor], model) -> bool:
    return any(
        not torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True)
    )


def check_built(model, kwargs: dict[str, Any]) -> None:
    """The policy has the memory and critic the keywords asked for."""
    policy = model.policy
    critic = kwargs.get("critic", policy.critic)
    assert policy.critic == critic
    assert (policy.critic_memory is not None) == (critic == "separate")
    if "d_model" in kwargs:
        assert policy.d_model == kwargs["d_model"]
    if "n_layers" in kwargs:
        assert len(policy.actor_memory.backbone.layers) == kwargs["n_layers"]
    if "dropout" in kwargs:
        assert policy.actor_memory.backbone.layers[0].drop1.p == kwargs["dropout"]
    assert policy.share_features_extractor == kwargs.get("share_features_extractor", True)


LSTM_KEYWORD_SETS = [
    {},
    dict(shared_lstm=True, enable_critic_lstm=False),
    dict(enable_critic_lstm=True, lstm_hidden_size=4, lstm_kwargs=dict(dropout=0.5), n_lstm_layers=2),
    dict(enable_critic_lstm=False, lstm_hidden_size=4, lstm_kwargs=dict(dropout=0.5), n_lstm_layers=2),
]  # fmt: skip


class ToDictWrapper(gym.Wrapper):
    """The env's observation as ``{"obs": observation}`` (a Dict space)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict({"obs": env.observation_space})

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return {"obs": obs}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return {"obs": obs}, reward, terminated, truncated, info


def test_env():
    check_env(CartPolePositionsEnv())
    obs, _ = CartPolePositionsEnv().reset(seed=0)
    full, _ = gym.make("CartPole-v1").unwrapped.reset(seed=0)
    np.testing.assert_array_equal(obs, full[[0, 2]])  # positions only, velocities dropped


@pytest.mark.parametrize(
    "lstm_kwargs",
    [
        {},
        {"share_features_extractor": False},
        *LSTM_KEYWORD_SETS[1:],
        dict(enable_critic_lstm=False, lstm_hidden_size=4, share_features_extractor=False),
    ],
)
def test_cnn(lstm_kwargs):
    kwargs = aaren_keywords(lstm_kwargs)
    model = AarenPPO(
        "CnnAarenPolicy",
        FakeImageEnv(screen_height=40, screen_width=40, n_channels=3),
        n_steps=16,
        seed=0,
        policy_kwargs=dict(**kwargs, features_extractor_kwargs=dict(features_dim=32)),
        n_epochs=2,
    )
    before = weights(model)
    model.learn(total_timesteps=32)
    check_built(model, kwargs)
    assert isinstance(model.policy.pi_features_extractor, NatureCNN)
    assert model.policy.features_dim == 32
    assert is_vecenv_wrapped(model.get_env(), VecTransposeImage)  # channel-last input
    assert model.observation_space.shape == (3, 40, 40)
    assert changed(before, model)


def test_cnn_predict_takes_channel_last_and_channel_first_images():
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=3)
    model = AarenPPO(
        "CnnAarenPolicy",
        env,
        n_steps=16,
        seed=0,
        policy_kwargs=dict(features_extractor_kwargs=dict(features_dim=32)),
    )
    obs, _ = env.reset(seed=0)
    last, _ = model.predict(obs, deterministic=True)
    first, _ = model.predict(np.transpose(obs, (2, 0, 1)), deterministic=True)
    assert obs.shape == (40, 40, 3)
    np.testing.assert_array_equal(last, first)


@pytest.mark.parametrize("lstm_kwargs", LSTM_KEYWORD_SETS)
def test_policy_kwargs(lstm_kwargs):
    kwargs = aaren_keywords(lstm_kwargs)
    model = AarenPPO("MlpAarenPolicy", "CartPole-v1", n_steps=16, seed=0, policy_kwargs=kwargs)
    before = weights(model)
    model.learn(total_timesteps=32)
    check_built(model, kwargs)
    assert changed(before, model)


def test_check():
    # RecurrentPPO refuses shared_lstm=True with enable_critic_lstm=True; both are AarenPPO's
    # one `critic` keyword, so that contradiction cannot be written. The second case:
    with pytest.raises(ValueError, match="share_features_extractor=True"):
        AarenPPO(
            "MlpAarenPolicy",
            "CartPole-v1",
            n_steps=16,
            seed=0,
            policy_kwargs=dict(critic="shared", share_features_extractor=False),
        )


@pytest.mark.parametrize("env", ["Pendulum-v1", "CartPole-v1"])
def test_run(env):
    model = AarenPPO("MlpAarenPolicy", env, n_steps=16, seed=0)
    before = weights(model)
    model.learn(total_timesteps=32)
    assert model.num_timesteps == 32
    assert changed(before, model)


def test_run_sde():
    model = AarenPPO(
        "MlpAarenPolicy",
        "Pendulum-v1",
        n_steps=16,
        seed=0,
        sde_sample_freq=4,
        use_sde=True,
        clip_range_vf=0.1,
    )
    before = weights(model)
    model.learn(total_timesteps=200)
    assert model.num_timesteps == 208  # whole rollouts of 16 steps
    assert model.use_sde and model.policy.use_sde
    assert changed(before, model)


@pytest.mark.parametrize("lstm_kwargs", LSTM_KEYWORD_SETS)
def test_dict_obs(lstm_kwargs):
    kwargs = aaren_keywords(lstm_kwargs)
    env = make_vec_env("CartPole-v1", n_envs=1, wrapper_class=ToDictWrapper)
    model = AarenPPO("MultiInputAarenPolicy", env, n_steps=32, policy_kwargs=kwargs).learn(64)
    check_built(model, kwargs)
    rewards, lengths = evaluate_policy(model, env, warn=False, return_episode_rewards=True)
    assert len(rewards) == 10 and rewards == [float(n) for n in lengths]  # CartPole: 1 a step


def performance_run(seed: int) -> float:
    """sb3-contrib's ``test_ppo_lstm_performance`` for AarenPPO -> the 10-episode mean."""
    env = VecNormalize(make_vec_env(POSITIONS_ID, n_envs=8))
    model = AarenPPO(
        "MlpAarenPolicy",
        env,
        n_steps=128,
        learning_rate=0.0007,
        batch_size=256,
        seed=seed,
        n_epochs=10,
        max_grad_norm=1,
        gae_lambda=0.98,
        policy_kwargs=dict(net_arch=dict(vf=[64], pi=[]), ortho_init=False),
    )
    model.learn(total_timesteps=50_000)
    # the maximum is 500; a policy without memory gets no more than about 50
    mean, _ = evaluate_policy(model, env, reward_threshold=450)
    return mean


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_lstm_performance(seed):
    torch.set_num_threads(1)  # the screen's setting: one thread, results repeat per seed
    assert performance_run(seed) > 450


@pytest.mark.parametrize("algo", [AarenPPO, MaskableAarenPPO])
@pytest.mark.parametrize("normalize_images", [True, False])
def test_image_like_input(algo, normalize_images):
    """Image-shaped float input (VecNormalize'd): NatureCNN refuses it unless
    ``normalize_images=False``."""
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, channel_first=True)
    if algo is MaskableAarenPPO:
        from sb3_contrib.common.wrappers import ActionMasker

        def action_mask_fn(env):
            invalid = random.randrange(env.action_space.n)
            return [i != invalid for i in range(env.action_space.n)]

        env = ActionMasker(env, action_mask_fn)
    vec_env = VecNormalize(DummyVecEnv([lambda: env]))
    kwargs = dict(
        policy_kwargs=dict(
            normalize_images=normalize_images, features_extractor_kwargs=dict(features_dim=32)
        ),
        seed=1,
        n_steps=64,
        batch_size=64,
    )
    if normalize_images:
        with pytest.raises(AssertionError):
            algo("CnnAarenPolicy", vec_env, **kwargs).learn(128)
    else:
        model = algo("CnnAarenPolicy", vec_env, **kwargs)
        before = weights(model)
        model.learn(128)
        assert changed(before, model)


def test_deterministic_training_common():
    """Two runs with one seed: the same actions and rewards (test_deterministic.py)."""
    results: list[list[np.ndarray]] = [[], []]
    rewards: list[list[np.ndarray]] = [[], []]
    kwargs = dict(
        policy_kwargs=aaren_keywords(dict(net_arch=[], enable_critic_lstm=True, lstm_hidden_size=8)),
        learning_rate=1e-3,
        n_steps=50,
        n_epochs=4,
    )  # fmt: skip
    for i in range(2):
        model = AarenPPO("MlpAarenPolicy", "Pendulum-v1", seed=0, **kwargs)
        model.learn(total_timesteps=256)
        env = model.get_env()
        obs = env.reset()
        states, episode_start = None, None
        for _ in range(100):
            action, states = model.predict(
                obs, state=states, episode_start=episode_start, deterministic=False
            )
            obs, reward, episode_start, _ = env.step(action)
            results[i].append(action)
            rewards[i].append(reward)
    assert sum(results[0]) == sum(results[1]), results
    assert sum(rewards[0]) == sum(rewards[1]), rewards
