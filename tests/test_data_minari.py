"""Minari round trip: a dataset written with Minari's own API loads with the same episodes."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.spaces import Box

from aaren_rl.data.errors import DatasetError
from aaren_rl.data.minari_reader import load_minari

minari = pytest.importorskip("minari")
EpisodeBuffer = pytest.importorskip("minari.data_collector").EpisodeBuffer

OBS_DIM, ACT_DIM = 3, 2


def _episode(rng: np.random.Generator, steps: int, end: str) -> EpisodeBuffer:
    """One Minari episode buffer: ``steps + 1`` observations, ``steps`` of everything else."""
    terminations = np.zeros(steps, dtype=bool)
    truncations = np.zeros(steps, dtype=bool)
    if end == "terminated":
        terminations[-1] = True
    elif end == "truncated":
        truncations[-1] = True
    return EpisodeBuffer(
        observations=rng.normal(size=(steps + 1, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(steps, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=steps),
        terminations=terminations,
        truncations=truncations,
    )


@pytest.mark.filterwarnings("ignore:.*(eval_env|env_spec|code_permalink|author).*:UserWarning")
def test_minari_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    buffers = [
        _episode(rng, 5, "terminated"),
        _episode(rng, 8, "truncated"),
        _episode(rng, 1, "terminated"),
        _episode(rng, 4, "neither"),  # cut off by the end of collection
    ]
    minari.create_dataset_from_buffers(
        "test/roundtrip-v0",
        buffers,
        observation_space=Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        algorithm_name="hand-written buffers",
        description="round-trip test of aaren_rl.data.minari_reader",
    )
    ds = load_minari("test/roundtrip-v0")

    assert ds.source == "minari:test/roundtrip-v0"
    assert (ds.obs_dim, ds.act_dim) == (OBS_DIM, ACT_DIM)
    assert [len(e) for e in ds.episodes] == [5, 8, 1, 4]
    assert [(e.terminated, e.truncated) for e in ds.episodes] == [
        (True, False),
        (False, True),
        (True, False),
        (False, True),
    ]
    for episode, buffer in zip(ds.episodes, buffers, strict=True):
        # Minari's T + 1 observations: the state before action t is observations[t]
        np.testing.assert_array_equal(episode.observations, buffer.observations[:-1])
        np.testing.assert_array_equal(episode.actions, buffer.actions)
        np.testing.assert_allclose(episode.rewards, buffer.rewards.astype(np.float32))
    for rtg, buffer in zip(ds.returns_to_go, buffers, strict=True):
        expected = np.cumsum(buffer.rewards[::-1])[::-1]
        np.testing.assert_allclose(rtg, expected, rtol=1e-5, atol=1e-5)
    all_obs = np.concatenate([b.observations[:-1] for b in buffers]).astype(np.float64)
    np.testing.assert_allclose(ds.state_mean, all_obs.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.state_std, all_obs.std(axis=0), rtol=1e-5)


def test_missing_minari_dataset_is_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_minari("mujoco/hopper/medium-v0")
    message = str(err.value)
    assert str(tmp_path / "mujoco/hopper/medium-v0") in message
    assert "MINARI_DATASETS_PATH" in message and "minari download" in message
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing created
