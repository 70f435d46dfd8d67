"""MaskableAarenPPO: sb3-contrib's masking convention with an Aaren memory.

References: sb3-contrib's ``MaskableCategorical`` (log-probabilities and entropy of a masked
categorical) and a hand computation of the same; the policy's step path against the update's
scan on one rollout; the env's own count of illegal moves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib.common.maskable.distributions import MaskableCategorical
from sb3_contrib.common.wrappers import ActionMasker
from stable_baselines3.common.env_util import make_vec_env

from aaren_rl.sb3.fast_collect import FastCollectionStep
from aaren_rl.sb3.maskable import (
    MaskableAarenPPO,
    MaskableEvalCallback,
    evaluate_policy,
    get_action_masks,
)
from aaren_rl.sb3.masked_recall import MASKED_RECALL_ID, MaskedRecallEnv, register_masked_recall

register_masked_recall()

SMALL = dict(d_model=16, n_heads=2)


def make_model(n_envs: int = 3, seed: int = 0, **kwargs) -> MaskableAarenPPO:
    env = make_vec_env(MASKED_RECALL_ID, n_envs=n_envs, seed=seed)
    kwargs.setdefault("policy_kwargs", SMALL)
    return MaskableAarenPPO("MlpAarenPolicy", env, n_steps=16, batch_size=32, seed=seed, **kwargs)


def illegal_moves(model_or_env) -> int:
    env = model_or_env.get_env() if hasattr(model_or_env, "get_env") else model_or_env
    return int(sum(env.get_attr("illegal_moves")))


def random_masks(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    masks = rng.random((n, k)) < 0.5
    masks[np.arange(n), rng.integers(k, size=n)] = True  # at least one allowed
    return masks


def test_masked_log_prob_and_entropy_equal_maskable_categorical_and_a_hand_computation():
    model = make_model()
    policy = model.policy
    rng = np.random.default_rng(0)
    latent = torch.randn(64, policy.mlp_extractor.latent_dim_pi)
    masks = random_masks(rng, 64, 6)
    actions = torch.as_tensor([rng.choice(np.flatnonzero(m)) for m in masks])
    ours = policy.action_distribution(latent, masks)
    logits = policy.action_net(latent)
    reference = MaskableCategorical(logits=logits, masks=masks)
    torch.testing.assert_close(ours.log_prob(actions), reference.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), reference.entropy())
    # by hand: softmax over the allowed actions only
    allowed = torch.as_tensor(masks)
    masked = logits.masked_fill(~allowed, float("-inf"))
    log_p = masked - torch.logsumexp(masked, dim=1, keepdim=True)
    torch.testing.assert_close(ours.log_prob(actions), log_p.gather(1, actions[:, None])[:, 0])
    p = log_p.exp()
    hand_entropy = -(torch.where(allowed, p * log_p, torch.zeros_like(p))).sum(1)
    torch.testing.assert_close(ours.entropy(), hand_entropy)


def test_disallowed_actions_are_never_sampled_by_any_path():
    model = make_model(n_envs=4)
    policy = model.policy
    rng = np.random.default_rng(1)
    obs = torch.rand(4, *model.observation_space.shape)
    state = policy.initial_state(4)
    starts = torch.ones(4, dtype=torch.bool)
    step = FastCollectionStep(policy)
    for _ in range(200):
        masks = random_masks(rng, 4, 6)
        with torch.no_grad():
            a_ref, *_ = policy(obs, state, starts, action_masks=masks)
            a_fast, *_ = step(obs, state, starts, action_masks=masks)
        a_pred, _ = model.predict(obs.numpy(), action_masks=masks)
        for actions in (a_ref.numpy(), a_fast.numpy(), a_pred):
            assert masks[np.arange(4), actions].all()


def test_fast_collection_step_with_masks_matches_forward():
    model = make_model(n_envs=5)
    policy = model.policy
    masks = random_masks(np.random.default_rng(2), 5, 6)
    obs = torch.rand(5, *model.observation_space.shape)
    state = policy.initial_state(5)
    starts = torch.ones(5, dtype=torch.bool)
    with torch.no_grad():
        torch.manual_seed(3)
        ref = policy(obs, state, starts, action_masks=masks)
        torch.manual_seed(3)
        fast = FastCollectionStep(policy)(obs, state, starts, action_masks=masks)
    torch.testing.assert_close(fast[0], ref[0], rtol=0, atol=0)  # same draws, same actions
    torch.testing.assert_close(fast[1], ref[1])
    torch.testing.assert_close(fast[2], ref[2])


def test_update_scores_stored_actions_under_stored_masks_as_the_steps_did():
    """One rollout: the buffer's masks are the env's, every action is allowed by them, and the
    update's scan gives the log-probabilities collection stored and MaskableCategorical's
    log-probabilities and entropy on the step path's logits."""
    model = make_model(n_envs=3, seed=4)
    model.learn(48)  # 1 rollout of 16 steps x 3 envs, then an update
    buffer = model.rollout_buffer
    assert illegal_moves(model) == 0
    masks = buffer.action_masks.astype(bool)  # [16, 3, 6]
    actions = buffer.actions[..., 0].astype(int)  # [16, 3]
    assert masks[np.arange(16)[:, None], np.arange(3)[None], actions].all()
    assert not masks.all()  # the env's masks were stored, not the all-allowed default
    # collect again (no update after it), then score that rollout in one scan
    _, callback = model._setup_learn(48, None, reset_num_timesteps=False)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, 16)
    buffer = model.rollout_buffer
    policy = model.policy
    policy.set_training_mode(False)
    (batch,) = list(buffer.sequences(16, 16 * 3, shuffle=False))
    with torch.no_grad():
        values, log_prob, entropy = policy.evaluate_actions(
            batch.observations,
            batch.actions.long().flatten(),
            policy.unpack(batch.states),
            batch.episode_starts,
            batch.mask,
            batch.action_masks,
        )
    # the step path over the same observations: logits per step, then MaskableCategorical
    n_envs = 3
    obs = torch.as_tensor(buffer.observations)  # [16, 3, obs]
    starts = torch.as_tensor(buffer.episode_starts).bool()
    state = policy.unpack(torch.as_tensor(buffer.states[0]))
    step_logits = []
    with torch.no_grad():
        for t in range(16):
            dist, state = policy.get_distribution(obs[t], state, starts[t])
            step_logits.append(dist.distribution.logits)
    logits = torch.stack(step_logits, dim=1).reshape(n_envs * 16, -1)  # env-major as the scan
    step_masks = torch.as_tensor(buffer.action_masks.astype(bool)).swapaxes(0, 1).reshape(-1, 6)
    step_actions = torch.as_tensor(buffer.actions[..., 0]).long().swapaxes(0, 1).reshape(-1)
    reference = MaskableCategorical(logits=logits, masks=step_masks)
    torch.testing.assert_close(log_prob, reference.log_prob(step_actions), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, reference.entropy(), atol=1e-5, rtol=1e-5)
    stored = torch.as_tensor(buffer.log_probs).swapaxes(0, 1).reshape(-1)
    torch.testing.assert_close(log_prob, stored, atol=1e-5, rtol=1e-5)


def test_training_with_masks_takes_no_illegal_move_and_without_masks_does():
    masked = make_model(n_envs=4, seed=5)
    masked.learn(640)
    assert illegal_moves(masked) == 0
    unmasked = make_model(n_envs=4, seed=5)
    unmasked.learn(640, use_masking=False)
    assert illegal_moves(unmasked) > 50  # a fresh policy picks 4 of 6 actions illegal
    stored = unmasked.rollout_buffer.action_masks
    assert (stored == 1).all()  # no masks asked for: every action allowed, as sb3-contrib


def test_masked_evaluation_carries_the_memory_and_never_moves_illegally():
    model = make_model(n_envs=2, seed=6)
    eval_env = make_vec_env(MASKED_RECALL_ID, n_envs=2, seed=100)
    calls: list[tuple | None] = []
    original = model.policy.predict

    def recording_predict(observation, state=None, episode_start=None, deterministic=False, **kw):
        calls.append(state)
        return original(observation, state, episode_start, deterministic, **kw)

    model.policy.predict = recording_predict
    rewards, lengths = evaluate_policy(
        model, eval_env, n_eval_episodes=6, return_episode_rewards=True
    )
    assert len(rewards) == 6 and all(r > -1 for r in rewards)  # -1 only for an illegal move
    assert illegal_moves(eval_env) == 0
    assert calls[0] is None and all(s is not None for s in calls[1:])  # the state is carried


def test_maskable_eval_callback_evaluates_with_masks(tmp_path):
    model = make_model(n_envs=2, seed=7)
    eval_env = make_vec_env(MASKED_RECALL_ID, n_envs=1, seed=200)
    callback = MaskableEvalCallback(
        eval_env, eval_freq=16, n_eval_episodes=4, warn=False, verbose=0, log_path=str(tmp_path)
    )
    model.learn(64, callback=callback)
    assert callback.evaluations_timesteps == [32, 64]  # every 16 calls of 2 envs
    assert np.asarray(callback.evaluations_results).min() >= 0  # -1 only for an illegal move
    assert illegal_moves(eval_env) == 0


def test_action_masker_and_get_action_masks():
    env = ActionMasker(MaskedRecallEnv(), lambda e: e.unwrapped.legal)
    env.reset(seed=0)
    np.testing.assert_array_equal(get_action_masks(env), env.unwrapped.legal[None])
    venv = make_vec_env(MASKED_RECALL_ID, n_envs=3, seed=0)
    venv.reset()
    assert get_action_masks(venv).shape == (3, 6)


def test_refusals():
    with pytest.raises(ValueError, match="action_masks"):
        MaskableAarenPPO("MlpAarenPolicy", "CartPole-v1", n_steps=16).learn(16)
    MaskableAarenPPO("MlpAarenPolicy", "CartPole-v1", n_steps=16).learn(16, use_masking=False)
    with pytest.raises(ValueError, match="Discrete, MultiDiscrete"):
        MaskableAarenPPO("MlpAarenPolicy", "Pendulum-v1", n_steps=16)


def test_save_load_predicts_the_same_masked_actions(tmp_path):
    model = make_model(n_envs=2, seed=8)
    model.learn(32)
    obs = model.get_env().reset()
    masks = get_action_masks(model.get_env())
    action, _ = model.predict(obs, deterministic=True, action_masks=masks)
    model.save(tmp_path / "m.zip")
    loaded = MaskableAarenPPO.load(tmp_path / "m.zip")
    again, _ = loaded.predict(obs, deterministic=True, action_masks=masks)
    np.testing.assert_array_equal(action, again)
    assert masks[np.arange(2), action].all()
