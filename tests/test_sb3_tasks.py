"""The small SB3 tasks: MaskedRecall-v0 (illegal moves), PixelRecall-v0 (a pixel cue) and the
OneHot wrapper, each against what its docstring promises."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env

from aaren_rl.sb3.envs import OneHot, register_memory_envs
from aaren_rl.sb3.masked_recall import MaskedRecallEnv
from aaren_rl.sb3.pixel_recall import PixelRecallEnv

register_memory_envs()


def test_masked_recall_rules():
    env = MaskedRecallEnv()
    check_env(env, warn=False)
    obs, _ = env.reset(seed=0)
    cue = env.cue
    assert obs[:6].argmax() == cue and obs[:6].sum() == 1  # the cue, at the first step only
    for _ in range(7):
        legal = env.action_masks()
        assert legal.sum() == 2 and np.array_equal(obs[6:12], legal)
        obs, reward, done, _, info = env.step(int(np.flatnonzero(legal)[0]))
        assert reward == 0 and not done and not info["illegal"]
        assert obs[:6].sum() == 0
    legal = env.action_masks()
    assert legal[cue] and legal.sum() == 3 and obs[-2] == 1  # the answer step
    _, reward, done, _, _ = env.step(cue)
    assert reward == 1 and done
    env = MaskedRecallEnv()  # a fresh count (check_env moved at random)
    env.reset(seed=1)
    illegal = int(np.flatnonzero(~env.action_masks())[0])
    _, reward, done, _, info = env.step(illegal)
    assert (reward, done, info["illegal"], env.illegal_moves) == (-1, True, True, 1)


def test_masked_recall_wrong_answer_scores_zero():
    env = MaskedRecallEnv(length=2)
    env.reset(seed=3)
    env.step(int(np.flatnonzero(env.action_masks())[0]))
    wrong = next(a for a in np.flatnonzero(env.action_masks()) if a != env.cue)
    assert env.step(int(wrong))[1:3] == (0.0, True)


@pytest.mark.parametrize("n_cues", [2, 4])
def test_pixel_recall_shows_the_cue_first_and_scores_the_last_answer(n_cues):
    env = PixelRecallEnv(n_cues=n_cues)
    check_env(env, warn=False)
    seen = set()
    for seed in range(40):
        img, _ = env.reset(seed=seed)
        assert img.shape == (36, 36, 1) and img.dtype == np.uint8
        bright = np.argwhere(img[..., 0] == 255)
        cells = {(r.start, c.start) for r, c in map(env._cell, range(n_cues))}
        rows, cols = env._cell(env.cue)
        assert len(cells) == n_cues and len(bright) == 9 * 9  # one 9x9 square: the cue's
        assert bright[:, 0].min() == rows.start and bright[:, 1].min() == cols.start
        seen.add(env.cue)
        for _ in range(4):  # the middle: noise only
            img, reward, done, _, _ = env.step(0)
            assert img.max() <= 40 and reward == 0 and not done
        img, reward, done, _, _ = env.step(0)
        assert (img[16:20] == 255).all() and reward == 0 and not done  # the question
        _, reward, done, _, _ = env.step(env.cue)
        assert reward == 1 and done
    assert seen == set(range(n_cues))


def test_one_hot():
    env = OneHot(gym.make("FrozenLake-v1"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16,) and obs[0] == 1 and obs.sum() == 1
    with pytest.raises(ValueError, match="Discrete"):
        OneHot(gym.make("CartPole-v1"))


def test_one_hot_of_a_multi_discrete_observation_is_the_one_hots_side_by_side():
    pytest.importorskip("popgym")
    register_memory_envs()
    env = OneHot(gym.make("popgym-CountRecallEasy-v0"))
    raw_space = env.env.observation_space
    assert env.observation_space.shape == (int(raw_space.nvec.sum()),)
    obs, _ = env.reset(seed=0)
    raw = env.env.unwrapped.last_obs  # [dealt card, query card]
    sizes = raw_space.nvec
    expected = np.zeros(int(sizes.sum()), dtype=np.float32)
    expected[raw[0]] = expected[sizes[0] + raw[1]] = 1.0
    np.testing.assert_array_equal(obs, expected)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        assert obs.sum() == 2 and obs[: sizes[0]].sum() == 1
    tuple_env = OneHot(gym.make("popgym-AutoencodeEasy-v0"))  # Tuple(Discrete(2), Discrete(4))
    obs, _ = tuple_env.reset(seed=0)
    assert obs.shape == (6,) and obs[:2].sum() == 1 and obs[2:].sum() == 1
