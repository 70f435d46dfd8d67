"""Memory tasks: the passive T-maze's rules, POPGym RepeatFirst's wrapping, and their datasets.

The T-maze checks are exact where they can be: after t = 0 the observations of the two cue
worlds are identical, so a policy that ignores the cue plays the same actions in both and wins
in exactly one of them (expected success 0.5 under the uniform cue), while the oracle wins both.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from aaren_rl.data.d4rl_reader import load_d4rl, read_d4rl_hdf5
from aaren_rl.data.tasks import load_task, task_from_dict
from aaren_rl.envs import STANDARD_LENGTHS, register_tmaze, tmaze_id
from aaren_rl.envs.memory_datasets import Mix, build_dataset, collect
from aaren_rl.envs.popgym_tasks import make_repeat_first, repeat_first_oracle
from aaren_rl.envs.tmaze import BACK, DOWN, FORWARD, UP, TMazeEnv, oracle_action


def play(env: gym.Env, policy, seed: int, cue=None) -> tuple[float, list[np.ndarray], int]:
    """One episode: (return, observations seen, steps)."""
    options = None if cue is None else {"cue": cue}
    obs, info = env.reset(seed=seed, options=options)
    seen, total, t, done = [obs], 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs, t, info))
        seen.append(obs)
        total, t, done = total + reward, t + 1, terminated or truncated
    return total, seen, t


def always(action_at_junction: int):
    return lambda obs, t, info: action_at_junction if obs[2] > 0.5 else FORWARD


def test_oracle_wins_both_cue_worlds_in_exactly_L_plus_1_steps():
    env = TMazeEnv(corridor_length=7)
    for cue in (0, 1):
        ret, seen, steps = play(env, lambda obs, t, info: oracle_action(info["cue"], obs), 0, cue)
        assert ret == 1.0 and steps == 8
        assert seen[0].tolist() == [float(cue == 0), float(cue == 1), 0.0]
        assert seen[7].tolist() == [0.0, 0.0, 1.0]  # the junction


def test_cue_ignoring_policies_win_exactly_one_of_the_two_cue_worlds():
    env = TMazeEnv(corridor_length=6)
    rng = np.random.default_rng(0)
    policies = [always(UP), always(DOWN)]
    for _ in range(20):  # random action tables indexed by (t, at_junction): blind to the cue
        table = rng.integers(0, 4, size=(8, 2))
        policies.append(lambda obs, t, info, table=table: int(table[t, int(obs[2])]))
    for policy in policies:
        up, seen_up, _ = play(env, policy, 0, cue="up")
        down, seen_down, _ = play(env, policy, 0, cue="down")
        # after t = 0 the two worlds look the same, so a blind policy acts the same in both
        for a, b in zip(seen_up[1:], seen_down[1:], strict=True):
            np.testing.assert_array_equal(a, b)
        assert up + down <= 1.0  # at most one world won: its mean success is <= 0.5
        if policy in policies[:2]:
            assert up + down == 1.0


def test_cue_ignoring_policy_scores_half_over_many_seeds():
    env = TMazeEnv(corridor_length=3)
    n = 4000
    wins = sum(play(env, always(UP), seed)[0] for seed in range(n))
    cues_up = sum(env.reset(seed=seed)[1]["cue"] == 0 for seed in range(n))
    assert wins == cues_up  # always-up wins exactly where the cue said up
    # binomial(4000, 0.5): sd = 31.6; 5 sd either side (two-sided p < 1e-6)
    assert abs(wins - n / 2) <= 5 * np.sqrt(n * 0.25)


def test_one_wasted_step_means_the_junction_is_never_reached():
    env = TMazeEnv(corridor_length=5)
    for wasted in (BACK, UP, DOWN):
        policy = lambda obs, t, info, w=wasted: w if t == 2 else oracle_action(info["cue"], obs)  # noqa: E731
        ret, seen, steps = play(env, policy, 1)
        assert ret == 0.0 and steps == 6
        assert all(o[2] == 0.0 for o in seen[:-1])
    # forward at the junction is a wall, back moves away from it
    env.reset(seed=0, options={"cue": 0})
    for _ in range(5):
        env.step(FORWARD)
    obs, reward, terminated, truncated, _ = env.step(FORWARD)
    assert obs[2] == 1.0 and reward == 0.0 and not terminated and truncated


def test_registered_ids_and_bad_lengths():
    for length in STANDARD_LENGTHS:
        env = gym.make("aaren_rl.envs:" + tmaze_id(length))
        assert env.unwrapped.corridor_length == length
        env.close()
    assert register_tmaze(7) == "aaren_rl/TMaze-L7-v0"
    assert gym.make("aaren_rl/TMaze-L7-v0").unwrapped.horizon == 8
    assert gym.make("aaren_rl/TMaze-v0", corridor_length=3).unwrapped.corridor_length == 3
    with pytest.raises(ValueError, match="corridor_length must be >= 1"):
        register_tmaze(0)
    with pytest.raises(ValueError, match="options\\['cue'\\] is 'left'"):
        TMazeEnv(3).reset(options={"cue": "left"})


def test_repeat_first_is_flat_and_the_oracle_scores_one():
    env = make_repeat_first()
    assert env.observation_space.shape == (6,) and env.action_space == gym.spaces.Discrete(4)
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.sum() == 2.0 and obs[5] == 1.0  # suit + is_t0
    suit, total, steps, done = repeat_first_oracle(obs), 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(suit)
        assert obs[4] == 1.0  # no longer the first step
        total, steps, done = total + reward, steps + 1, terminated or truncated
    assert steps == 51 and total == pytest.approx(1.0)
    registered = gym.make("aaren_rl.envs:aaren_rl/RepeatFirst-v0")
    assert registered.observation_space.shape == (6,)


def test_task_specs_load_and_match_their_envs():
    for name in ("tmaze-l20", "tmaze-l100", "tmaze-l500", "tmaze-l1000", "repeat-first"):
        task = load_task(name)
        obs_space, act_space = task.env_spaces()
        assert isinstance(act_space, gym.spaces.Discrete)
        assert task.normalized_score(1.0) == pytest.approx(100.0)
    assert load_task("tmaze-l100").max_episode_steps == 101


def small_tmaze_task(tmp_path, length: int = 5):
    env_id = "aaren_rl.envs:" + register_tmaze(length)
    return task_from_dict(
        {
            "name": f"tmaze-l{length}",
            "env_id": env_id,
            "dataset": str(tmp_path / "tmaze.hdf5"),
            "max_episode_steps": length + 1,
            "reward_scale": 1.0,
            "target_returns": [1.0],
            "reference_scores": [0.0, 1.0],
            "reference_source": "success",
        },
        tmp_path / "tmaze.yaml",
    )


def test_tmaze_dataset_passes_the_d4rl_reader_and_returns_vary(tmp_path):
    task = small_tmaze_task(tmp_path)
    path, stats = build_dataset(task, n_episodes=200, mix=Mix(0.4, 0.4, 0.5), seed=1)
    dataset = task.load_dataset()  # the reader, with the env's spaces checked
    assert dataset.num_episodes == 200 and dataset.act_dim == 4 and dataset.obs_dim == 3
    np.testing.assert_array_equal(dataset.actions.sum(axis=1), 1.0)  # one-hot
    returns = dataset.episode_returns()
    assert set(np.unique(returns)) == {0.0, 1.0}
    assert 0.3 < returns.mean() < 0.9
    raw = read_d4rl_hdf5(path)
    assert raw["metadata/generator"] == "aaren-rl make-memory-dataset"
    # every successful episode turned the cued way at its last step
    for ep in dataset.episodes:
        if ep.total_return == 1.0:
            cue = int(np.argmax(ep.observations[0][:2]))
            assert int(np.argmax(ep.actions[-1])) == UP + cue
    assert stats["behaviours"]["oracle"]["mean_return"] == 1.0
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_dataset(task, n_episodes=5)


def test_repeat_first_dataset_passes_the_d4rl_reader(tmp_path):
    task = load_task("repeat-first")
    path = tmp_path / "rf.hdf5"
    build_dataset(task, out=path, n_episodes=30, seed=0)
    dataset = load_d4rl(path, env_spaces=task.env_spaces(), max_episode_steps=51)
    assert dataset.num_episodes == 30 and dataset.max_episode_length == 51
    assert dataset.episode_returns().std() > 0.1


def test_collect_is_reproducible_and_mix_is_checked():
    a, _ = collect("aaren_rl.envs:" + register_tmaze(4), 20, seed=3)
    b, _ = collect("aaren_rl.envs:" + register_tmaze(4), 20, seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="exceed 1"):
        Mix(0.7, 0.7)


def test_make_memory_dataset_cli(tmp_path, capsys):
    from aaren_rl.cli import main

    out = tmp_path / "t.hdf5"
    assert main(["make-memory-dataset", "tmaze-l20", "--episodes", "10", "--out", str(out)]) == 0
    assert "10 episodes, 210 transitions" in capsys.readouterr().out
    assert main(["make-memory-dataset", "tmaze-l20", "--episodes", "10", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_dataset_with_the_wrong_number_of_discrete_actions_is_a_clear_error(tmp_path):
    from aaren_rl.data.d4rl_writer import write_d4rl
    from aaren_rl.data.errors import DatasetError

    arrays, _ = collect("aaren_rl.envs:" + register_tmaze(4), 3, seed=0)
    arrays["actions"] = arrays["actions"][:, :3]
    path = write_d4rl(tmp_path / "three.hdf5", arrays)
    with pytest.raises(DatasetError, match=r"'actions'.*size 3.*Discrete\(4\)"):
        load_d4rl(path, env_spaces=TMazeEnv(4))


def test_an_env_without_a_scripted_oracle_is_a_clear_error():
    with pytest.raises(ValueError, match="CartPole-v1: no scripted oracle"):
        collect("CartPole-v1", 2)
