"""POPGym tasks (Morad et al. 2023, the ``popgym`` package) as flat Box-observation envs.

POPGym's card games observe a ``Discrete`` card. :func:`make_repeat_first` wraps RepeatFirst
(output the suit of the first card at every step; reward +-1/(cards - 1) per step, so returns
lie in ``[-1, 1]``) with POPGym's own ``Antialias`` wrapper (adds an "is the first step" flag,
as POPGym's benchmarks do) and Gymnasium's ``FlattenObservation``: observations become one-hot
``[4 + 2]`` float vectors, actions stay ``Discrete(4)``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _Float32(gym.ObservationWrapper):
    """Cast the flattened observation to float32 (FlattenObservation keeps int64 one-hots)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=space.shape, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


def make_repeat_first(num_decks: int = 1) -> gym.Env:
    """POPGym RepeatFirst with ``num_decks`` decks (episode: ``52 * num_decks - 1`` steps)."""
    from popgym.envs.repeat_first import RepeatFirst
    from popgym.wrappers import Antialias

    env = RepeatFirst(num_decks=num_decks)
    return _Float32(gym.wrappers.FlattenObservation(Antialias(env)))


def repeat_first_oracle(first_observation: np.ndarray) -> int:
    """The optimal action of every step: the suit of the first card (from its one-hot)."""
    return int(np.argmax(first_observation[:4]))
