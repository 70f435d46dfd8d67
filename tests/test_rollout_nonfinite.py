"""A NaN or inf at the model boundary of a rollout is a clear error naming the env and the step.

Today's alternative is silence: the attention memory turns NaN and the rollout reports a NaN
return (or, before the attention fix, zeros). The environment here is a tiny Gymnasium env whose
env ``BAD_ENV`` emits one bad number at a chosen step, so the error must name exactly that env
and step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.agents.rollout import evaluate_agent
from aaren_rl.agents.step_checks import NonFiniteInputError, check_step_inputs

ENV = "aaren-rl-test/BadNumberAt-v0"
OBS_DIM, ACT_DIM = 3, 2
BAD_ENV, BAD_STEP = 2, 5  # env 2 of the vector env (seeded 2) goes wrong at its step 5


class BadNumberAt(gym.Env):
    """Observations ``[t, t, t] / 10``, reward 1; the env reset with seed ``BAD_ENV`` puts
    ``what`` (``observation`` or ``reward``) to ``value`` at step ``BAD_STEP``."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def __init__(self, what: str = "observation", value: float = float("nan")) -> None:
        self.what, self.value, self.t, self.bad = what, value, 0, False

    def _obs(self):
        obs = np.full(OBS_DIM, self.t / 10.0)
        if self.bad and self.what == "observation" and self.t == BAD_STEP:
            obs[1] = self.value
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.bad = seed == BAD_ENV
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        reward = 1.0
        if self.bad and self.what == "reward" and self.t == BAD_STEP:
            reward = self.value
        return self._obs(), reward, False, self.t >= 20, {}


if ENV not in gym.registry:
    gym.register(ENV, entry_point=BadNumberAt)


def make_model(**overrides):
    torch.manual_seed(0)
    config = {"d_model": 16, "n_layers": 2, "n_heads": 2, "context": 5, **overrides}
    return build_decision_model(config, OBS_DIM, ACT_DIM, reward_scale=1e-2)


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_bad_observation_in_a_rollout_names_the_env_and_the_step(backbone, value):
    model = make_model(backbone=backbone)
    with pytest.raises(NonFiniteInputError) as err:
        evaluate_agent(
            model, ENV, 100.0, n_episodes=4, n_envs=4, env_kwargs={"value": value}, seed=0
        )
    message = str(err.value)
    assert f"observation of env {BAD_ENV} at step {BAD_STEP} is {value}" in message
    assert "(entry 1)" in message and ENV in message and "Fix:" in message
    assert "\n" not in message
    assert (err.value.env_index, err.value.step) == (BAD_ENV, BAD_STEP)


def test_bad_reward_is_caught_where_it_happens():
    with pytest.raises(
        NonFiniteInputError, match=f"reward of env {BAD_ENV} at step {BAD_STEP - 1}"
    ):
        evaluate_agent(
            make_model(), ENV, 100.0, n_episodes=3, n_envs=3, env_kwargs={"what": "reward"}
        )


def test_bad_target_return_is_caught_at_the_first_step():
    with pytest.raises(NonFiniteInputError, match="return_to_go of env 0 at step 0 is inf"):
        evaluate_agent(make_model(), ENV, float("inf"), n_episodes=2, n_envs=2, seed=10)


@pytest.mark.parametrize("return_token", ["separate", "merged"])
def test_act_and_observe_action_refuse_non_finite_inputs(return_token):
    model = make_model(return_token=return_token).eval()
    obs = torch.zeros(4, OBS_DIM)
    rtg = torch.full((4,), 50.0)
    t = torch.tensor([3, 7, 11, 0])
    with torch.inference_mode():
        _, state = model.act(obs, rtg, t, None)  # finite: fine
        bad = obs.clone()
        bad[1, 2] = float("nan")
        bad[3, 0] = float("inf")
        with pytest.raises(
            NonFiniteInputError, match=r"observation of env 1 at step 7 is nan \(entry 2\); 2 envs"
        ):
            model.act(bad, rtg, t, state)
        rtg_bad = rtg.clone()
        rtg_bad[2] = float("nan")
        with pytest.raises(NonFiniteInputError, match="return_to_go of env 2 at step 11 is nan"):
            model.act(obs, rtg_bad, t, state)
        action = torch.zeros(4, ACT_DIM)
        action[0, 1] = float("-inf")
        with pytest.raises(NonFiniteInputError, match="action of env 0 at step 3 is -inf"):
            model.observe_action(action, t, state)


def test_the_check_is_one_helper_any_step_path_can_call():
    check_step_inputs(torch.tensor([0, 1]), observation=np.zeros((2, 3)), action=torch.ones(2, 2))
    check_step_inputs(None, reward=np.array([1, 2]))  # integers are always finite
    with pytest.raises(NonFiniteInputError, match="reward of env 1 is nan") as err:
        check_step_inputs(None, reward=np.array([1.0, np.nan]))
    assert err.value.step is None
