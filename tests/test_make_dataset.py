"""`aaren-rl make-dataset` on a tiny budget, and the pieces it is built from.

The build fixture runs the real command (``--train-sac``: SAC is trained here) twice: the first
call is interrupted after 150 SAC steps (``--train-steps-per-run``), the second resumes from
that checkpoint (``sac.zip`` and the replay buffer's filled rows, ``replay_buffer.npz``) and
finishes; a third trains on past it. ``tests/test_make_dataset_kills.py`` kills a build with
SIGKILL, also inside a checkpoint write, and resumes it. The
files it writes are checked against the environment itself (every stored transition is replayed
in MuJoCo from its recorded physics state), against an independent D4RL reader (just-d4rl) and
against this library's reader.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from aaren_rl.cli import main
from aaren_rl.data.behaviour import (
    collect_episodes,
    episodes_to_arrays,
    replay_buffer_to_arrays,
    uniform_policy,
)
from aaren_rl.data.d4rl_writer import episode_bounds, write_d4rl
from aaren_rl.data.make_dataset import load_replay_rows, save_replay_rows

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
TOTAL_STEPS = 300
TRANSITIONS = 300


def _build_args(out: Path, work: Path, *extra: str) -> list[str]:
    return [
        "make-dataset",
        "hopper",
        "--levels",
        ",".join(LEVELS),
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--total-steps",
        str(TOTAL_STEPS),
        "--learning-starts",
        "100",
        "--batch-size",
        "32",
        "--eval-freq",
        "100",
        "--eval-episodes",
        "2",
        "--checkpoint-freq",
        "100",
        "--transitions",
        str(TRANSITIONS),
        "--rollout-envs",
        "3",
        # A low expert return puts the medium threshold (1/3 of it) within reach of a few
        # hundred SAC steps, so the real snapshot path runs.
        "--expert-return",
        "30",
        # Short episodes bound the cost of evaluations and rollouts of a policy that stands still.
        "--max-episode-steps",
        "60",
        "--device",
        "cpu",
        "--quiet",
        "--train-sac",
        *extra,
    ]


def _run(args: list[str]) -> int:
    """``aaren-rl ARGS`` in this process with ``--threads 1`` (SAC's small matmuls are far slower
    with 2 threads on a busy 2-core box), restoring torch's thread count afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        return main([*args, "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def _has_minari() -> bool:
    try:
        import minari  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("make_dataset")
    out, work = root / "out", root / "work"
    minari_dir = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    extra = ("--minari",) if _has_minari() else ()
    try:
        first = _run(_build_args(out, work, "--train-steps-per-run", "150", *extra))
        progress_after_first = json.loads((work / "progress.json").read_text())
        files_after_first = sorted(p.name for p in out.glob("*.hdf5"))
        second = _run(_build_args(out, work, *extra))
        from stable_baselines3 import SAC

        expert_steps_after_second = SAC.load(
            out / "policies" / "hopper-expert-sac.zip"
        ).num_timesteps
        # A re-run asking for more SAC steps trains on from the checkpoint (growing the replay
        # buffer) and replaces the expert policy and the datasets made from it.
        more = _build_args(out, work, "--overwrite", *extra)
        more[more.index("--total-steps") + 1] = str(TOTAL_STEPS + 100)
        more[more.index("--levels") + 1] = "expert,medium-expert"
        third = _run(more)
    finally:
        if minari_dir is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = minari_dir
    return {
        "out": out,
        "work": work,
        "codes": (first, second, third),
        "expert_steps_after_second": expert_steps_after_second,
        "progress_after_first": progress_after_first,
        "files_after_first": files_after_first,
        "minari_dir": root / "minari",
    }


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        data = {k: f[k][:] for k in f if isinstance(f[k], h5py.Dataset)}
        for group in ("infos", "metadata"):
            for k in f.get(group, {}):
                if isinstance(f[group][k], h5py.Dataset):
                    data[f"{group}/{k}"] = f[group][k][()]
    return data


def test_build_writes_every_level_in_d4rl_layout(build):
    assert build["codes"] == (0, 0, 0)
    for level in LEVELS:
        d = _read(build["out"] / f"hopper-{level}-v5.hdf5")
        n = len(d["rewards"])
        assert d["observations"].dtype == np.float32 and d["observations"].shape == (n, 11)
        assert d["next_observations"].dtype == np.float32 and d["next_observations"].shape == (
            n,
            11,
        )
        assert d["actions"].dtype == np.float32 and d["actions"].shape == (n, 3)
        assert d["rewards"].dtype == np.float32 and d["rewards"].shape == (n,)
        assert d["terminals"].dtype == bool and d["timeouts"].dtype == bool
        assert not np.any(d["terminals"] & d["timeouts"])
        assert np.all(np.abs(d["actions"]) <= 1.0)
        expected = {"random": TRANSITIONS, "medium": TRANSITIONS, "expert": TRANSITIONS}
        expected["medium-expert"] = 2 * TRANSITIONS
        if level in expected:
            assert n == expected[level]
        # Within an episode each step's next observation is the next step's observation.
        ends = d["terminals"] | d["timeouts"]
        inner = ~ends[:-1]
        np.testing.assert_array_equal(
            d["next_observations"][:-1][inner], d["observations"][1:][inner]
        )
        # Episodes end exactly on a flag, and the last row always ends one.
        assert ends[-1]
        lengths = d["metadata/episode_lengths"]
        np.testing.assert_array_equal(np.cumsum(lengths) - 1, np.flatnonzero(ends))
        # Per-episode reward sums equal the returns recorded by the rollout (float64 env sums).
        sums = np.add.reduceat(d["rewards"].astype(np.float64), np.r_[0, np.cumsum(lengths)[:-1]])
        np.testing.assert_allclose(sums, d["metadata/episode_returns"], rtol=1e-5, atol=1e-4)
        assert d["metadata/generator"] == b"aaren-rl make-dataset"
        if level in ("random", "medium", "expert"):
            # Timeouts only at the 60-step time limit, or on the last row (cut by the budget).
            timeout_ends = d["timeouts"][np.cumsum(lengths) - 1]
            assert np.all(lengths[:-1][timeout_ends[:-1]] == 60)
            assert np.all(lengths[:-1][~timeout_ends[:-1]] < 60)


def test_rollout_transitions_are_the_environments(build):
    """Replay every stored step in MuJoCo from its recorded qpos/qvel: same reward, next
    observation and termination as the file says (an independent check of the rollout code)."""
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    base = env.unwrapped
    for level in ("random", "medium", "expert"):
        d = _read(build["out"] / f"hopper-{level}-v5.hdf5")
        n = len(d["rewards"])
        ends = np.flatnonzero(d["terminals"] | d["timeouts"])
        for i in range(n):
            base.set_state(
                d["infos/qpos"][i].astype(np.float64), d["infos/qvel"][i].astype(np.float64)
            )
            np.testing.assert_allclose(base._get_obs(), d["observations"][i], rtol=1e-4, atol=1e-4)
            obs, reward, terminated, _, _ = base.step(d["actions"][i].astype(np.float64))
            np.testing.assert_allclose(obs, d["next_observations"][i], rtol=1e-4, atol=1e-4)
            assert reward == pytest.approx(float(d["rewards"][i]), rel=1e-4, abs=1e-4)
            assert bool(terminated) == bool(d["terminals"][i]), (level, i)
            if terminated:
                assert i in ends
    env.close()


def test_medium_replay_is_the_replay_buffer_up_to_the_snapshot(build):
    progress = json.loads((build["work"] / "progress.json").read_text())
    medium = progress["medium"]
    assert medium["threshold_reached"] is True
    assert medium["threshold"] == pytest.approx(10.0)
    assert medium["eval_return"] >= 10.0
    d = _read(build["out"] / "hopper-medium-replay-v5.hdf5")
    # SB3 collects `learning_starts` uniform steps, then the snapshot is taken at an eval step.
    assert len(d["rewards"]) == medium["buffer_transitions"] == medium["step"]
    assert medium["step"] % 100 == 0
    assert (build["out"] / "policies" / "hopper-medium-sac.zip").is_file()


def test_interrupted_build_resumes_from_its_checkpoint(build):
    first = build["progress_after_first"]
    assert first["num_timesteps"] == 150
    assert Path(first["checkpoint"]).name == "step-000000150"
    # The first call stopped before the expert: no rollout datasets yet.
    assert "hopper-expert-v5.hdf5" not in build["files_after_first"]
    from stable_baselines3 import SAC

    assert build["expert_steps_after_second"] == TOTAL_STEPS
    # The third call asked for 100 more steps: it went on from the checkpoint at 300.
    expert = SAC.load(build["out"] / "policies" / "hopper-expert-sac.zip", device="cpu")
    assert expert.num_timesteps == TOTAL_STEPS + 100
    final = json.loads((build["work"] / "progress.json").read_text())
    assert final["num_timesteps"] == TOTAL_STEPS + 100
    assert Path(final["checkpoint"]).name == f"step-{TOTAL_STEPS + 100:09d}"
    # Its replay buffer grew and holds every transition since step 0.
    load_replay_rows(expert.replay_buffer, Path(final["checkpoint"]) / "replay_buffer.npz")
    buffer = expert.replay_buffer
    assert buffer.buffer_size == TOTAL_STEPS + 100
    assert buffer.full and buffer.pos == 0  # exactly full: SB3 wraps pos to 0 at the end
    assert len(replay_buffer_to_arrays(buffer)["rewards"]) == TOTAL_STEPS + 100
    assert not (build["work"] / "checkpoints" / "step-000000150").exists()
    with h5py.File(build["out"] / "hopper-expert-v5.hdf5") as f:
        sha = f["metadata/policy/sha256"][()].decode()
    import hashlib

    policy = (build["out"] / "policies" / "hopper-expert-sac.zip").read_bytes()
    assert sha == hashlib.sha256(policy).hexdigest()  # the expert data is the new policy's


def test_summary_and_references(build):
    out = build["out"]
    refs = json.loads((out / "hopper-v5-references.json").read_text())
    summary = json.loads((out / "hopper-v5-summary.json").read_text())
    random = _read(out / "hopper-random-v5.hdf5")
    bounds = episode_bounds(random["terminals"], random["timeouts"])
    returns = np.array([random["rewards"][s:e].astype(np.float64).sum() for s, e in bounds])
    lengths = np.array([e - s for s, e in bounds])
    complete = random["terminals"][[e - 1 for _, e in bounds]] | (lengths == 60)
    assert refs["random_mean"] == pytest.approx(returns[complete].mean(), rel=1e-6)
    assert refs["d4rl_expert"] == 3234.3 and refs["d4rl_random"] == -20.272305
    entry = summary["datasets"]["hopper-random-v5"]
    assert entry["transitions"] == TRANSITIONS and entry["episodes"] == len(bounds)
    assert entry["d4rl_normalised_mean"] == pytest.approx(
        100 * (refs["random_mean"] + 20.272305) / (3234.3 + 20.272305)
    )
    assert entry["v5_normalised_mean"] == pytest.approx(0.0, abs=1e-9)


def test_rerun_skips_finished_outputs_and_refuses_foreign_files(build, tmp_path, capsys):
    out = build["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.hdf5")}
    assert _run(_build_args(out, build["work"])) == 0  # same work folder: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.hdf5")} == before
    # Another build (fresh work folder) must not replace these files unasked.
    code = _run(_build_args(out, tmp_path / "other-work"))
    assert code == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "hopper-random-v5.hdf5" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.hdf5")} == before
    assert not (tmp_path / "other-work" / "checkpoints").exists()


def test_just_d4rl_reads_the_file(build, tmp_path, monkeypatch):
    just_d4rl = pytest.importorskip("just_d4rl")
    from just_d4rl.d4rl_infos import DATASETS_URLS

    # just-d4rl looks files up by D4RL id in $D4RL_DATASET_DIR under the URL's file name.
    name = DATASETS_URLS["hopper-medium-v2"].split("/")[-1]
    shutil.copy(build["out"] / "hopper-medium-v5.hdf5", tmp_path / name)
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    theirs, _ = just_d4rl.get_dataset("hopper-medium-v2", env=gym.make("Hopper-v5"))
    ours = _read(build["out"] / "hopper-medium-v5.hdf5")
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(theirs[key], ours[key])
    np.testing.assert_array_equal(theirs["infos/qpos"], ours["infos/qpos"])
    q = just_d4rl.qlearning_dataset(theirs)
    # qlearning_dataset drops timeout steps and pairs each kept step with the next row.
    keep = ~ours["timeouts"][:-1]
    np.testing.assert_array_equal(q["observations"], ours["observations"][:-1][keep])
    np.testing.assert_array_equal(q["terminals"], ours["terminals"][:-1][keep])
    inner = keep & ~ours["terminals"][:-1]
    np.testing.assert_array_equal(
        q["next_observations"][inner[keep]], ours["next_observations"][:-1][inner]
    )


def test_our_reader_reads_the_file(build):
    from aaren_rl.data.d4rl_reader import load_d4rl

    ours = _read(build["out"] / "hopper-medium-expert-v5.hdf5")
    dataset = load_d4rl(
        build["out"] / "hopper-medium-expert-v5.hdf5", env_spaces=gym.make("Hopper-v5")
    )
    lengths = ours["metadata/episode_lengths"]
    assert dataset.num_episodes == len(lengths)
    assert dataset.num_transitions == len(ours["rewards"])
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    for k, (s, n) in enumerate(zip(starts, lengths, strict=True)):
        ep = dataset.episodes[k]
        np.testing.assert_array_equal(ep.observations, ours["observations"][s : s + n])
        np.testing.assert_array_equal(ep.actions, ours["actions"][s : s + n])
        np.testing.assert_array_equal(ep.rewards, ours["rewards"][s : s + n])
        assert ep.terminated == bool(ours["terminals"][s + n - 1])
    np.testing.assert_allclose(
        dataset.episode_returns(), ours["metadata/episode_returns"], rtol=1e-5
    )


# ----------------------------------------------------------------------------- the pieces


def test_collect_episodes_marks_time_limits_and_cuts_to_budget():
    def make_env():
        return gym.make("Hopper-v5", max_episode_steps=7)

    space = make_env().action_space
    # Zero actions keep the hopper standing, so every episode hits the 7-step time limit.
    eps = collect_episodes(
        make_env, lambda o: np.zeros((len(o), 3), np.float32), n_transitions=25, n_envs=2
    )
    assert [len(e) for e in eps] == [7, 7, 7, 4]
    assert all(e.truncated and not e.terminated for e in eps)
    data, infos = episodes_to_arrays(eps)
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [6, 13, 20, 24])
    assert not data["terminals"].any()
    assert infos["qpos"].shape == (25, 6) and infos["qvel"].shape == (25, 6)
    # Seeded: the same call gives the same data.
    again = collect_episodes(make_env, uniform_policy(space, 3), max_episodes=3, n_envs=2, seed=5)
    again2 = collect_episodes(make_env, uniform_policy(space, 3), max_episodes=3, n_envs=2, seed=5)
    assert len(again) == 3
    for a, b in zip(again, again2, strict=True):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert np.all(a.actions >= -1) and np.all(a.actions <= 1)


def test_replay_buffer_conversion_flags_by_hand():
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = gym.spaces.Box(-10, 10, (2,), np.float64)
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    buf = ReplayBuffer(10, obs_space, act_space, device="cpu", handle_timeout_termination=True)
    # Episode A: 0 -> 1 -> 2 (terminates); B: 10 -> 11 (time limit); C: 20 -> 21, then a resumed
    # run starts D: 30 -> 31 -> 32 (in progress at the snapshot).
    steps = [
        (0, 1, False, False),
        (1, 2, True, False),
        (10, 11, True, True),
        (20, 21, False, False),
        (30, 31, False, False),
        (31, 32, False, False),
    ]
    for k, (o, o2, done, trunc) in enumerate(steps):
        buf.add(
            np.array([[o, -o]], float),
            np.array([[o2, -o2]], float),
            np.array([[0.1 * k]], np.float32),
            np.array([float(k)]),
            np.array([done]),
            [{"TimeLimit.truncated": trunc}],
        )
    d = replay_buffer_to_arrays(buf)
    np.testing.assert_array_equal(d["terminals"], [False, True, False, False, False, False])
    np.testing.assert_array_equal(d["timeouts"], [False, False, True, True, False, True])
    np.testing.assert_array_equal(d["rewards"], np.arange(6, dtype=np.float32))
    np.testing.assert_array_equal(d["observations"][:, 0], [0, 1, 10, 20, 30, 31])
    np.testing.assert_allclose(d["actions"][:, 0], 0.1 * np.arange(6), rtol=1e-6)
    assert len(replay_buffer_to_arrays(buf, 3)["rewards"]) == 3
    with pytest.raises(ValueError, match="holds 6"):
        replay_buffer_to_arrays(buf, 7)
    # A later call with a larger --total-steps grows the buffer and keeps every transition.
    from aaren_rl.data.make_dataset import grow_replay_buffer

    big = grow_replay_buffer(buf, 25)
    assert big.buffer_size == 25 and big.pos == 6 and not big.full
    for key, value in replay_buffer_to_arrays(big).items():
        np.testing.assert_array_equal(value, d[key])


def _arrays(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, 3)),
        "actions": rng.uniform(-1, 1, size=(n, 2)),
        "rewards": rng.normal(size=n),
        "terminals": np.array([0, 1, 0, 0, 0], bool)[:n],
        "timeouts": np.array([0, 0, 0, 0, 1], bool)[:n],
    }


def test_writer_round_trip_casts_and_is_atomic(tmp_path):
    path = write_d4rl(
        tmp_path / "x.hdf5",
        _arrays(),
        infos={"qpos": np.ones((5, 4))},
        metadata={"algorithm": "test", "seed": 3, "nested": {"value": 1.5}},
        compression="gzip",
    )
    d = _read(path)
    np.testing.assert_array_equal(d["observations"], _arrays()["observations"].astype(np.float32))
    assert d["rewards"].dtype == np.float32 and d["terminals"].dtype == bool
    assert d["metadata/algorithm"] == b"test" and d["metadata/seed"] == 3
    assert d["infos/qpos"].shape == (5, 4)
    with h5py.File(path) as f:
        assert f["observations"].compression == "gzip"
        assert f["metadata/nested/value"][()] == 1.5
    assert sorted(os.listdir(tmp_path)) == ["x.hdf5"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file, not 0o600
    assert episode_bounds(d["terminals"], d["timeouts"]) == [(0, 2), (2, 5)]


def test_writer_refuses_to_overwrite_and_names_bad_keys(tmp_path):
    path = tmp_path / "x.hdf5"
    path.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_d4rl(path, _arrays())
    assert path.read_bytes() == b"user data"
    write_d4rl(path, _arrays(), overwrite=True)
    assert len(_read(path)["rewards"]) == 5
    bad = _arrays()
    del bad["timeouts"]
    with pytest.raises(KeyError, match=r"y\.hdf5.*timeouts"):
        write_d4rl(tmp_path / "y.hdf5", bad)
    bad = _arrays()
    bad["actions"] = bad["actions"][:4]
    with pytest.raises(ValueError, match=r"'actions' has 4 rows, expected 5"):
        write_d4rl(tmp_path / "y.hdf5", bad)
    bad = _arrays()
    bad["rewards"][2] = np.nan
    with pytest.raises(ValueError, match=r"'rewards' holds NaN"):
        write_d4rl(tmp_path / "y.hdf5", bad)
    with pytest.raises(ValueError, match="empty"):
        write_d4rl(tmp_path / "y.hdf5", _arrays(0))
    assert not (tmp_path / "y.hdf5").exists()
    assert sorted(os.listdir(tmp_path)) == ["x.hdf5"]


def test_unknown_task_and_level_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="unknown task 'pogo'"):
        main(["make-dataset", "pogo", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown level"):
        main(["make-dataset", "hopper", "--levels", "medium,great", "--out", str(tmp_path)])


def test_build_also_writes_minari_datasets(build, monkeypatch):
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(build["minari_dir"]))
    for level in LEVELS:
        ours = _read(build["out"] / f"hopper-{level}-v5.hdf5")
        theirs = minari.load_dataset(f"aaren/hopper/{level}-v0")
        lengths = ours["metadata/episode_lengths"]
        assert theirs.total_episodes == len(lengths) and theirs.total_steps == len(ours["rewards"])
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        for s, n, ep in zip(starts, lengths, theirs.iterate_episodes(), strict=True):
            np.testing.assert_array_equal(ep.observations[:-1], ours["observations"][s : s + n])
            np.testing.assert_array_equal(ep.observations[-1], ours["next_observations"][s + n - 1])
            np.testing.assert_array_equal(ep.actions, ours["actions"][s : s + n])
            np.testing.assert_array_equal(ep.terminations, ours["terminals"][s : s + n])


def test_minari_export_round_trip(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    from aaren_rl.data.minari_export import write_minari

    def make_env():
        return gym.make("Hopper-v5", max_episode_steps=9)

    space = make_env().action_space
    eps = collect_episodes(make_env, uniform_policy(space, 0), n_transitions=40, n_envs=2, seed=1)
    data, _ = episodes_to_arrays(eps)
    write_minari("aaren/hopper/test-v0", "Hopper-v5", data)
    loaded = minari.load_dataset("aaren/hopper/test-v0")
    assert loaded.total_episodes == len(eps) and loaded.total_steps == 40
    for ep, theirs in zip(eps, loaded.iterate_episodes(), strict=True):
        # Minari keeps T + 1 observations: the T seen before each action, then the final one.
        np.testing.assert_allclose(theirs.observations[:-1], ep.observations, rtol=1e-6)
        np.testing.assert_allclose(theirs.observations[-1], ep.next_observations[-1], rtol=1e-6)
        np.testing.assert_allclose(theirs.actions, ep.actions)
        np.testing.assert_allclose(theirs.rewards, ep.rewards, rtol=1e-6)
        assert bool(theirs.terminations[-1]) == ep.terminated
        assert bool(theirs.truncations[-1]) == (not ep.terminated)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_minari("aaren/hopper/test-v0", "Hopper-v5", data)


def test_medium_replay_rebuilt_from_the_last_checkpoint(build, tmp_path):
    """Asked for medium-replay later (new --out), the build takes it from the last checkpoint's
    replay buffer: the same transitions and flags as written at the snapshot."""
    args = _build_args(tmp_path / "out2", build["work"])
    args[args.index("--levels") + 1] = "medium-replay"
    assert _run(args) == 0
    again = _read(tmp_path / "out2" / "hopper-medium-replay-v5.hdf5")
    first = _read(build["out"] / "hopper-medium-replay-v5.hdf5")
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(again[key], first[key])


def test_expert_policy_best_keeps_the_best_evaluated_policy(build, tmp_path):
    """With ``--expert-policy best`` a run that trains on from the checkpoint records every
    evaluation past the medium snapshot, and the expert policy (and the expert data rolled out
    from it) is the one of the best evaluation, not the last."""
    from stable_baselines3 import SAC

    out, work = tmp_path / "out", tmp_path / "work"
    shutil.copytree(build["out"], out)
    shutil.copytree(build["work"], work)
    progress = json.loads((work / "progress.json").read_text())
    # resume from the copied checkpoint, not the fixture's
    progress["checkpoint"] = str(work / Path(progress["checkpoint"]).relative_to(build["work"]))
    (work / "progress.json").write_text(json.dumps(progress))
    start, total = TOTAL_STEPS + 100, TOTAL_STEPS + 400
    args = _build_args(out, work, "--overwrite", "--expert-policy", "best")
    args[args.index("--total-steps") + 1] = str(total)
    args[args.index("--levels") + 1] = "expert"
    assert _run(args) == 0

    progress = json.loads((work / "progress.json").read_text())
    evals = [e for e in progress["expert_evals"] if e[0] > start]
    assert [e[0] for e in evals] == list(range(start + 100, total + 1, 100))
    best_step, best_mean, _ = max(evals, key=lambda e: e[1])
    assert progress["expert_best"]["step"] == best_step
    assert progress["expert_best"]["eval_return"] == best_mean
    expert = SAC.load(out / "policies" / "hopper-expert-sac.zip", device="cpu")
    assert expert.num_timesteps == best_step
    with h5py.File(out / "hopper-expert-v5.hdf5") as f:
        assert int(f["metadata/policy/sac_step"][()]) == best_step


def test_checkpoint_keeps_only_the_filled_replay_rows(build):
    """A checkpoint holds the transitions stored so far (not SB3's pickle of the preallocated
    buffer): the rows of the buffer SAC trains from, as many as the steps trained."""
    final = json.loads((build["work"] / "progress.json").read_text())
    folder = Path(final["checkpoint"])
    assert sorted(p.name for p in folder.iterdir()) == ["replay_buffer.npz", "sac.zip"]
    with np.load(folder / "replay_buffer.npz") as saved:
        assert len(saved["rewards"]) == final["num_timesteps"] == TOTAL_STEPS + 100
        assert saved["observations"].shape == (TOTAL_STEPS + 100, 1, 11)


def test_replay_rows_round_trip_and_size(tmp_path):
    from stable_baselines3.common.buffers import ReplayBuffer

    obs_space = gym.spaces.Box(-np.inf, np.inf, (11,), np.float64)
    act_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    rng = np.random.default_rng(0)

    def buffer():
        return ReplayBuffer(
            1_000_000, obs_space, act_space, device="cpu", handle_timeout_termination=True
        )

    buf = buffer()
    for k in range(37):
        buf.add(
            rng.normal(size=(1, 11)),
            rng.normal(size=(1, 11)),
            rng.uniform(-1, 1, size=(1, 3)).astype(np.float32),
            np.array([rng.normal()]),
            np.array([k % 10 == 9]),
            [{"TimeLimit.truncated": k == 19}],
        )
    save_replay_rows(buf, tmp_path / "rows.npz")
    # 37 rows of about 0.2 KB, where SB3's pickle of this 1M-row buffer is about 200 MB
    assert (tmp_path / "rows.npz").stat().st_size < 37 * 250 + 2000
    again = buffer()
    load_replay_rows(again, tmp_path / "rows.npz")
    assert (again.pos, again.full) == (37, False)
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(again, name), getattr(buf, name))
    small = ReplayBuffer(20, obs_space, act_space, device="cpu", handle_timeout_termination=True)
    with pytest.raises(ValueError, match=r"rows\.npz.*37 transitions.*--buffer-size"):
        load_replay_rows(small, tmp_path / "rows.npz")


def test_default_build_rolls_out_the_shipped_policy_without_training(tmp_path):
    """`make-dataset hopper-medium` uses the shipped medium actor (no SAC training); a level
    that needs training names --train-sac and trains nothing."""
    import hashlib

    from aaren_rl.data.make_dataset import SHIPPED_POLICIES

    out, work = tmp_path / "out", tmp_path / "work"
    args = ["make-dataset", "hopper-medium", "--out", str(out), "--work-dir", str(work)]
    assert _run([*args, "--transitions", "500", "--quiet"]) == 0
    data = _read(out / "hopper-medium-v5.hdf5")
    assert len(data["rewards"]) == 500
    shipped = SHIPPED_POLICIES / "hopper-medium-actor.pt"
    with h5py.File(out / "hopper-medium-v5.hdf5") as f:
        sha, step = f["metadata/policy/sha256"][()].decode(), f["metadata/policy/sac_step"][()]
    assert sha == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert int(step) == 205_000
    assert not (work / "checkpoints").exists()
    with pytest.raises(SystemExit, match="medium-replay is the replay buffer.*--train-sac"):
        _run(["make-dataset", "hopper-medium-replay", "--out", str(out), "--work-dir", str(work)])
    with pytest.raises(SystemExit, match="no ant-medium policy.*--train-sac"):
        _run(["make-dataset", "ant-medium", "--out", str(out), "--work-dir", str(work)])
    assert not (work / "checkpoints").exists()


@pytest.mark.slow
def test_shipped_actor_rebuilds_the_shipped_dataset_bit_for_bit(tmp_path):
    """hopper-medium-small-v5 was rolled out from the full SAC zip; the shipped actor (the zip
    stripped to what a rollout reads) rolls out the same transitions, bit for bit
    (scripts/build_datasets.sh small)."""
    from aaren_rl.data.paths import BUILTIN_DIR

    args = ["make-dataset", "hopper", "--levels", "medium", "--suffix", "small"]
    args += ["--out", str(tmp_path), "--work-dir", str(tmp_path / "work"), "--seed", "0"]
    args += ["--transitions", "50000", "--max-episodes", "100", "--quiet"]
    assert _run(args) == 0
    ours = _read(tmp_path / "hopper-medium-small-v5.hdf5")
    shipped = _read(BUILTIN_DIR / "hopper-medium-small-v5.hdf5")
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations"):
        np.testing.assert_array_equal(ours[key], shipped[key])
    np.testing.assert_array_equal(ours["infos/qpos"], shipped["infos/qpos"])
