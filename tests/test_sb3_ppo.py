"""AarenPPO: the scan update against step-by-step collection, SB3's contract, callbacks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_helpers import VARLEN_ID
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnRewardThreshold,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.policies import MultiInputAarenPolicy

SMALL = dict(
    d_model=16, n_heads=2, net_arch=dict(pi=[16], vf=[16]), timestep_embedding=8, decay=True
)


class DictObs(gym.ObservationWrapper):
    """VarLen's observation split into a Dict of two Boxes (SB3's CombinedExtractor reads it)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Dict(
            {
                "head": spaces.Box(-np.inf, np.inf, (1,), np.float32),
                "tail": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            }
        )

    def observation(self, obs):
        return {"head": obs[:1], "tail": obs[1:]}


def _varlen(n_envs: int, seed: int, dict_obs: bool = False, **make_kwargs) -> DummyVecEnv:
    wrapper = DictObs if dict_obs else None
    return make_vec_env(
        VARLEN_ID, n_envs=n_envs, seed=seed, wrapper_class=wrapper, env_kwargs=None, **make_kwargs
    )


def _model(
    env,
    critic: str = "separate",
    plain: bool = False,
    skip: bool = False,
    norm_first: bool = True,
    short_conv: int = 0,
    skip_conv: bool = False,
    log_mass: bool = False,
    **kwargs,
) -> AarenPPO:
    policy = "MultiInputAarenPolicy" if isinstance(env.observation_space, spaces.Dict) else None
    defaults = dict(n_steps=40, batch_size=64, sequence_length=16, n_epochs=1, seed=0)
    defaults.update(kwargs)
    model = AarenPPO(
        policy or "MlpAarenPolicy",
        env,
        policy_kwargs=dict(
            SMALL,
            critic=critic,
            skip_features=skip,
            norm_first=norm_first,
            short_conv=short_conv,
            skip_conv=skip_conv,
            log_mass=log_mass,
            **(dict(decay=False, timestep_embedding=0) if plain else {}),
        ),
        device="cpu",
        **defaults,
    )
    _randomise_time_embeddings(model)
    return model


def _randomise_time_embeddings(model: AarenPPO) -> None:
    """The step embeddings start at zero and the short convolution at the identity: make them
    matter, so the tests see each step's embedding and every lag."""
    generator = torch.Generator().manual_seed(1)
    for memory in (model.policy.actor_memory, model.policy.critic_memory):
        if memory is not None and memory.time is not None:
            torch.nn.init.normal_(memory.time.weight, generator=generator)
        if memory is not None and memory.short_conv:
            torch.nn.init.normal_(memory.embed.taps, generator=generator)


def _collect(model: AarenPPO, rollouts: int = 1) -> None:
    """``rollouts`` rollouts in a row: from the second on, the live state (the memory and the
    short convolution's history) is carried into the buffer's first step."""
    _, callback = model._setup_learn(10_000, None)
    for _ in range(rollouts):
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


@pytest.mark.parametrize(
    "env_kind,critic",
    [
        ("box", "separate"),
        ("box-plain", "separate"),
        ("box", "shared"),
        ("box", "joint"),
        ("box", "none"),
        ("box-skip", "separate"),
        ("box-skip", "joint"),
        ("box-skip-post", "separate"),
        ("discrete", "separate"),
        ("dict", "separate"),
        ("dict-skip", "separate"),
        ("box-conv", "separate"),
        ("box-conv-skip", "joint"),
        ("box-conv", "none"),
        ("discrete-conv", "separate"),
        ("dict-conv-skip", "separate"),
        ("box-conv-skipconv", "separate"),
        ("box-conv-skipconv", "shared"),
        ("box-conv-skipconv", "none"),
        ("box-mass", "joint"),
        ("discrete-mass", "separate"),
    ],
)
def test_scan_update_reproduces_collection_log_probs_and_values(env_kind, critic):
    if env_kind.startswith("discrete"):
        env = make_vec_env("CartPole-v1", n_envs=3, seed=0)
    else:
        env = _varlen(3, seed=0, dict_obs=env_kind.startswith("dict"))
    model = _model(
        env,
        critic,
        plain=env_kind == "box-plain",
        skip="skip" in env_kind and "skipconv" not in env_kind,
        norm_first="post" not in env_kind,
        short_conv=4 if "conv" in env_kind else 0,
        skip_conv="skipconv" in env_kind,
        log_mass="mass" in env_kind,
    )
    conv = "conv" in env_kind
    _collect(model, rollouts=2 if conv else 1)
    buffer = model.rollout_buffer
    starts = buffer.episode_starts[1:].sum()
    assert starts >= 3  # episodes start inside sequences, not only at their first step
    if conv:  # the second rollout starts with a live history in some env
        carried = model.policy.unpack(torch.as_tensor(buffer.states[0])).pi_conv
        assert carried.shape == (3, 3, model.policy.features_dim)
        assert bool((carried.abs().sum((1, 2)) > 0).any())
    seen = 0
    for batch in buffer.sequences(16, 64, shuffle=False):  # 40 steps: 16 + 16 + 8 (padded)
        assert not batch.mask.all() or batch.mask.shape[1] == 16
        actions = batch.actions
        if env_kind.startswith("discrete"):
            actions = actions.long().flatten()
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(
                batch.observations,
                actions,
                model.policy.unpack(batch.states),
                batch.episode_starts,
                batch.mask,
            )
        torch.testing.assert_close(values, batch.old_values, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(log_prob, batch.old_log_prob, atol=1e-5, rtol=1e-5)
        seen += len(values)
    assert seen == 40 * 3


@pytest.mark.parametrize("critic", ["shared", "joint"])
@pytest.mark.parametrize("skip_conv", [False, True])
def test_only_a_joint_critic_trains_the_actor_memory_with_the_value_loss(critic, skip_conv):
    model = _model(
        _varlen(3, seed=0), critic, skip=True, short_conv=2 * skip_conv, skip_conv=skip_conv
    )
    _collect(model)
    batch = next(model.rollout_buffer.sequences(16, 64, shuffle=False))
    values, _, _ = model.policy.evaluate_actions(
        batch.observations,
        batch.actions,
        model.policy.unpack(batch.states),
        batch.episode_starts,
        batch.mask,
    )
    model.policy.zero_grad()
    ((batch.returns - values) ** 2).mean().backward()
    grads = [p.grad for p in model.policy.actor_memory.parameters()]
    reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert reached == (critic == "joint")
    assert model.policy.critic_memory is None


def _actions_of(model: AarenPPO, venv, n_steps: int) -> np.ndarray:
    obs, state, starts = venv.reset(), None, np.ones(venv.num_envs, dtype=bool)
    out = []
    for _ in range(n_steps):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        out.append(action)
        obs, _, starts, _ = venv.step(action)
    return np.stack(out)


@pytest.mark.parametrize("short_conv", [0, 3])
def test_each_env_gets_the_actions_it_gets_alone(short_conv):
    model = _model(_varlen(4, seed=0), short_conv=short_conv)
    model.learn(160)  # trained a little, so the memory matters
    together = _actions_of(model, _varlen(4, seed=20), 60)
    for i in range(4):
        alone = _actions_of(model, _varlen(1, seed=20 + i), 60)
        np.testing.assert_allclose(together[:, i], alone[:, 0], atol=1e-5, rtol=0)


def test_predict_carries_the_short_conv_history_as_collection_does():
    model = _model(_varlen(2, seed=0), short_conv=3)
    venv = _varlen(2, seed=7)
    obs, state, starts = venv.reset(), None, np.ones(2, dtype=bool)
    live = model.policy.initial_state(2)
    for _ in range(40):  # VarLen's episodes last 4 to 30 steps: resets on the way
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        with torch.no_grad():
            obs_t = torch.as_tensor(obs)
            expected, _, _, live = model.policy(obs_t, live, torch.as_tensor(starts), True)
        np.testing.assert_allclose(action, np.clip(expected.numpy(), -1, 1), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(state[-2], live.pi_conv.numpy())
        assert state[-2].shape == (2, 2, 3)
        obs, _, starts, _ = venv.step(action)


@pytest.mark.parametrize("short_conv", [0, 3])
def test_save_load_gives_identical_actions(tmp_path, short_conv):
    model = _model(_varlen(2, seed=0), critic="shared", short_conv=short_conv)
    model.learn(80)
    model.save(tmp_path / "aaren_ppo.zip")
    loaded = AarenPPO.load(tmp_path / "aaren_ppo.zip", env=_varlen(3, seed=0), device="cpu")
    assert loaded.policy.critic == "shared" and loaded.policy.short_conv == short_conv
    assert loaded._last_aaren_state is not None and loaded.rollout_buffer.n_envs == 3
    np.testing.assert_array_equal(
        _actions_of(model, _varlen(2, seed=5), 50), _actions_of(loaded, _varlen(2, seed=5), 50)
    )
    for name, p in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], p, rtol=0, atol=0)


class _Record(BaseCallback):
    """Keeps each step's raw rewards, dones and terminal observations."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[np.ndarray, np.ndarray, list]] = []

    def _on_step(self) -> bool:
        infos = [dict(i) for i in self.locals["infos"]]
        self.steps.append((self.locals["rewards"].copy(), self.locals["dones"].copy(), infos))
        return True


@pytest.mark.parametrize("short_conv", [0, 4])
def test_truncated_episode_is_bootstrapped_with_its_envs_state(short_conv):
    env = make_vec_env(
        lambda: gym.wrappers.TimeLimit(gym.make(VARLEN_ID).unwrapped, max_episode_steps=3),
        n_envs=2,
        seed=0,
    )
    model = _model(env, gamma=0.9, n_steps=12, short_conv=short_conv)
    record = _Record()
    _, callback = model._setup_learn(10_000, record)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
    buffer = model.rollout_buffer
    checked = 0
    for t, (raw, dones, infos) in enumerate(record.steps):
        for i in np.flatnonzero(dones):
            if not infos[i].get("TimeLimit.truncated") or "terminal_observation" not in infos[i]:
                continue
            first = max(s for s in range(t + 1) if buffer.episode_starts[s, i])
            seq = np.concatenate(
                [buffer.observations[first : t + 1, i], infos[i]["terminal_observation"][None]]
            )
            n = len(seq)
            with torch.no_grad():
                obs = torch.as_tensor(seq, dtype=torch.float32)
                policy = model.policy
                state = policy.initial_state(1)
                resets = torch.zeros(1, n, dtype=torch.bool)
                resets[0, 0] = True
                mask = torch.ones(1, n, dtype=torch.bool)
                steps = torch.arange(n)[None]
                latent = policy.critic_memory.sequence(
                    policy.extract_features(obs).reshape(1, n, -1),
                    state.vf,
                    resets,
                    mask,
                    steps,
                    state.vf_conv,
                )[0, -1]
                value = policy.value_net(policy.mlp_extractor.forward_critic(latent[None]))
            assert buffer.rewards[t, i] == pytest.approx(raw[i] + 0.9 * value.item(), abs=1e-5)
            checked += 1
    assert checked >= 4


def test_learn_with_callbacks_writes_tensorboard_events(tmp_path):
    eval_env = _varlen(1, seed=100)
    stop = StopTrainingOnRewardThreshold(reward_threshold=1e9)
    callbacks = [
        EvalCallback(
            eval_env,
            callback_on_new_best=stop,
            eval_freq=40,
            n_eval_episodes=2,
            best_model_save_path=str(tmp_path / "best"),
            verbose=0,
        ),  # fmt: skip
        CheckpointCallback(save_freq=40, save_path=str(tmp_path / "ckpt"), name_prefix="aaren"),
    ]
    model = _model(_varlen(2, seed=0), tensorboard_log=str(tmp_path / "tb"), n_epochs=2)
    model.learn(240, callback=callbacks)
    assert model.num_timesteps >= 240
    assert (tmp_path / "best" / "best_model.zip").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    runs = list((tmp_path / "tb").iterdir())
    assert [r.name for r in runs] == ["AarenPPO_1"]
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("train/value_loss", "train/policy_gradient_loss", "train/entropy_loss",
                "train/approx_kl", "train/clip_fraction", "train/loss", "eval/mean_reward"):  # fmt: skip
        assert key in tags


def test_stop_on_reward_threshold_ends_learning(tmp_path):
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1e9)
    eval_cb = EvalCallback(_varlen(1, seed=100), callback_on_new_best=stop, eval_freq=40,
                           n_eval_episodes=1, verbose=0)  # fmt: skip
    model = _model(_varlen(2, seed=0))
    model.learn(10_000, callback=eval_cb)
    assert model.num_timesteps < 10_000


def test_set_env_with_another_env_count_and_bad_spaces():
    model = _model(_varlen(2, seed=0))
    model.learn(80)
    model.set_env(_varlen(5, seed=1))
    assert model.n_envs == 5 and model.rollout_buffer.n_envs == 5
    assert model._last_aaren_state.pi[0].m.shape[0] == 5
    model.learn(200, reset_num_timesteps=False)
    with pytest.raises(ValueError, match="Observation spaces do not match"):
        model.set_env(make_vec_env("CartPole-v1", n_envs=1))
    assert issubclass(AarenPPO.policy_aliases["MultiInputAarenPolicy"], MultiInputAarenPolicy)
    with pytest.raises(ValueError, match="critic must be one of"):
        _model(_varlen(1, seed=0), critic="lstm")
    with pytest.raises(ValueError, match="short_conv must be 0"):
        _model(_varlen(1, seed=0), short_conv=-1)
    with pytest.raises(ValueError, match="skip_conv=True needs a short convolution"):
        _model(_varlen(1, seed=0), skip_conv=True)
