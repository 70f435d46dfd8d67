"""The D4RL reader on small files in the real layout, checked against hand-computed values."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import hand_example, write_d4rl

from aaren_rl.data import paths
from aaren_rl.data.d4rl_reader import load_d4rl, read_d4rl_hdf5
from aaren_rl.data.errors import DatasetError
from aaren_rl.data.paths import data_dir, resolve_dataset_path
from aaren_rl.data.scores import D4RL_REF_SCORES, normalized_score
from aaren_rl.data.trajectories import TrajectoryDataset


def test_episode_split_returns_to_go_and_statistics(tmp_path):
    path = write_d4rl(tmp_path / "hand.hdf5", **hand_example())
    ds = load_d4rl(path)

    assert ds.source == str(path)
    assert (ds.num_transitions, ds.num_episodes, ds.max_episode_length) == (7, 3, 3)
    assert [len(e) for e in ds.episodes] == [2, 3, 2]
    # terminal at step 1; timeout at step 4; the file ends mid-episode after step 6
    assert [(e.terminated, e.truncated) for e in ds.episodes] == [
        (True, False),
        (False, True),
        (False, True),
    ]
    # rewards 1..7: suffix sums within each episode
    np.testing.assert_array_equal(ds.returns_to_go[0], [3.0, 2.0])
    np.testing.assert_array_equal(ds.returns_to_go[1], [12.0, 9.0, 5.0])
    np.testing.assert_array_equal(ds.returns_to_go[2], [13.0, 7.0])
    np.testing.assert_array_equal(ds.episode_returns(), [3.0, 12.0, 13.0])
    np.testing.assert_array_equal(ds.episodes[1].observations[:, 0], [3.0, 4.0, 5.0])
    np.testing.assert_allclose(ds.episodes[2].actions, [[1.0, 1.1], [1.2, 1.3]], rtol=1e-6)
    np.testing.assert_array_equal(ds.timesteps(1), [0, 1, 2])
    # column 0 is 1..7: mean 4, population std 2; column 1 is constant: std floored to 1e-6
    np.testing.assert_allclose(ds.state_mean, [4.0, 5.0])
    np.testing.assert_allclose(ds.state_std, [2.0, 1e-6])
    assert ds.state_mean.dtype == ds.state_std.dtype == np.float32
    for e in ds.episodes:
        assert e.observations.dtype == e.actions.dtype == e.rewards.dtype == np.float32


def test_terminal_and_timeout_on_the_same_step_and_file_ending_on_a_flag(tmp_path):
    arrays = hand_example()
    arrays["terminals"] = np.array([0, 0, 1, 0, 0, 0, 1], dtype=bool)
    arrays["timeouts"] = np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool)
    ds = load_d4rl(write_d4rl(tmp_path / "both.hdf5", **arrays))
    assert [len(e) for e in ds.episodes] == [3, 4]  # no empty trailing episode
    assert [(e.terminated, e.truncated) for e in ds.episodes] == [(True, True), (True, False)]
    np.testing.assert_array_equal(ds.returns_to_go[1], [22.0, 18.0, 13.0, 7.0])


def test_file_without_timeouts_and_max_episode_steps(tmp_path):
    arrays = hand_example()
    del arrays["timeouts"]
    path = write_d4rl(tmp_path / "no_timeouts.hdf5", **arrays)
    raw = read_d4rl_hdf5(path)
    assert raw["timeouts"].dtype == bool and not raw["timeouts"].any()
    ds = load_d4rl(path)
    assert [len(e) for e in ds.episodes] == [2, 5]
    # like Decision Transformer on files without timeouts: cut at the time limit
    cut = load_d4rl(path, max_episode_steps=2)
    assert [len(e) for e in cut.episodes] == [2, 2, 2, 1]
    assert [(e.terminated, e.truncated) for e in cut.episodes] == [
        (True, False),
        (False, True),
        (False, True),
        (False, True),
    ]
    np.testing.assert_array_equal(cut.returns_to_go[2], [11.0, 6.0])


def test_optional_keys_infos_metadata_and_dtypes(tmp_path):
    arrays = hand_example()
    path = tmp_path / "full.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = arrays["observations"].astype(np.float64)
        f["actions"] = arrays["actions"]
        f["rewards"] = arrays["rewards"][:, None]  # [N, 1] is accepted
        f["terminals"] = arrays["terminals"].astype(np.float32)  # D4RL stores 0/1 floats at times
        f["timeouts"] = arrays["timeouts"]
        f["next_observations"] = arrays["observations"] + 1
        f["infos/qpos"] = np.arange(21, dtype=np.float64).reshape(7, 3)
        f["infos/goal/xy"] = np.zeros((7, 2))
        f["metadata/algorithm"] = "SAC"
        f["metadata/policy/fc0/weight"] = np.eye(2)
        f["metadata"].attrs["seed"] = 7
        f.attrs["env_id"] = "Hopper-v5"
    out = read_d4rl_hdf5(path)
    assert out["observations"].dtype == np.float32
    assert out["rewards"].shape == (7,)
    np.testing.assert_array_equal(out["terminals"], arrays["terminals"])
    np.testing.assert_array_equal(out["next_observations"], arrays["observations"] + 1)
    assert out["infos/qpos"].shape == (7, 3) and out["infos/goal/xy"].shape == (7, 2)
    assert str(out["metadata/algorithm"]) == "SAC"
    np.testing.assert_array_equal(out["metadata/policy/fc0/weight"], np.eye(2))
    assert int(out["metadata/seed"]) == 7
    assert str(out["metadata/env_id"]) == "Hopper-v5"


def test_normalized_score_against_hand_values():
    low, high = D4RL_REF_SCORES["hopper"]
    assert (low, high) == (-20.272305, 3234.3)
    assert normalized_score("hopper", low) == pytest.approx(0.0)
    assert normalized_score("hopper-medium-v2", high) == pytest.approx(100.0)
    # midpoint of hopper's references: (-20.272305 + 3234.3) / 2 = 1607.0138475
    assert normalized_score("Hopper-v5", 1607.0138475) == pytest.approx(50.0)
    # halfcheetah: 100 * (6000 + 280.178953) / (12135 + 280.178953) = 50.5843...
    scores = normalized_score("halfcheetah-medium", np.array([6000.0, -280.178953]))
    np.testing.assert_allclose(scores, [100 * 6280.178953 / 12415.178953, 0.0])
    assert normalized_score("walker2d_medium", 4592.3) == pytest.approx(100.0)
    assert normalized_score("ant", -325.6) == pytest.approx(0.0)
    assert normalized_score("anything", 15.0, refs=(10.0, 20.0)) == pytest.approx(50.0)
    assert isinstance(normalized_score("hopper", 1.0), float)
    with pytest.raises(KeyError, match="refs="):
        normalized_score("pendulum", 1.0)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AAREN_RL_DATA_DIR", raising=False)
    monkeypatch.delenv("D4RL_DATASET_DIR", raising=False)
    assert data_dir() == tmp_path / "home" / ".aaren_rl" / "datasets"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    assert data_dir() == tmp_path / "d4rl"
    monkeypatch.setenv("AAREN_RL_DATA_DIR", str(tmp_path / "ours"))
    assert data_dir() == tmp_path / "ours"


def test_names_resolve_under_the_data_dirs(monkeypatch, tmp_path):
    ours, d4rl = tmp_path / "ours", tmp_path / "d4rl"
    ours.mkdir()
    d4rl.mkdir()
    monkeypatch.setenv("AAREN_RL_DATA_DIR", str(ours))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(d4rl))
    mine = write_d4rl(ours / "hopper-medium-v5.hdf5", **hand_example())
    # D4RL's own file name for hopper-medium-replay-v2
    theirs = write_d4rl(d4rl / "hopper_medium_replay-v2.hdf5", **hand_example())
    assert resolve_dataset_path("hopper-medium-v5") == mine
    assert resolve_dataset_path("hopper-medium-replay-v2") == theirs
    assert load_d4rl("hopper-medium-v5").num_episodes == 3
    with pytest.raises(DatasetError) as err:
        resolve_dataset_path("walker2d-medium-v5")
    message = str(err.value)
    assert str(ours / "walker2d-medium-v5.hdf5") in message
    assert str(d4rl / "walker2d_medium-v5.hdf5") in message
    # a shipped behaviour policy builds it fast; a level that needs SAC says --train-sac
    assert "in under a minute with `aaren-rl make-dataset walker2d-medium`" in message
    with pytest.raises(DatasetError, match=r"make-dataset walker2d-expert --train-sac` \(trains"):
        resolve_dataset_path("walker2d-expert-v5")
    with pytest.raises(DatasetError, match=r"make-dataset hopper-medium-expert` \(rolls out"):
        resolve_dataset_path("hopper-medium-expert-v5")
    with pytest.raises(DatasetError, match=r"make-dataset hopper-medium-replay --train-sac"):
        resolve_dataset_path("hopper-medium-replay-v5")


def test_builtin_names_and_missing_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "BUILTIN_DIR", tmp_path)
    shipped = write_d4rl(tmp_path / "tiny-v5.hdf5", **hand_example())
    assert resolve_dataset_path("builtin:tiny-v5.hdf5") == shipped
    assert resolve_dataset_path("builtin:tiny-v5") == shipped
    assert load_d4rl("builtin:tiny-v5.hdf5").num_transitions == 7
    with pytest.raises(DatasetError, match="tiny-v5.hdf5"):  # lists what ships
        resolve_dataset_path("builtin:other.hdf5")
    with pytest.raises(DatasetError, match="no such file"):
        resolve_dataset_path(tmp_path / "nope" / "x.hdf5")
    with pytest.raises(DatasetError, match="is a folder"):
        resolve_dataset_path(tmp_path)


def test_from_arrays_equals_the_file_reader(tmp_path):
    arrays = hand_example()
    direct = TrajectoryDataset.from_arrays(**arrays)
    via_file = load_d4rl(write_d4rl(tmp_path / "same.hdf5", **arrays))
    assert direct.num_episodes == via_file.num_episodes
    for a, b in zip(direct.episodes, via_file.episodes, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert (a.terminated, a.truncated) == (b.terminated, b.truncated)
    # a dataset rebuilt from its episodes is the same dataset
    again = TrajectoryDataset(direct.episodes)
    for a, b in zip(direct.returns_to_go, again.returns_to_go, strict=True):
        np.testing.assert_array_equal(a, b)
    summary = direct.summary()
    assert (summary["transitions"], summary["episodes"]) == (7, 3)
    assert summary["return_mean"] == pytest.approx(28.0 / 3.0)


def test_reads_what_make_dataset_writes(tmp_path):
    """The make-dataset writer's files (gzip, infos, nested metadata) read back exactly."""
    from aaren_rl.data.d4rl_writer import episode_bounds
    from aaren_rl.data.d4rl_writer import write_d4rl as write_like_make_dataset

    arrays = hand_example()
    path = write_like_make_dataset(
        tmp_path / "made.hdf5",
        {**arrays, "next_observations": arrays["observations"] + 1},
        infos={"qpos": np.arange(14.0).reshape(7, 2)},
        metadata={"algorithm": "SAC", "policy": {"seed": 3}},
        compression="gzip",
    )
    raw = read_d4rl_hdf5(path)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(raw[key], arrays[key])
    np.testing.assert_array_equal(raw["infos/qpos"], np.arange(14.0).reshape(7, 2))
    assert str(raw["metadata/algorithm"]) == "SAC" and int(raw["metadata/policy/seed"]) == 3
    ds = load_d4rl(path)
    starts = np.concatenate(([0], np.cumsum([len(e) for e in ds.episodes])[:-1]))
    bounds = [(int(s), int(s) + len(e)) for s, e in zip(starts, ds.episodes, strict=True)]
    assert bounds == [
        tuple(map(int, b)) for b in episode_bounds(arrays["terminals"], arrays["timeouts"])
    ]
