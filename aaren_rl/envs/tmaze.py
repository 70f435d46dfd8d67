"""The passive T-maze (Ni et al. 2023, "When do Transformers shine in RL?"), as a Gymnasium env.

A corridor of ``L`` cells (positions ``0 .. L``) ends at a junction with a goal above and one
below. The first observation shows a cue: which goal pays. After it the observation says
nothing about the cue, so at the junction, ``L`` steps later, only a memory of step 0 can
choose the right goal.

Observations ``[3]`` float32: ``(cue_up, cue_down, at_junction)``. At ``t = 0`` one of the
first two is 1 (the cue); later both are 0; ``at_junction`` is 1 at position ``L``.

Actions ``Discrete(4)``: 0 forward (right), 1 back (left), 2 up, 3 down. In the corridor, up and
down hit a wall and back stops at position 0. At the junction, forward hits a wall, and up or
down ends the episode with reward 1 if it is the cued goal, 0 if not.

The horizon is ``L + 1`` steps (truncated after that), the fastest way to the junction and a
turn, as in Ni et al.'s passive T-maze: a policy scores 1 only by walking forward every step and
turning the cued way, and any policy that ignores the cue turns the right way in exactly one of
the two cue worlds, so it scores 0.5 in expectation.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

FORWARD, BACK, UP, DOWN = 0, 1, 2, 3
CUES = ("up", "down")


class TMazeEnv(gym.Env[np.ndarray, np.int64]):
    """Passive T-maze with a corridor of ``corridor_length`` cells (see the module docstring).

    ``reset(options={"cue": "up" | "down" | 0 | 1})`` fixes the cue; otherwise it is drawn
    uniformly from the env's random stream. ``info["cue"]`` (0 up, 1 down) and
    ``info["success"]`` (after a turn) tell scripted policies and evaluations what happened.
    """

    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 100) -> None:
        if isinstance(corridor_length, bool) or int(corridor_length) != corridor_length:
            raise ValueError(f"corridor_length must be an integer, got {corridor_length!r}")
        if corridor_length < 1:
            raise ValueError(f"corridor_length must be >= 1, got {corridor_length}")
        self.corridor_length = int(corridor_length)
        self.horizon = self.corridor_length + 1
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._cue = 0
        self._position = 0
        self._t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        obs[2] = float(self._position == self.corridor_length)
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        cue = (options or {}).get("cue")
        if cue is None:
            self._cue = int(self.np_random.integers(2))
        elif cue in CUES:
            self._cue = CUES.index(cue)
        elif cue in (0, 1):
            self._cue = int(cue)
        else:
            raise ValueError(f"options['cue'] is {cue!r}; expected 'up', 'down', 0 or 1")
        self._position = 0
        self._t = 0
        return self._obs(), {"cue": self._cue}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"action {action} is not in Discrete(4)")
        info: dict[str, Any] = {"cue": self._cue}
        reward, terminated = 0.0, False
        at_junction = self._position == self.corridor_length
        if action in (UP, DOWN) and at_junction:
            success = (action - UP) == self._cue
            reward, terminated = float(success), True
            info["success"] = success
        elif action == FORWARD and not at_junction:
            self._position += 1
        elif action == BACK:
            self._position = max(0, self._position - 1)
        self._t += 1
        truncated = not terminated and self._t >= self.horizon
        return self._obs(), reward, terminated, truncated, info


def oracle_action(cue: int, observation: np.ndarray) -> int:
    """The optimal action: forward in the corridor, the cued goal (0 up, 1 down) at the junction."""
    return UP + int(cue) if observation[2] > 0.5 else FORWARD
