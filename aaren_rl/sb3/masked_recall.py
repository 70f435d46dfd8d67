"""``MaskedRecall-v0``: a memory task with illegal moves, for action masking.

Every episode lasts ``length`` steps (default 8) with ``n_actions`` actions (default 6). The
first observation shows a cue ``c`` (one-hot); later ones do not. At every step only some
actions are legal: ``n_legal`` (default 2) drawn at random, and at the last step the cue's
action and ``n_legal`` others. An illegal action ends the episode with reward -1; a legal one
gives 0, except at the last step, where the cue's action gives +1. So the best return is 1,
and an agent that follows the legal moves but forgot the cue gets ``1 / (n_legal + 1)`` on
average.

The observation is ``[cue one-hot (n), legal actions (n), last-step flag, t / length]``: an
agent without masks can learn the legal moves from it. ``action_masks()`` returns the legal
actions (sb3-contrib's convention), and ``illegal_moves`` counts the illegal actions taken
since the env was made.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MASKED_RECALL_ID = "MaskedRecall-v0"


class MaskedRecallEnv(gym.Env):
    """See the module docstring."""

    metadata = {"render_modes": ["rgb_array"]}  # accepted (SB3's make_vec_env asks), not drawn

    def __init__(
        self,
        n_actions: int = 6,
        length: int = 8,
        n_legal: int = 2,
        render_mode: str | None = None,
    ) -> None:
        self.render_mode = render_mode
        if not 1 <= n_legal < n_actions:
            raise ValueError(f"n_legal must be in [1, n_actions), got {n_legal} of {n_actions}")
        if length < 2:
            raise ValueError(f"length must be >= 2, got {length}")
        self.n, self.length, self.n_legal = n_actions, length, n_legal
        self.action_space = spaces.Discrete(n_actions)
        self.observation_space = spaces.Box(0.0, 1.0, (2 * n_actions + 2,), np.float32)
        self.illegal_moves = 0
        self.t, self.cue = 0, 0
        self.legal = np.ones(n_actions, dtype=bool)

    def _draw_legal(self) -> None:
        legal = np.zeros(self.n, dtype=bool)
        last = self.t == self.length - 1
        if last:
            legal[self.cue] = True
            others = [a for a in range(self.n) if a != self.cue]
            legal[self.np_random.choice(others, self.n_legal, replace=False)] = True
        else:
            legal[self.np_random.choice(self.n, self.n_legal, replace=False)] = True
        self.legal = legal

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        obs[self.n : 2 * self.n] = self.legal
        obs[-2] = float(self.t == self.length - 1)
        obs[-1] = self.t / self.length
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = int(self.np_random.integers(self.n))
        self._draw_legal()
        return self._obs(), {}

    def action_masks(self) -> np.ndarray:
        """``[n_actions]`` bool, True for the legal actions of the current step."""
        return self.legal.copy()

    def step(self, action):
        action = int(action)
        if not self.legal[action]:
            self.illegal_moves += 1
            return self._obs(), -1.0, True, False, {"illegal": True}
        if self.t == self.length - 1:
            return self._obs(), float(action == self.cue), True, False, {"illegal": False}
        self.t += 1
        self._draw_legal()
        return self._obs(), 0.0, False, False, {"illegal": False}


def register_masked_recall() -> None:
    """Register ``MaskedRecall-v0`` with Gymnasium (idempotent)."""
    if MASKED_RECALL_ID not in gym.registry:
        gym.register(MASKED_RECALL_ID, entry_point=MaskedRecallEnv)
