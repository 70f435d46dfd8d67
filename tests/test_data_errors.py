"""Bad input: each error names the file, the key and what was expected."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import hand_example, write_d4rl
from gymnasium.spaces import Box

from aaren_rl.data.d4rl_reader import load_d4rl, read_d4rl_hdf5
from aaren_rl.data.errors import DatasetError
from aaren_rl.data.samplers import PrefixSampler
from aaren_rl.data.trajectories import TrajectoryDataset


def _error(path, **arrays) -> str:
    write_d4rl(path, **arrays)
    with pytest.raises(DatasetError) as err:
        load_d4rl(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_missing_key(tmp_path):
    arrays = hand_example()
    del arrays["actions"]
    message = _error(tmp_path / "no_actions.hdf5", **arrays)
    assert "'actions'" in message and "missing" in message
    assert "observations" in message  # lists what the file holds


def test_arrays_of_different_lengths(tmp_path):
    arrays = hand_example()
    arrays["rewards"] = arrays["rewards"][:5]
    message = _error(tmp_path / "short.hdf5", **arrays)
    assert "'rewards'" in message and "5 entries" in message and "7" in message


def test_terminals_of_different_length(tmp_path):
    arrays = hand_example()
    arrays["timeouts"] = np.zeros(9, dtype=bool)
    message = _error(tmp_path / "long_flags.hdf5", **arrays)
    assert "'timeouts'" in message and "9 entries" in message


def test_nan_in_observations(tmp_path):
    arrays = hand_example()
    arrays["observations"][4, 1] = np.nan
    message = _error(tmp_path / "nan.hdf5", **arrays)
    assert "'observations'" in message and "row 4" in message and "nan" in message
    assert "finite" in message


def test_inf_in_rewards(tmp_path):
    arrays = hand_example()
    arrays["rewards"][2] = -np.inf
    message = _error(tmp_path / "inf.hdf5", **arrays)
    assert "'rewards'" in message and "row 2" in message and "inf" in message


def test_nan_in_next_observations(tmp_path):
    arrays = hand_example()
    nxt = arrays["observations"].copy()
    nxt[6, 0] = np.inf
    path = write_d4rl(tmp_path / "nan_next.hdf5", next_observations=nxt, **arrays)
    with pytest.raises(DatasetError) as err:
        read_d4rl_hdf5(path)
    message = str(err.value)
    assert str(path) in message and "'next_observations'" in message and "row 6" in message
    # load_d4rl reads only the arrays episodes are made of, so the file still loads
    assert load_d4rl(path).num_transitions == 7


def test_empty_dataset(tmp_path):
    empty = {
        "observations": np.zeros((0, 3), np.float32),
        "actions": np.zeros((0, 1), np.float32),
        "rewards": np.zeros(0, np.float32),
        "terminals": np.zeros(0, bool),
        "timeouts": np.zeros(0, bool),
    }
    message = _error(tmp_path / "empty.hdf5", **empty)
    assert "'observations'" in message and "empty" in message


def test_shapes_that_do_not_match_the_environment(tmp_path):
    path = write_d4rl(tmp_path / "hand.hdf5", **hand_example())  # obs_dim 2, act_dim 2
    hopper = (Box(-np.inf, np.inf, (11,)), Box(-1.0, 1.0, (3,)))
    with pytest.raises(DatasetError) as err:
        load_d4rl(path, env_spaces=hopper)
    message = str(err.value)
    assert str(path) in message and "'observations'" in message
    assert "size 2" in message and "(11,)" in message
    fits_obs = (Box(-np.inf, np.inf, (2,)), Box(-1.0, 1.0, (3,)))
    with pytest.raises(DatasetError, match="'actions'.*size 2.*\\(3,\\)"):
        load_d4rl(path, env_spaces=fits_obs)
    both_fit = (Box(-np.inf, np.inf, (2,)), Box(-2.0, 2.0, (2,)))  # actions up to 1.3
    assert load_d4rl(path, env_spaces=both_fit).num_episodes == 3


def test_file_that_is_not_hdf5(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("observations,actions\n1,2\n")
    with pytest.raises(DatasetError) as err:
        read_d4rl_hdf5(path)
    message = str(err.value)
    assert str(path) in message and "not an HDF5 file" in message and "observations" in message


def test_flags_that_are_not_0_or_1(tmp_path):
    arrays = hand_example()
    arrays["terminals"] = np.array([0, 0, 2, 0, 0, 0, 0])
    message = _error(tmp_path / "flags.hdf5", **arrays)
    assert "'terminals'" in message and "index 2" in message


def test_wrong_rank_and_group_instead_of_array(tmp_path):
    arrays = hand_example()
    arrays["observations"] = np.zeros((7, 2, 2), np.float32)
    message = _error(tmp_path / "rank.hdf5", **arrays)
    assert "'observations'" in message and "(7, 2, 2)" in message
    path = tmp_path / "group.hdf5"
    arrays = hand_example()
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key != "rewards":
                f[key] = value
        f["rewards/dense"] = arrays["rewards"]
    with pytest.raises(DatasetError, match="'rewards'.*group"):
        read_d4rl_hdf5(path)


def test_infos_of_the_wrong_length(tmp_path):
    arrays = hand_example()
    path = tmp_path / "infos.hdf5"
    write_d4rl(path, **arrays, **{"infos/qpos": np.zeros((3, 2))})
    with pytest.raises(DatasetError, match="'infos/qpos'.*7 rows"):
        read_d4rl_hdf5(path)


def test_from_arrays_names_its_source():
    arrays = hand_example()
    arrays["actions"] = arrays["actions"][:6]
    with pytest.raises(DatasetError, match="my-buffer: key 'actions'"):
        TrajectoryDataset.from_arrays(**arrays, source="my-buffer")


def test_full_mode_refuses_episodes_longer_than_max_len():
    ds = TrajectoryDataset.from_arrays(**hand_example(), source="hand")  # longest episode: 3
    with pytest.raises(DatasetError) as err:
        PrefixSampler(ds, max_len=2, mode="full")
    message = str(err.value)
    assert "hand" in message and "3 steps" in message and "max_len=2" in message
    assert "mode='prefix'" in message
    # at max_len=3 it is accepted: whole episodes, padded to the longest one drawn (or max_len)
    batch = PrefixSampler(ds, max_len=3, mode="full", seed=0).sample(4)
    assert batch.mask.shape[1] == batch.mask.sum(1).max() <= 3
    fixed = PrefixSampler(ds, max_len=3, mode="full", seed=0, pad_to_max_len=True).sample(4)
    assert fixed.mask.shape[1] == 3


def test_episodes_of_different_sizes():
    ds = TrajectoryDataset.from_arrays(**hand_example())
    other = TrajectoryDataset.from_arrays(
        np.zeros((2, 5)), np.zeros((2, 2)), np.zeros(2), np.array([0, 1]), source="other"
    )
    with pytest.raises(DatasetError, match="mixed: key 'observations'.*different shapes"):
        TrajectoryDataset(ds.episodes + other.episodes, source="mixed")
