"""Window and prefix samplers: shapes, right padding, timesteps, mask, seeds, distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aaren_rl.data.samplers import PrefixSampler, SequenceBatch, WindowSampler
from aaren_rl.data.trajectories import TrajectoryDataset

LENGTHS = (3, 5, 10)


def tagged_dataset(lengths=LENGTHS) -> TrajectoryDataset:
    """Observation = (episode index, step index, 1): every sampled row says where it came from."""
    obs, act, rew, term = [], [], [], []
    for e, n in enumerate(lengths):
        steps = np.arange(n)
        obs.append(np.stack([np.full(n, e), steps, np.ones(n)], axis=1))
        act.append(np.stack([steps / 10.0, -steps / 10.0], axis=1))
        rew.append(100.0 * e + steps + 1)
        term.append(steps == n - 1)
    return TrajectoryDataset.from_arrays(
        np.concatenate(obs), np.concatenate(act), np.concatenate(rew), np.concatenate(term), None
    )


def _check_rows(ds: TrajectoryDataset, batch: SequenceBatch) -> None:
    """Every real step matches the dataset; padding is zeros after the real steps."""
    b, k = batch.mask.shape
    assert batch.observations.shape == (b, k, ds.obs_dim)
    assert batch.actions.shape == (b, k, ds.act_dim)
    for name in ("rewards", "returns_to_go", "timesteps"):
        assert getattr(batch, name).shape == (b, k)
    assert batch.observations.dtype == batch.actions.dtype == np.float32
    assert batch.rewards.dtype == batch.returns_to_go.dtype == np.float32
    assert batch.timesteps.dtype == np.int64 and batch.mask.dtype == np.bool_
    for row in range(b):
        n = int(batch.mask[row].sum())
        assert n >= 1
        assert batch.mask[row, :n].all() and not batch.mask[row, n:].any()  # right padding
        episode = int(batch.observations[row, 0, 0])
        t = batch.timesteps[row, :n]
        np.testing.assert_array_equal(t, np.arange(t[0], t[0] + n))  # consecutive steps
        np.testing.assert_array_equal(batch.observations[row, :n, 1], t)
        np.testing.assert_array_equal(batch.observations[row, :n, 0], episode)
        np.testing.assert_array_equal(batch.actions[row, :n], ds.episodes[episode].actions[t])
        np.testing.assert_array_equal(batch.rewards[row, :n], ds.episodes[episode].rewards[t])
        np.testing.assert_array_equal(batch.returns_to_go[row, :n], ds.returns_to_go[episode][t])
        for name in ("observations", "actions", "rewards", "returns_to_go", "timesteps"):
            assert not np.any(getattr(batch, name)[row, n:])


def test_window_sampler_shapes_and_contents():
    ds = tagged_dataset()
    batch = WindowSampler(ds, context=4, seed=0).sample(256)
    assert batch.mask.shape == (256, 4)
    _check_rows(ds, batch)
    lengths = batch.mask.sum(axis=1)
    episodes = batch.observations[:, 0, 0].astype(int)
    starts = batch.timesteps[:, 0]
    ep_len = np.array(LENGTHS)[episodes]
    # a window runs `context` steps or to the episode's end
    np.testing.assert_array_equal(lengths, np.minimum(4, ep_len - starts))
    assert (batch.timesteps[:, 0] > 0).any()  # windows start mid-episode too


def test_window_returns_to_go_by_hand():
    ds = tagged_dataset()  # episode 1 has rewards 101..105
    np.testing.assert_array_equal(ds.returns_to_go[1], [515, 414, 312, 209, 105])
    batch = WindowSampler(ds, context=3, seed=1).sample(200)
    rows = np.flatnonzero((batch.observations[:, 0, 0] == 1) & (batch.timesteps[:, 0] == 3))
    assert rows.size
    np.testing.assert_array_equal(batch.returns_to_go[rows[0]], [209, 105, 0])
    np.testing.assert_array_equal(batch.mask[rows[0]], [True, True, False])


def test_prefix_sampler_starts_at_step_zero():
    ds = tagged_dataset()
    sampler = PrefixSampler(ds, max_len=6, mode="prefix", seed=0)
    batch = sampler.sample(300)
    _check_rows(ds, batch)
    assert (batch.timesteps[:, 0] == 0).all()
    lengths = batch.mask.sum(axis=1)
    ep_len = np.array(LENGTHS)[batch.observations[:, 0, 0].astype(int)]
    assert (lengths >= 1).all() and (lengths <= np.minimum(ep_len, 6)).all()
    assert batch.mask.shape[1] == lengths.max()  # padded to the longest row in the batch
    # the full range of lengths occurs: L is uniform in [1, min(T, max_len)]
    assert set(lengths[ep_len == 10]) == set(range(1, 7))
    assert set(lengths[ep_len == 3]) == {1, 2, 3}
    fixed = PrefixSampler(ds, max_len=12, seed=0, pad_to_max_len=True).sample(5)
    assert fixed.mask.shape == (5, 12)
    _check_rows(ds, fixed)


def test_prefix_sampler_full_episodes():
    ds = tagged_dataset()
    batch = PrefixSampler(ds, max_len=10, mode="full", seed=0).sample(64)
    _check_rows(ds, batch)
    ep_len = np.array(LENGTHS)[batch.observations[:, 0, 0].astype(int)]
    np.testing.assert_array_equal(batch.mask.sum(axis=1), ep_len)
    assert (batch.timesteps[:, 0] == 0).all()
    # a whole episode's first return-to-go is its return
    np.testing.assert_array_equal(
        batch.returns_to_go[:, 0], ds.episode_returns()[batch.observations[:, 0, 0].astype(int)]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda ds, seed: WindowSampler(ds, context=4, seed=seed),
        lambda ds, seed: PrefixSampler(ds, max_len=8, seed=seed),
        lambda ds, seed: PrefixSampler(ds, max_len=10, mode="full", seed=seed),
    ],
)
def test_seeded_reproducibility_and_resume(make):
    ds = tagged_dataset()
    a, b, c = make(ds, 7), make(ds, 7), make(ds, 8)
    first_a, first_b, first_c = a.sample(32), b.sample(32), c.sample(32)
    for name in ("observations", "timesteps", "mask"):
        np.testing.assert_array_equal(getattr(first_a, name), getattr(first_b, name))
    assert not (
        first_a.mask.shape == first_c.mask.shape
        and np.array_equal(first_a.observations, first_c.observations)
    )
    # save mid-run, continue, then restore into a fresh sampler: the same next batches
    saved = a.state_dict()
    continued = [a.sample(16) for _ in range(3)]
    resumed = make(ds, 12345)
    resumed.load_state_dict(saved)
    for expected in continued:
        got = resumed.sample(16)
        np.testing.assert_array_equal(got.observations, expected.observations)
        np.testing.assert_array_equal(got.mask, expected.mask)


def test_episodes_drawn_in_proportion_to_length():
    ds = tagged_dataset((1, 3, 6))
    batch = WindowSampler(ds, context=1, seed=0).sample(30_000)
    counts = np.bincount(batch.observations[:, 0, 0].astype(int), minlength=3)
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.3, 0.6], atol=0.015)
    # within an episode the window start is uniform
    starts = batch.timesteps[batch.observations[:, 0, 0] == 2, 0]
    np.testing.assert_allclose(np.bincount(starts, minlength=6) / starts.size, 1 / 6, atol=0.02)


def test_to_torch():
    ds = tagged_dataset()
    batch = PrefixSampler(ds, max_len=5, seed=0).sample(4)
    tensors = batch.to_torch("cpu")
    assert set(tensors) == {
        "observations",
        "actions",
        "rewards",
        "returns_to_go",
        "timesteps",
        "mask",
        "episodes",  # each row's episode index, named by errors about the batch
    }
    assert tensors["observations"].dtype == torch.float32
    assert tensors["timesteps"].dtype == torch.int64 and tensors["mask"].dtype == torch.bool
    for name, tensor in tensors.items():
        np.testing.assert_array_equal(tensor.numpy(), getattr(batch, name))


def test_bad_sampler_arguments():
    ds = tagged_dataset()
    with pytest.raises(ValueError, match="context"):
        WindowSampler(ds, context=0)
    with pytest.raises(ValueError, match="mode"):
        PrefixSampler(ds, max_len=4, mode="windows")
    with pytest.raises(ValueError, match="batch_size"):
        WindowSampler(ds, context=2).sample(0)
