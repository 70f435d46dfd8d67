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
    summary = TrajectoryDataset.from_arrays(
        **arrays, max_episode_steps=3, cut_unflagged=True
    ).summary()
    assert (summary["truncated"], summary["unfinished"]) == (2, 1)
    # cut at 7, the one episode reaches the limit exactly: a timeout, not unfinished
    summary = TrajectoryDataset.from_arrays(**arrays, max_episode_steps=7).summary()
    assert (summary["truncated"], summary["unfinished"]) == (1, 0)
    # a file whose last step is flagged has no unfinished episode
    arrays = hand_example()
    arrays["timeouts"][-1] = True
    summary = TrajectoryDataset.from_arrays(**arrays).summary()
    assert (summary["terminated"], summary["truncated"], summary["unfinished"]) == (1, 2, 0)


# ------------------------------------------------------------------ wrong but well-formed data


def _episodes_without_flags(n_episodes: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of 200..1000 steps written back to back with no terminals and no timeouts."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 1001, size=n_episodes).sum())
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
    }


def test_a_file_without_any_episode_end_is_an_error_unless_asked_to_cut(tmp_path):
    path = write_d4rl(tmp_path / "unflagged.hdf5", **_episodes_without_flags())
    err = _one_line_error(load_d4rl, path, max_episode_steps=1000)
    message = str(err)
    assert message.startswith(f"{path}: key 'terminals': no step of the ")
    assert "timeouts all 0 or absent" in message and "cannot be delimited" in message
    assert "episode_ends: time-limit" in message
    # asked for: one stream cut every 1000 rows
    data = load_d4rl(path, max_episode_steps=1000, cut_unflagged=True)
    assert set(data.episode_lengths[:-1].tolist()) == {1000}
    # one flag anywhere is enough to read the file as before
    arrays = _episodes_without_flags()
    arrays["timeouts"] = np.zeros(len(arrays["rewards"]), dtype=bool)
    arrays["timeouts"][499] = True
    data = load_d4rl(write_d4rl(tmp_path / "one.hdf5", **arrays), max_episode_steps=1000)
    assert data.episode_lengths[0] == 500


def test_task_spec_episode_ends_time_limit_reads_an_unflagged_file(tmp_path):
    import yaml

    from aaren_rl.data.tasks import load_task

    path = write_d4rl(tmp_path / "unflagged.hdf5", **_episodes_without_flags(5))
    spec = {
        "name": "stream",
        "env_id": "Pendulum-v1",
        "dataset": str(path),
        "max_episode_steps": 200,
        "reward_scale": 0.01,
        "target_returns": [0],
        "reference_scores": [-1000.0, 0.0],
        "reference_source": "hand",
    }
    task = tmp_path / "stream.yaml"
    task.write_text(yaml.safe_dump(spec))
    _one_line_error(load_task(task).load_dataset, check_spaces=False)
    task.write_text(yaml.safe_dump({**spec, "episode_ends": "time-limit"}))
    assert load_task(task).load_dataset(check_spaces=False).episode_lengths[0] == 200
    task.write_text(yaml.safe_dump({**spec, "episode_ends": "never"}))
    assert "episode_ends" in str(_one_line_error(load_task, task))


def test_actions_outside_the_env_box_are_an_error_naming_row_and_range(tmp_path):
    import gymnasium as gym

    arrays = hand_example()
    spaces = (gym.spaces.Box(-np.inf, np.inf, (2,)), gym.spaces.Box(-1.0, 1.0, (2,)))
    arrays["actions"] = arrays["actions"] * 1000.0  # up to 1300
    path = write_d4rl(tmp_path / "scaled.hdf5", **arrays)
    message = str(_one_line_error(load_d4rl, path, env_spaces=spaces))
    assert message.startswith(f"{path}: key 'actions': holds 100 at row 0 (entry 1)")
    assert "range [-1, 1]" in message and "largest magnitude 1300" in message
    # rounding past the bound (0.1% of the range) is fine; the hand example's 1.3 is not
    arrays["actions"] = np.clip(hand_example()["actions"], -1.0, 1.0) * 1.0005
    load_d4rl(write_d4rl(tmp_path / "rounded.hdf5", **arrays), env_spaces=spaces)


def test_returns_to_go_past_float32_name_the_rewards_and_the_row(tmp_path):
    arrays = hand_example()
    arrays["rewards"] = np.full(7, 3e36, dtype=np.float32)
    arrays["rewards"][[0, 1]] = 1.0  # episode 0 is fine; episode 1 sums 3 * 3e36 = 9e36
    arrays["rewards"][2:5] = 2e38
    path = write_d4rl(tmp_path / "huge.hdf5", **arrays)
    message = str(_one_line_error(load_d4rl, path))
    assert message.startswith(f"{path}: key 'rewards': the return-to-go at row 2 (episode 1)")
    assert "overflows float32" in message and "rescale the rewards" in message


def test_train_cli_names_the_rewards_not_the_learning_rate(tmp_path, capsys):
    from test_trainer import _write_presets

    from aaren_rl.cli import main

    agent, task = _write_presets(tmp_path)
    with h5py.File(tmp_path / "toy.hdf5", "r+") as f:
        rewards = f["rewards"][()]
        rewards[:] = 3e36
        f["rewards"][...] = rewards
    out = tmp_path / "run"
    argv = ["train", "--agent", str(agent), "--task", str(task), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy.hdf5: key 'rewards': returns-to-go reach 8.4e+37" in err[0]
    assert "after reward_scale 0.01" in err[0] and "train.lr" not in err[0]


CSV_CASES = {
    "no date column": (
        "HUFL,HULL,OT\n" + "".join(f"{i}.5,{i}.25,{i}\n" for i in range(30)),
        "key 'HUFL': line 2: the first column 'HUFL' holds a number ('0.5'), not a timestamp",
    ),
    "duplicated header": (
        "date,a,b,a\n" + "".join(f"2020-01-01 {i:02d}:00,1,2,3\n" for i in range(20)),
        "key 'a': line 1: the header names column 'a' 2 times (columns [2, 4])",
    ),
    "1e39 cell": (
        "date,a\n"
        + "".join(f"2020-01-01 {i:02d}:00,{'1e39' if i == 7 else i}\n" for i in range(20)),
        "key 'a': line 9: '1e39' overflows float32",
    ),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_forecast_csv_that_is_wrong_but_well_formed(tmp_path, case, capsys):
    from aaren_rl.cli import main
    from aaren_rl.data.series_csv import load_series_csv

    text, expected = CSV_CASES[case]
    path = tmp_path / "series.csv"
    path.write_text(text)
    assert str(_one_line_error(load_series_csv, path)).startswith(f"{path}: {expected}")
    argv = ["fit", "forecast", "--data", str(path), "--input-len", "4", "--horizon", "2"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"aaren-rl fit: error: {path}: " + err[0].split(": ", 3)[3]
    assert expected in err[0]


def test_a_numeric_time_column_named_as_time_is_read(tmp_path):
    from aaren_rl.data.series_csv import load_series_csv

    path = tmp_path / "s.csv"
    path.write_text("timestamp,a\n" + "".join(f"{1600000000 + i},{i}\n" for i in range(5)))
    table = load_series_csv(path)
    assert table.dates[0] == "1600000000" and table.values[:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("end", ["Infinity", "NaN", "-Infinity", '"soon"', "1e39", "[3]"])
def test_event_end_time_that_is_not_a_finite_number(tmp_path, end):
    from aaren_rl.data.events import load_event_json

    path = tmp_path / "events.json"
    seq = '{"time_since_start": [0.5, 1.5], "time_since_last_event": [0.5, 1.0], '
    path.write_text(f'[{seq}"type_event": [0, 1], "end_time": {end}}}]')
    message = str(_one_line_error(load_event_json, path))
    assert message.startswith(f"{path}: sequence 0: end_time is ") and "Fix:" in message


@pytest.mark.parametrize("kind", ["agents", "envs"])
def test_a_key_given_twice_in_a_preset_is_an_error_naming_both_lines(tmp_path, kind):
    from aaren_rl import presets

    path = tmp_path / "twice.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1.0e-3\n  steps: 5\n  lr: 1.0e-4\n")
    with pytest.raises(ValueError) as err:
        presets.load(kind, path)
    assert str(err.value) == (
        f"{path}: not valid YAML (line 5, column 3: key 'lr' appears twice in one mapping "
        "(first on line 3); keep one of them)"
    )
