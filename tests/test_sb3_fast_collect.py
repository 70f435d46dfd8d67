"""The fast collection step against the policy's reference step (``policy.forward``)."""

from __future__ import annotations

import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.fast_collect import FastCollectionStep
from aaren_rl.sb3.policies import AarenActorCriticPolicy


def _policy(action_space: spaces.Space, critic: str, short_conv: int, skip_conv: bool,
            norm_first: bool = True, log_mass: bool = False) -> AarenActorCriticPolicy:  # fmt: skip
    policy = AarenActorCriticPolicy(
        spaces.Box(-10.0, 10.0, (5,)),
        action_space,
        lambda _: 1e-3,
        net_arch=dict(pi=[16], vf=[16]),
        d_model=16,
        n_heads=2,
        n_layers=2,
        critic=critic,
        timestep_embedding=6,
        decay=True,
        skip_features=True,
        norm_first=norm_first,
        short_conv=short_conv,
        skip_conv=skip_conv,
        log_mass=log_mass,
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the step embeddings start at zero, the taps at the identity
        for p in policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    policy.set_training_mode(False)
    return policy


def _assert_states_close(a, b) -> None:
    for x, y in zip(a.pi + a.vf, b.pi + b.vf, strict=True):
        for xs, ys in zip(x, y, strict=True):
            torch.testing.assert_close(xs, ys, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.t, b.t, atol=0, rtol=0)
    for xs, ys in ((a.pi_conv, b.pi_conv), (a.vf_conv, b.vf_conv)):
        assert (xs is None) == (ys is None)
        if xs is not None:
            torch.testing.assert_close(xs, ys, atol=0, rtol=0)


@pytest.mark.parametrize("critic", ["separate", "shared", "joint", "none"])
@pytest.mark.parametrize(
    "action_space", [spaces.Discrete(3), spaces.Box(-1.0, 1.0, (2,))], ids=["discrete", "box"]
)
@pytest.mark.parametrize(
    "short_conv,skip_conv,norm_first,log_mass",
    [(0, False, True, False), (3, True, True, False), (3, False, False, False),
     (0, False, True, True)],
)  # fmt: skip
def test_fast_step_equals_the_reference_step(action_space, critic, short_conv, skip_conv,
                                             norm_first, log_mass):  # fmt: skip
    n_envs, steps = 4, 12
    policy = _policy(action_space, critic, short_conv, skip_conv, norm_first, log_mass)
    generator = torch.Generator().manual_seed(0)
    obs = torch.randn(steps, n_envs, 5, generator=generator)
    starts = torch.rand(steps, n_envs, generator=generator) < 0.25
    starts[0] = True
    starts[5, 1] = starts[6, 1] = True  # a one-step episode
    ref_state = fast_state = policy.initial_state(n_envs)
    with torch.no_grad():
        fast = FastCollectionStep(policy)
        for t in range(steps):
            torch.manual_seed(100 + t)  # the same draws for both
            ref = policy(obs[t], ref_state, starts[t])
            torch.manual_seed(100 + t)
            got = fast(obs[t], fast_state, starts[t])
            torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-6)  # actions
            torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-6)  # values
            torch.testing.assert_close(got[2], ref[2], atol=1e-6, rtol=1e-6)  # log-probs
            _assert_states_close(got[3], ref[3])
            ref_state, fast_state = ref[3], got[3]
        det_ref = policy(obs[0], ref_state, starts[1], deterministic=True)
        det_fast = fast(obs[0], fast_state, starts[1], deterministic=True)
    torch.testing.assert_close(det_fast[0], det_ref[0], atol=0, rtol=0)
    torch.testing.assert_close(det_fast[2], det_ref[2], atol=1e-6, rtol=1e-6)
    assert bool(ref_state.t.gt(2).any())  # histories and memories were carried, not only reset


def test_collection_after_an_update_reads_the_new_weights():
    """AarenPPO builds the fast step (its fused weights) at every rollout: after an update the
    next rollout's stored log-probs and values are the updated policy's (the scan's)."""
    env = make_vec_env("CartPole-v1", n_envs=3, seed=0)
    model = AarenPPO(
        "MlpAarenPolicy", env, n_steps=16, batch_size=48, sequence_length=16, n_epochs=2,
        learning_rate=1e-2, seed=0, device="cpu",
        policy_kwargs=dict(d_model=16, n_heads=2, net_arch=[16], decay=True, critic="joint",
                           timestep_embedding=8, short_conv=3, skip_conv=True),
    )  # fmt: skip
    _, callback = model._setup_learn(10_000, None)
    policy = model.policy
    keys = policy.actor_memory.backbone.layers[0].attn.k_proj.weight
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    before = keys.detach().clone()
    model.train()
    assert not torch.equal(keys, before)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    (batch,) = model.rollout_buffer.sequences(16, 48, shuffle=False)
    with torch.no_grad():
        values, log_prob, _ = policy.evaluate_actions(
            batch.observations, batch.actions.long().flatten(), policy.unpack(batch.states),
            batch.episode_starts, batch.mask,
        )  # fmt: skip
    torch.testing.assert_close(values, batch.old_values, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_prob, batch.old_log_prob, atol=1e-5, rtol=1e-5)
