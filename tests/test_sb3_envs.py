"""The benchmark's memory tasks and the policy's step counter, against plain references."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from aaren_rl.sb3.envs import register_memory_envs
from aaren_rl.sb3.policies import step_index


@pytest.mark.parametrize(
    "masked,base,zeroed",
    [("CartPoleNoVel-v1", "CartPole-v1", [1, 3]), ("PendulumNoVel-v1", "Pendulum-v1", [2])],
)
def test_velocity_entries_are_multiplied_by_zero(masked, base, zeroed):
    register_memory_envs()
    env, ref = gym.make(masked), gym.make(base)
    assert env.observation_space.shape == ref.observation_space.shape
    obs, _ = env.reset(seed=3)
    full, _ = ref.reset(seed=3)
    for _ in range(20):
        keep = np.setdiff1d(np.arange(full.size), zeroed)
        np.testing.assert_array_equal(obs[zeroed], 0.0)
        np.testing.assert_allclose(obs[keep], full[keep], rtol=1e-6)
        assert np.any(full[zeroed] != 0.0)
        action = ref.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        full, *_ = ref.step(action)
        if terminated or truncated:  # never step past an episode's end
            obs, _ = env.reset(seed=4)
            full, _ = ref.reset(seed=4)


def test_step_index_counts_from_the_carried_count_and_restarts_at_resets():
    rng = np.random.default_rng(0)
    resets = torch.as_tensor(rng.random((5, 17)) < 0.2)
    t0 = torch.as_tensor(rng.integers(0, 50, 5))
    expected = torch.zeros(5, 17, dtype=torch.long)
    for b in range(5):  # the loop the scan path avoids
        t = int(t0[b])
        for i in range(17):
            t = 0 if resets[b, i] else t
            expected[b, i] = t
            t += 1
    assert torch.equal(step_index(t0, resets), expected)
