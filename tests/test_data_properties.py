"""Property-based tests (hypothesis) of the episode split, the reader and the statistics."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from data_helpers import write_d4rl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aaren_rl.data.d4rl_reader import load_d4rl
from aaren_rl.data.trajectories import TrajectoryDataset

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def transitions(draw, max_n: int = 50):
    n = draw(st.integers(1, max_n))
    flags = st.lists(st.booleans(), min_size=n, max_size=n)
    terminals = np.array(draw(flags), dtype=bool)
    timeouts = np.array(draw(flags), dtype=bool)
    # integer-valued rewards keep every sum exact, so the checks below can be exact
    rewards = np.array(draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n)), np.float32)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32) * 10,
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
    }


def _check_partition(ds: TrajectoryDataset, arrays: dict, max_steps: int | None = None) -> None:
    n = arrays["rewards"].shape[0]
    lengths = [len(e) for e in ds.episodes]
    assert sum(lengths) == ds.num_transitions == n
    assert min(lengths) >= 1
    # episodes cover the transitions exactly, in order
    np.testing.assert_array_equal(
        np.concatenate([e.observations for e in ds.episodes]), arrays["observations"]
    )
    np.testing.assert_array_equal(
        np.concatenate([e.actions for e in ds.episodes]), arrays["actions"]
    )
    np.testing.assert_array_equal(
        np.concatenate([e.rewards for e in ds.episodes]), arrays["rewards"]
    )
    ends = np.cumsum(lengths) - 1
    flag = arrays["terminals"] | arrays["timeouts"]
    for i, (episode, end) in enumerate(zip(ds.episodes, ends, strict=True)):
        start = end - len(episode) + 1
        # no episode runs through an end flag
        assert not flag[start:end].any()
        if max_steps is not None:
            assert len(episode) <= max_steps
        assert episode.terminated == bool(arrays["terminals"][end])
        cut_by_limit = max_steps is not None and len(episode) == max_steps and not flag[end]
        ended_by_file = i == len(ds.episodes) - 1 and not flag[end]
        assert episode.truncated == bool(arrays["timeouts"][end] or cut_by_limit or ended_by_file)
        if not (cut_by_limit or ended_by_file):
            assert flag[end]  # every other episode ends on a flag


@SETTINGS
@given(transitions())
def test_episodes_partition_the_transitions(arrays):
    _check_partition(TrajectoryDataset.from_arrays(**arrays), arrays)


@SETTINGS
@given(transitions(), st.integers(1, 7))
def test_max_episode_steps_still_partitions(arrays, max_steps):
    ds = TrajectoryDataset.from_arrays(**arrays, max_episode_steps=max_steps, cut_unflagged=True)
    _check_partition(ds, arrays, max_steps)


@SETTINGS
@given(transitions())
def test_returns_to_go_are_suffix_sums(arrays):
    ds = TrajectoryDataset.from_arrays(**arrays)
    returns = ds.episode_returns()
    for episode, rtg, total in zip(ds.episodes, ds.returns_to_go, returns, strict=True):
        assert rtg.shape == (len(episode),) and rtg.dtype == np.float32
        assert rtg[0] == total == episode.rewards.sum()
        assert rtg[-1] == episode.rewards[-1]
        np.testing.assert_array_equal(rtg[:-1] - rtg[1:], episode.rewards[:-1])


@SETTINGS
@given(transitions())
def test_state_statistics_match_numpy(arrays):
    ds = TrajectoryDataset.from_arrays(**arrays)
    obs = arrays["observations"].astype(np.float64)
    np.testing.assert_allclose(ds.state_mean, obs.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ds.state_std, np.maximum(obs.std(axis=0), 1e-6), rtol=1e-4, atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(transitions(max_n=30))
def test_hdf5_round_trip_equals_from_arrays(arrays):
    with tempfile.TemporaryDirectory() as folder:
        path = write_d4rl(Path(folder) / "d.hdf5", **arrays)
        from_file = load_d4rl(path)
    direct = TrajectoryDataset.from_arrays(**arrays)
    assert [len(e) for e in from_file.episodes] == [len(e) for e in direct.episodes]
    assert [(e.terminated, e.truncated) for e in from_file.episodes] == [
        (e.terminated, e.truncated) for e in direct.episodes
    ]
    np.testing.assert_array_equal(from_file.rtg, direct.rtg)
