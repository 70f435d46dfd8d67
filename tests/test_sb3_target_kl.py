"""AarenPPO's ``target_kl`` (the CartPoleNoVel preset's safety, ``scripts/bench_sb3.py``) stops
the epochs where SB3's PPO stops them: after the minibatch whose approximate KL passes
``1.5 * target_kl``, before its gradient step."""

from __future__ import annotations

import torch
from sb3_helpers import VARLEN_ID
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from aaren_rl.sb3 import AarenPPO

N_ENVS, N_STEPS = 2, 40
ONE_BATCH = dict(n_steps=N_STEPS, batch_size=N_ENVS * N_STEPS, seed=0, device="cpu")
SMALL = dict(d_model=16, n_heads=2, net_arch=dict(pi=[16], vf=[16]), short_conv=2)


def _aaren(**kwargs) -> AarenPPO:
    env = make_vec_env(VARLEN_ID, n_envs=N_ENVS, seed=0)
    model = AarenPPO(
        "MlpAarenPolicy", env, policy_kwargs=SMALL, sequence_length=N_STEPS, **ONE_BATCH, **kwargs
    )
    model.learn(N_ENVS * N_STEPS)  # one rollout, one train()
    return model


def _sb3_ppo(**kwargs) -> PPO:
    env = make_vec_env(VARLEN_ID, n_envs=N_ENVS, seed=0)
    model = PPO("MlpPolicy", env, **ONE_BATCH, **kwargs)
    model.learn(N_ENVS * N_STEPS)
    return model


def test_target_kl_stops_the_epochs_where_sb3s_ppo_does():
    # one minibatch per epoch: epoch 0 starts at the old policy (KL 0) and steps; epoch 1's
    # KL is past 1.5e-12, so it stops there, without a step: 2 epochs counted, one step taken
    tiny = dict(n_epochs=5, target_kl=1e-12)
    assert _sb3_ppo(**tiny)._n_updates == 2
    stopped = _aaren(**tiny)
    assert stopped._n_updates == 2
    one_epoch = _aaren(n_epochs=1)
    for a, b in zip(stopped.policy.parameters(), one_epoch.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_without_target_kl_every_epoch_runs():
    assert _sb3_ppo(n_epochs=3)._n_updates == 3
    assert _aaren(n_epochs=3)._n_updates == 3
    loose = _aaren(n_epochs=3, target_kl=1e9)
    assert loose._n_updates == 3
