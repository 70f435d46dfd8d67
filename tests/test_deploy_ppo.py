"""The exported AarenPPO policy (ONNX Runtime) acts as ``AarenPPO.predict(deterministic=True)``.

Both run side by side in SB3 vector envs whose episodes end at different steps (VarLen: Box
actions; CartPole: Discrete), the exported step's state carried and its ``episode_start`` fed
as ``predict``'s; actions within 1e-5 and the memory against ``predict``'s state tuple, over
policy variants (one and two heads, recency decay and step embeddings, a short convolution,
skip features, the heads' log masses).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_helpers import VARLEN_ID
from stable_baselines3.common.env_util import make_vec_env

from aaren_rl.deploy import OnnxStep
from aaren_rl.deploy.export import export_ppo_policy
from aaren_rl.sb3 import AarenPPO

pytest.importorskip("onnxruntime")

VARIANTS = {
    "plain": dict(n_heads=1),
    "decay-time": dict(n_heads=2, timestep_embedding=8, decay=True),
    "conv-skip": dict(n_heads=2, short_conv=3, skip_features=True, n_layers=2),
    "log-mass": dict(n_heads=2, decay=True, log_mass=True),
}


def _model(env_id: str, **policy_kwargs) -> AarenPPO:
    venv = make_vec_env(env_id, n_envs=2, seed=0)
    kwargs = dict(d_model=16, net_arch=dict(pi=[16], vf=[16]), **policy_kwargs)
    model = AarenPPO("MlpAarenPolicy", venv, policy_kwargs=kwargs, n_steps=40, batch_size=40,
                     sequence_length=8, n_epochs=1, seed=0, device="cpu")  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every weight off its initial value (zero step embeddings too)
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("env_id", [VARLEN_ID, "CartPole-v1"])
def test_exported_policy_acts_as_predict(tmp_path, env_id, variant):
    model = _model(env_id, **VARIANTS[variant])
    path = export_ppo_policy(model, tmp_path / "ppo.onnx")
    step = OnnxStep(path)
    n_envs = 3
    venv = make_vec_env(env_id, n_envs=n_envs, seed=5)
    obs, state, starts = venv.reset(), None, np.ones(n_envs, dtype=bool)
    ours = step.initial_state(n_envs)
    n_starts = 0
    for _ in range(80):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        out, ours = step.step(ours, observation=obs, episode_start=starts)
        if env_id == "CartPole-v1":
            np.testing.assert_array_equal(out["action"], action)
        else:
            np.testing.assert_allclose(out["action"], action, atol=1e-5, rtol=0)
        layers = model.policy.n_layers
        for i in range(layers):
            for j, name in enumerate("muw"):
                np.testing.assert_allclose(ours[name][:, i], state[3 * i + j], rtol=1e-5, atol=1e-5)
        if model.policy.short_conv:
            np.testing.assert_allclose(ours["history"], state[-2], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ours["t"], state[-1])
        obs, _, starts, _ = venv.step(action)
        n_starts += int(starts.sum())
    assert n_starts >= 3  # episodes ended (and restarted the memory) along the way
    spec = step.spec
    assert spec["kind"] == "ppo_policy"
    assert spec["state"][0]["fill"] == "-inf"
    assert spec["state_bytes_per_env"] == sum(a.nbytes for a in step.initial_state(1).values())


def test_cli_exports_a_saved_aarenppo(tmp_path):
    from aaren_rl.cli import main

    model = _model("CartPole-v1", n_heads=2)
    model.save(tmp_path / "ppo.zip")
    out = tmp_path / "ppo.onnx"
    assert main(["export", str(tmp_path / "ppo.zip"), "--out", str(out)]) == 0
    step = OnnxStep(out)
    obs = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    starts = np.ones(4, dtype=bool)
    action, _ = model.predict(obs, state=None, episode_start=starts, deterministic=True)
    got, _ = step.step(step.initial_state(4), observation=obs, episode_start=starts)
    np.testing.assert_array_equal(got["action"], action)
