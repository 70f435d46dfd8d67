"""A VecEnv wrapper that hands each step's rewards to a return-conditioned policy.

SB3's ``predict`` takes no reward, but a decision model conditions on the return still to get
(the target minus the rewards so far). :class:`RewardFeedback` sits between the VecEnv and the
caller: after every ``step`` it gives the rewards to the policy, which subtracts them from each
env's return-to-go at the next ``predict``. Nothing else changes, so SB3's own
``evaluate_policy`` (and any loop written for ``RecurrentPPO``) runs unchanged on the wrapped
env, over ``DummyVecEnv`` or ``SubprocVecEnv`` alike (the rewards arrive in the main process).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn


class RewardConsumer(Protocol):
    """What the wrapper needs from a policy."""

    def check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None: ...

    def receive_rewards(self, rewards: np.ndarray) -> None: ...

    def clear_rewards(self) -> None: ...


class RewardFeedback(VecEnvWrapper):
    """Wrap ``venv`` so that ``policy`` sees the rewards of every step.

    Args:
        venv: any SB3 VecEnv (``DummyVecEnv``, ``SubprocVecEnv``, wrapped or not).
        policy: a :class:`~aaren_rl.sb3.decision_policy.DecisionAarenPolicy`; its spaces are
            checked against the env's here, so a mismatch fails before the first step.
    """

    def __init__(self, venv: VecEnv, policy: RewardConsumer) -> None:
        super().__init__(venv)
        policy.check_spaces(venv.observation_space, venv.action_space)
        self.policy = policy

    def reset(self) -> VecEnvObs:
        obs = self.venv.reset()
        self.policy.clear_rewards()
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.policy.receive_rewards(np.asarray(rewards, dtype=np.float64))
        return obs, rewards, dones, infos
