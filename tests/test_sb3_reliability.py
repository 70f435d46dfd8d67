"""AarenPPO and its policy refuse bad input with one message shape (``WHERE: WHAT. Fix: FIX``):
truncated and foreign saves, another model's predict state, a wrong episode_start length, NaN
observations, and NaN rewards during learn (stopped before the update: the weights are
compared bit for bit with the ones before learn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_helpers import VARLEN_ID  # noqa: F401 (registers the test env)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnvWrapper

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.checks import SB3InputError

KW = {"n_steps": 16, "batch_size": 16, "n_epochs": 1, "device": "cpu", "seed": 0}


def _model(env="CartPole-v1", n_envs: int = 2, **policy) -> AarenPPO:
    policy = {"d_model": 16, "n_layers": 1, "n_heads": 2, **policy}
    return AarenPPO("MlpAarenPolicy", make_vec_env(env, n_envs, seed=0), policy_kwargs=policy, **KW)


def _one_line(err: pytest.ExceptionInfo, where: str) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{where}: ") and ". Fix: " in message
    return message


# ------------------------------------------------------------------ load


def test_load_of_a_truncated_zip_names_the_file(tmp_path):
    path = tmp_path / "model.zip"
    _model().save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SB3InputError) as err:
        AarenPPO.load(path)
    message = _one_line(err, str(path))
    assert "truncated or corrupt" in message and "AarenPPO.save" in message
    # a zip with a damaged member (same length, bytes flipped inside policy.pth)
    import zipfile

    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as z:
        z.writestr("data", "{}")
        z.writestr("policy.pth", b"x" * 1000)
    raw = bytearray((tmp_path / "whole.zip").read_bytes())
    at = raw.index(b"x" * 100)
    raw[at : at + 10] = b"y" * 10
    (tmp_path / "flipped.zip").write_bytes(bytes(raw))
    with pytest.raises(SB3InputError, match="member 'policy.pth' is corrupt"):
        AarenPPO.load(tmp_path / "flipped.zip")
    with pytest.raises(SB3InputError, match="no such file"):
        AarenPPO.load(tmp_path / "missing.zip")


def test_load_of_a_recurrent_ppo_zip_names_the_algorithm(tmp_path):
    from sb3_contrib import RecurrentPPO

    path = tmp_path / "rppo.zip"
    RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=16, batch_size=16, device="cpu").save(path)
    with pytest.raises(SB3InputError) as err:
        AarenPPO.load(path)
    message = _one_line(err, str(path))
    assert "saved by another algorithm (sb3_contrib's RecurrentPPO)" in message
    assert "RecurrentActorCriticPolicy" in message and "RecurrentPPO.load" in message


def test_load_of_an_aaren_save_still_works(tmp_path):
    model = _model()
    model.save(tmp_path / "model")
    loaded = AarenPPO.load(tmp_path / "model", device="cpu")  # SB3 adds the .zip
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ predict


def test_predict_with_another_models_state_is_refused():
    small, wide = _model(), _model(d_model=32)
    obs = np.zeros((2, 4), dtype=np.float32)
    _, state = wide.predict(obs)
    with pytest.raises(SB3InputError) as err:
        small.predict(obs, state=state)
    message = _one_line(err, "AarenActorCriticPolicy.predict")
    assert "state[2] has shape (2, 2, 16), but this policy's is (2, 2, 8)" in message
    assert "another model" in message
    with pytest.raises(SB3InputError, match=r"an LSTM's \(h, c\) pair"):
        small.predict(obs, state=(np.zeros((1, 2, 8)), np.zeros((1, 2, 8))))
    _, own = small.predict(obs)
    with pytest.raises(SB3InputError, match="state holds 2 envs but the observation holds 3"):
        small.predict(np.zeros((3, 4), dtype=np.float32), state=own)


def test_predict_with_a_wrong_episode_start_length_is_refused():
    model = _model()
    obs = np.zeros((2, 4), dtype=np.float32)
    _, state = model.predict(obs)
    with pytest.raises(SB3InputError) as err:
        model.predict(obs, state=state, episode_start=np.array([True, False, False]))
    assert "episode_start holds 3 flags but the observation holds 2 envs" in _one_line(
        err, "AarenActorCriticPolicy.predict"
    )
    model.predict(obs, state=state, episode_start=[True, False])  # the right length: fine


def test_predict_with_a_nan_observation_names_env_and_entry():
    model = _model()
    obs = np.zeros((2, 4), dtype=np.float32)
    obs[1, 3] = np.nan
    with pytest.raises(SB3InputError) as err:
        model.predict(obs)
    assert "the observation of env 1 is nan (entry 3)" in _one_line(
        err, "AarenActorCriticPolicy.predict"
    )
    single = np.array([0.0, np.inf, 0.0, 0.0], dtype=np.float32)  # one env, not vectorised
    with pytest.raises(SB3InputError, match="env 0 is inf \\(entry 1\\)"):
        model.predict(single)


# ------------------------------------------------------------------ learn


class _PoisonAt(VecEnvWrapper):
    """Env 1's reward (or observation) becomes NaN at the ``at``-th step."""

    def __init__(self, venv, at: int, what: str) -> None:
        super().__init__(venv)
        self.at, self.what, self.count = at, what, 0

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self.count += 1
        if self.count == self.at:
            if self.what == "reward":
                rewards = rewards.astype(np.float32)
                rewards[1] = np.nan
            else:
                obs = obs.copy()
                obs[1, 2] = np.nan
        return obs, rewards, dones, infos


@pytest.mark.parametrize("what", ["reward", "observation"])
def test_learn_with_a_nan_stops_before_the_update(what):
    env = _PoisonAt(make_vec_env(VARLEN_ID, 2, seed=0), at=16 + 5, what=what)  # 2nd rollout
    model = AarenPPO(
        "MlpAarenPolicy", env, policy_kwargs={"d_model": 16, "n_layers": 1, "n_heads": 2}, **KW
    )
    model.learn(16)  # one clean rollout and update
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(SB3InputError) as err:
        model.learn(32, reset_num_timesteps=False)
    message = _one_line(err, "AarenPPO.learn")
    assert f"the {what} of env 1 at step 4 of the rollout (total timesteps 42) is nan" in message
    assert "weights are unchanged" in message and "VecCheckNan" in message
    for a, b in zip(before, model.policy.parameters(), strict=True):
        assert torch.equal(a, b)
