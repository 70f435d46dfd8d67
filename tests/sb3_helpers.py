"""Small environments and models for the SB3 tests (no downloads, fast to step)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

VARLEN_ID = "AarenRlTest/VarLen-v0"


class VarLenEnv(gym.Env):
    """A 3-d drifting point pushed by a 2-d action; each episode lasts a random 4 to 30 steps
    (drawn from the env's seeded generator), so parallel envs finish at different steps."""

    observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.normal(size=3).astype(np.float32)
        self.length = int(self.np_random.integers(4, 31))
        self.t = 0
        return self.x.copy(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        self.x = (0.9 * self.x + 0.3 * np.array([a[0], a[1], a[0] - a[1]])).astype(np.float32)
        self.x += 0.05 * self.np_random.normal(size=3).astype(np.float32)
        self.t += 1
        reward = float(1.0 - np.abs(self.x).sum() + 0.1 * a[0])
        return self.x.copy(), reward, self.t >= self.length, False, {}


if VARLEN_ID not in gym.registry:
    gym.register(VARLEN_ID, entry_point=VarLenEnv)
