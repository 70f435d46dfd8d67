"""Data errors that used to be raw or silent: corrupt chunks, empty vectors, float32 overflow,
numpy reprs in messages, and the trailing unfinished episode in ``summary()``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import hand_example, write_d4rl

from aaren_rl.data.d4rl_reader import load_d4rl, read_d4rl_hdf5
from aaren_rl.data.errors import DatasetError
from aaren_rl.data.trajectories import TrajectoryDataset


def _one_line_error(fn, *args, **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    assert "np." not in message, f"numpy repr in the message: {message}"
    return err.value


def write_corrupt_chunk(path, key="observations", chunk=1):
    """A D4RL file whose ``key`` is a chunked gzip dataset, then one chunk's bytes flipped on
    disk (the zlib stream's checksum no longer matches, so HDF5 cannot inflate it)."""
    rng = np.random.default_rng(0)
    n = 2000
    arrays = {
        "observations": rng.normal(size=(n, 8)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": (np.arange(n) % 500 == 499),
        "infos/qpos": rng.normal(size=(n, 3)).astype(np.float32),
    }
    with h5py.File(path, "w") as f:
        for name, value in arrays.items():
            rows = (500,) + value.shape[1:]
            f.create_dataset(name, data=value, chunks=rows, compression="gzip")
        info = f[key].id.get_chunk_info(chunk)
        offset, size = info.byte_offset, info.size
    start, length = offset + size // 3, max(1, min(64, size // 3))  # inside the chunk
    with open(path, "r+b") as raw:
        raw.seek(start)
        block = raw.read(length)
        raw.seek(start)
        raw.write(bytes(b ^ 0xFF for b in block))
    return path


@pytest.mark.parametrize("key", ["observations", "rewards", "terminals"])
def test_corrupt_compressed_chunk_is_a_dataset_error_naming_file_and_key(tmp_path, key):
    path = write_corrupt_chunk(tmp_path / "corrupt.hdf5", key)
    err = _one_line_error(load_d4rl, path)
    message = str(err)
    assert str(path) in message and f"'{key}'" in message and "corrupt" in message
    assert err.file == str(path) and err.key == key
    assert err.__cause__ is None and err.__suppress_context__  # no 11-frame h5py chain


def test_corrupt_chunk_in_infos_names_the_info_key(tmp_path):
    path = write_corrupt_chunk(tmp_path / "corrupt_infos.hdf5", "infos/qpos", chunk=2)
    assert load_d4rl(path).num_transitions == 2000  # episodes do not need infos
    err = _one_line_error(read_d4rl_hdf5, path)
    assert str(path) in str(err) and "'infos/qpos'" in str(err)


@pytest.mark.parametrize("key", ["observations", "actions"])
def test_vectors_of_zero_features_are_an_error(tmp_path, key):
    arrays = hand_example()
    arrays[key] = np.zeros((7, 0), np.float32)
    path = write_d4rl(tmp_path / "zero_dim.hdf5", **arrays)
    message = str(_one_line_error(load_d4rl, path))
    assert str(path) in message and f"'{key}'" in message and "(7, 0)" in message
    assert "0 features" in message


@pytest.mark.parametrize("key", ["observations", "actions", "rewards", "next_observations"])
def test_values_past_float32_say_they_overflow(tmp_path, key):
    arrays = {
        k: np.asarray(v, np.float64) if k != "terminals" else v for k, v in hand_example().items()
    }
    arrays["next_observations"] = arrays["observations"] + 1.0
    target = arrays[key]
    if target.ndim == 2:
        target[3, 1] = -1e39
    else:
        target[3] = -1e39
    path = write_d4rl(tmp_path / "big.hdf5", **arrays)
    message = str(_one_line_error(read_d4rl_hdf5, path))
    assert str(path) in message and f"'{key}'" in message
    assert "-1e+39 at row 3" in message and "overflows float32" in message
    assert "inf" not in message.split("Fix")[0].replace("finite", "")


def test_float32_limits_themselves_load(tmp_path):
    arrays = {k: np.asarray(v, np.float64) for k, v in hand_example().items()}
    arrays["observations"][2, 0] = float(np.finfo(np.float32).max)
    data = load_d4rl(write_d4rl(tmp_path / "edge.hdf5", **arrays))
    assert data.observations[2, 0] == np.finfo(np.float32).max


def test_messages_print_plain_numbers(tmp_path):
    arrays = hand_example()
    arrays["terminals"] = np.array([0, 0, 2, 0, 0, 0, 0], dtype=np.int64)
    message = str(_one_line_error(load_d4rl, write_d4rl(tmp_path / "flags.hdf5", **arrays)))
    assert "holds 2 at index 2" in message
    arrays = hand_example()
    arrays["timeouts"] = np.array([0, 0, 0, 0, 0.5, 0, 0])
    message = str(_one_line_error(load_d4rl, write_d4rl(tmp_path / "half.hdf5", **arrays)))
    assert "holds 0.5 at index 4" in message
    arrays = hand_example()
    arrays["observations"] = arrays["observations"].astype(np.float64)
    arrays["observations"][5, 0] = np.nan
    message = str(_one_line_error(load_d4rl, write_d4rl(tmp_path / "nan.hdf5", **arrays)))
    assert "holds nan at row 5" in message


def test_summary_counts_the_trailing_unfinished_episode_apart():
    ds = TrajectoryDataset.from_arrays(**hand_example(), source="hand")
    # episodes: 0-1 terminal, 2-4 timeout, 5-6 cut off by the end of the data
    summary = ds.summary()
    assert (summary["terminated"], summary["truncated"], summary["unfinished"]) == (1, 1, 1)
    assert [e.unfinished for e in ds.episodes] == [False, False, True]
    assert ds.episodes[-1].truncated  # still not terminated, so samplers treat it as cut
    # rebuilt from its episodes, the dataset keeps the count
    assert TrajectoryDataset(ds.episodes).summary()["unfinished"] == 1


def test_summary_with_a_time_limit_and_no_timeouts():
    arrays = hand_example()
    arrays.pop("timeouts")
    arrays["terminals"] = np.zeros(7, dtype=bool)
    # 7 steps cut at 3: pieces of 3, 3 (time limit) and 1 (the data ends mid-episode)
    summary = TrajectoryDataset.from_arrays(**arrays, max_episode_steps=3).summary()
    assert (summary["truncated"], summary["unfinished"]) == (2, 1)
    # cut at 7, the one episode reaches the limit exactly: a timeout, not unfinished
    summary = TrajectoryDataset.from_arrays(**arrays, max_episode_steps=7).summary()
    assert (summary["truncated"], summary["unfinished"]) == (1, 0)
    # a file whose last step is flagged has no unfinished episode
    arrays = hand_example()
    arrays["timeouts"][-1] = True
    summary = TrajectoryDataset.from_arrays(**arrays).summary()
    assert (summary["terminated"], summary["truncated"], summary["unfinished"]) == (1, 2, 0)
