"""Memory tasks for the SB3 benchmark: velocity-masked classic control and a POPGym task.

``CartPoleNoVel-v1`` and ``PendulumNoVel-v1`` follow rl-baselines3-zoo's definition: the
observation is multiplied by a mask that zeroes the velocity entries (CartPole indices 1 and 3,
Pendulum index 2), so the shape is unchanged and the velocities must be inferred from memory.
``popgym-RepeatFirstEasy-v0`` is POPGym's RepeatFirst (output the suit of the episode's first
card at every step, 51 steps): after three steps a 4-frame stack no longer holds that card.

:class:`CartPolePositionsEnv` is sb3-contrib's own test task (its ``CartPoleNoVelEnv``):
CartPole observing only the cart position and the pole angle (``[2]``, velocities dropped
rather than zeroed); ``CartPolePositions-v1`` is it with CartPole's 500-step limit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv

VELOCITY_MASKS = {
    "CartPoleNoVel-v1": ("CartPole-v1", (1.0, 0.0, 1.0, 0.0)),
    "PendulumNoVel-v1": ("Pendulum-v1", (1.0, 1.0, 0.0)),
}
POPGYM_TASKS = ("popgym-RepeatFirstEasy-v0",)  # registered by ``import popgym``
POSITIONS_ID = "CartPolePositions-v1"


class MaskVelocity(gym.ObservationWrapper):
    """Multiply every observation by a fixed 0/1 ``mask`` (``[obs_dim]``)."""

    def __init__(self, env: gym.Env, mask: tuple[float, ...]) -> None:
        super().__init__(env)
        self.mask = np.asarray(mask, dtype=np.float32)
        if self.mask.shape != env.observation_space.shape:
            raise ValueError(
                f"mask has shape {self.mask.shape} but {env.spec.id if env.spec else env} "
                f"observes {env.observation_space.shape}"
            )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return (observation * self.mask).astype(np.float32)


class CartPolePositionsEnv(CartPoleEnv):
    """CartPole observing ``[x, theta]`` only (sb3-contrib's ``CartPoleNoVelEnv``): the
    bounds are CartPole's termination thresholds doubled, as CartPole's own box."""

    def __init__(self, render_mode: str | None = None) -> None:
        super().__init__(render_mode=render_mode)
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    @staticmethod
    def _positions(full: np.ndarray) -> np.ndarray:
        return np.asarray(full, dtype=np.float32)[[0, 2]]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return self._positions(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return self._positions(obs), reward, terminated, truncated, info


class OneHot(gym.ObservationWrapper):
    """A Discrete observation as a one-hot Box ``[n]``; a MultiDiscrete ``[n_1, ..., n_k]``
    or a Tuple of k Discretes as their one-hots side by side, a Box ``[n_1 + ... + n_k]``
    (as the benchmark feeds POPGym's discrete observations to every agent; rl-zoo3's
    ``env_wrapper`` for them)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, spaces.Discrete):
            self.sizes = np.array([int(space.n)])
            self.starts = np.array([int(space.start)])
        elif isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            self.sizes = space.nvec.astype(np.int64)
            self.starts = np.asarray(space.start, dtype=np.int64).reshape(-1)
        elif isinstance(space, spaces.Tuple) and all(
            isinstance(s, spaces.Discrete) for s in space.spaces
        ):
            self.sizes = np.array([int(s.n) for s in space.spaces])
            self.starts = np.array([int(s.start) for s in space.spaces])
        else:
            raise ValueError(
                "OneHot needs a Discrete, a flat MultiDiscrete or a Tuple of Discrete "
                f"observation space, got {space}"
            )
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.n = int(self.sizes.sum())
        self.observation_space = spaces.Box(0.0, 1.0, (self.n,), np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        index = np.asarray(observation, dtype=np.int64).reshape(-1) - self.starts
        out = np.zeros(self.n, dtype=np.float32)
        out[self.offsets + index] = 1.0
        return out


def _make_masked(base_id: str, mask: tuple[float, ...], **kwargs) -> gym.Env:
    return MaskVelocity(gym.make(base_id, **kwargs), mask)


def register_memory_envs() -> None:
    """Register the ids above with Gymnasium (idempotent; POPGym's need the ``popgym``
    package, which registers them on import)."""
    from aaren_rl.sb3.masked_recall import register_masked_recall
    from aaren_rl.sb3.pixel_recall import register_pixel_recall

    register_masked_recall()  # MaskedRecall-v0: a memory task with illegal moves
    register_pixel_recall()  # PixelRecall-v0: a pixel cue to recall
    if POSITIONS_ID not in gym.registry:
        gym.register(POSITIONS_ID, entry_point=CartPolePositionsEnv, max_episode_steps=500)
    for env_id, (base_id, mask) in VELOCITY_MASKS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id, entry_point=_make_masked, kwargs={"base_id": base_id, "mask": mask}
            )
    try:
        import popgym  # noqa: F401
    except ImportError:  # the velocity tasks still work
        pass
