"""Vector-env rollout: per-env memory, autoreset, return bookkeeping, against independent checks.

The environment is real Hopper-v5 under a time limit that depends on the seed it was reset with
(14, 26 or 38 steps), so in a vector rollout (env i seeded with i) the environments end their
episodes at different steps for sure; untrained models may also fall (terminate) earlier.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from aaren_rl.agents.decision_model import DecisionModel, build_decision_model
from aaren_rl.agents.rollout import evaluate_agent

ENV = "aaren-rl-test/HopperSeedLimit-v0"
OBS_DIM, ACT_DIM = 11, 3
TARGET = 3600.0
LIMIT = 200  # the outer time limit (the seed-dependent one is tighter)


class SeedTimeLimit(gym.Wrapper):
    """Truncates episodes after 14 + 12 * (seed % 3) steps; the limit is set by reset(seed)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.limit, self.t = 14, 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.limit = 14 + 12 * (seed % 3)
        self.t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        return obs, reward, terminated, truncated or self.t >= self.limit, info


def _make_env(**kwargs) -> gym.Env:
    return SeedTimeLimit(gym.make("Hopper-v5", **kwargs))


if ENV not in gym.registry:
    gym.register(ENV, entry_point=_make_env)
SMALL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "context": 5, "dropout": 0.1}
BACKBONES = {
    "aaren": {"backbone": "aaren"},
    "transformer-kv-full": {
        "backbone": "transformer",
        "step_mode": "kv_cache",
        "full_attention": True,
    },
    "transformer-recompute": {"backbone": "transformer", "step_mode": "recompute"},
}


def make_model(seed: int = 0, **overrides) -> DecisionModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    return build_decision_model(
        {**SMALL, **overrides},
        OBS_DIM,
        ACT_DIM,
        state_mean=rng.normal(scale=0.1, size=OBS_DIM),
        state_std=rng.uniform(0.5, 2.0, size=OBS_DIM),
        reward_scale=1e-3,
    )


def rollout(model, **kw):
    args = {"n_episodes": 6, "n_envs": 3, "seed": 0, "max_episode_steps": LIMIT, "record": True}
    return evaluate_agent(model, ENV, TARGET, **{**args, **kw})


@pytest.fixture(scope="module")
def aaren_run():
    torch.set_num_threads(1)
    model = make_model(seed=1, **BACKBONES["aaren"])  # this one falls after about 20 steps
    return model, rollout(model)


def test_environments_end_episodes_at_different_steps(aaren_run):
    _, result = aaren_run
    assert result.episode_env.tolist() == [0, 0, 1, 1, 2, 2]
    ends = [np.cumsum(result.lengths[result.episode_env == i]).tolist() for i in range(3)]
    assert len({tuple(e) for e in ends}) > 1, ends  # the envs' episode boundaries differ
    assert any(e.truncated for e in result.episodes)
    assert any(e.terminated for e in result.episodes)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_vector_env_acts_as_if_alone(name):
    model = make_model(**BACKBONES[name])
    together = rollout(model)
    assert len(set(together.lengths.tolist())) > 1
    for i in range(3):
        alone = rollout(model, n_episodes=2, n_envs=1, seed=i)
        mine = [e for e in together.episodes if e.env_index == i]
        assert [len(e.rewards) for e in mine] == [len(e.rewards) for e in alone.episodes]
        for a, b in zip(mine, alone.episodes, strict=True):
            np.testing.assert_allclose(a.actions, b.actions, rtol=0, atol=1e-5)
            np.testing.assert_allclose(a.observations, b.observations, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            together.returns[together.episode_env == i], alone.returns, rtol=0, atol=1e-5
        )


def test_same_step_autoreset_gives_the_same_episodes(aaren_run):
    model, next_step = aaren_run
    same_step = rollout(model, autoreset_mode="SameStep")
    np.testing.assert_array_equal(same_step.lengths, next_step.lengths)
    np.testing.assert_allclose(same_step.returns, next_step.returns, rtol=0, atol=1e-9)
    for a, b in zip(same_step.episodes, next_step.episodes, strict=True):
        np.testing.assert_allclose(a.actions, b.actions, rtol=0, atol=0)


def test_recorded_episodes_replay_in_a_plain_env(aaren_run):
    """Independent check: the recorded actions, replayed in a fresh env with the same seed,
    give the recorded observations and rewards, episode after episode (the second episode
    starts from the env's own reset, which is what NEXT_STEP autoreset must have fed)."""
    _, result = aaren_run
    for i in range(3):
        env = SeedTimeLimit(gym.make("Hopper-v5", max_episode_steps=LIMIT))  # built by hand
        obs, _ = env.reset(seed=i)
        for k, ep in enumerate(e for e in result.episodes if e.env_index == i):
            if k:
                obs, _ = env.reset()
            for t in range(len(ep.rewards)):
                np.testing.assert_allclose(ep.observations[t], obs, rtol=0, atol=1e-12)
                obs, reward, terminated, truncated, _ = env.step(ep.actions[t])
                assert ep.rewards[t] == reward
            assert (terminated, truncated) == (ep.terminated, ep.truncated)
        env.close()


def test_return_bookkeeping_by_hand(aaren_run):
    _, result = aaren_run
    for ret, n, ep in zip(result.returns, result.lengths, result.episodes, strict=True):
        assert n == len(ep.rewards)
        assert ret == pytest.approx(float(np.sum(ep.rewards)), abs=1e-9)
        # return-to-go fed at t = target - rewards already received in THIS episode
        expected_rtg = TARGET - np.concatenate([[0.0], np.cumsum(ep.rewards)[:-1]])
        np.testing.assert_allclose(ep.returns_to_go, expected_rtg, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(ep.timesteps, np.arange(n))
    assert result.mean_return == pytest.approx(float(np.mean(result.returns)))
    assert result.std_return == pytest.approx(float(np.std(result.returns)))


def test_closed_loop_actions_equal_parallel_forward_on_the_rollout(aaren_run):
    """The actions the rollout took are what the parallel forward predicts on its record."""
    model, result = aaren_run
    model.eval()
    for ep in result.episodes:
        with torch.inference_mode():
            pred, _ = model(
                torch.as_tensor(ep.observations, dtype=torch.float32)[None],
                torch.as_tensor(ep.actions)[None],
                torch.as_tensor(ep.returns_to_go, dtype=torch.float32)[None],
                torch.as_tensor(ep.timesteps)[None],
            )
        np.testing.assert_allclose(pred[0].numpy(), ep.actions, rtol=0, atol=1e-5)


def test_state_bytes_per_env_constant_for_aaren_and_growing_for_a_kv_cache(aaren_run):
    _, result = aaren_run
    d_head = SMALL["d_model"] // SMALL["n_heads"]
    memory = SMALL["n_layers"] * SMALL["n_heads"] * (d_head + 2) * 4
    # the fast step also holds the pending action a_t (float32), its timestep and a flag
    per_env = memory + ACT_DIM * 4 + 8 + 1
    assert result.state_bytes_per_env_first == result.state_bytes_per_env_last == per_env
    assert result.state_bytes_per_env_max == per_env
    kv = rollout(make_model(**BACKBONES["transformer-kv-full"]), n_episodes=1, n_envs=1)
    assert kv.state_bytes_per_env_max > 10 * kv.state_bytes_per_env_first
    assert result.step_latency_ms > 0 and result.env_step_latency_ms > 0
    assert len(result.latency_ms_by_step) >= max(result.lengths)


def test_fast_step_rollout_equals_the_models_own_step(aaren_run):
    """The rollout steps Aaren with FastDecisionStep; the model's own step plays the same
    episodes (same lengths, actions within float32 rounding)."""
    model, fast = aaren_run
    reference = rollout(model, fast_step=False)
    assert reference.lengths.tolist() == fast.lengths.tolist()
    for a, b in zip(reference.episodes, fast.episodes, strict=True):
        np.testing.assert_allclose(b.actions, a.actions, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast.returns, reference.returns, rtol=1e-4, atol=1e-4)
    d_head = SMALL["d_model"] // SMALL["n_heads"]
    memory = SMALL["n_layers"] * SMALL["n_heads"] * (d_head + 2) * 4
    assert reference.state_bytes_per_env_max == memory


def test_episodes_are_shared_out_like_sb3_and_n_envs_is_capped():
    model = make_model()
    result = rollout(model, n_episodes=5, n_envs=3, record=False)
    assert result.episode_env.tolist() == [0, 1, 1, 2, 2]  # (5 + i) // 3 episodes for env i
    assert result.episodes is None
    capped = rollout(model, n_episodes=2, n_envs=4, record=False)
    assert capped.n_envs == 2 and capped.episode_env.tolist() == [0, 1]


def test_model_mode_and_weights_are_left_as_they_were():
    model = make_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rollout(model, n_episodes=1, n_envs=1)
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_dropout_off_during_rollout():
    model = make_model(dropout=0.5).train()
    a = rollout(model, n_episodes=1, n_envs=1)
    b = rollout(model, n_episodes=1, n_envs=1)
    np.testing.assert_array_equal(a.episodes[0].actions, b.episodes[0].actions)


def test_observation_shape_mismatch_names_env_expected_and_got():
    model = build_decision_model(SMALL, 17, ACT_DIM)
    with pytest.raises(
        ValueError, match=r"Hopper-v5 gives observations .*\(11,\).*expects shape \(17,\)"
    ):
        evaluate_agent(model, "Hopper-v5", TARGET, n_episodes=1)
    model = build_decision_model(SMALL, OBS_DIM, 6)
    with pytest.raises(
        ValueError, match=r"Hopper-v5 takes actions .*\(3,\).*predicts shape \(6,\)"
    ):
        evaluate_agent(model, "Hopper-v5", TARGET, n_episodes=1)


def test_bad_arguments_are_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match="n_episodes must be >= 1"):
        evaluate_agent(model, ENV, TARGET, n_episodes=0)
    with pytest.raises(ValueError, match="autoreset_mode 'Disabled' is not supported"):
        evaluate_agent(model, ENV, TARGET, n_episodes=1, autoreset_mode="Disabled")
    with pytest.raises(TypeError, match="needs a DecisionModel"):
        evaluate_agent(torch.nn.Linear(2, 2), ENV, TARGET, n_episodes=1)


# --------------------------------------------------------------------------- overlap
FAIL_ENV = "aaren-rl-test/HopperFailsAtStep5-v0"


class FailAtStep5(gym.Wrapper):
    """Hopper whose simulator raises at the fifth step of the env seeded with 3."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.fails, self.t = seed == 3, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self.t += 1
        if self.fails and self.t == 5:
            raise RuntimeError("the simulator broke")
        return self.env.step(action)


if FAIL_ENV not in gym.registry:
    gym.register(FAIL_ENV, entry_point=lambda **kw: FailAtStep5(gym.make("Hopper-v5", **kw)))


def _no_workers_left() -> bool:
    import multiprocessing

    return not [p for p in multiprocessing.active_children() if p.name.startswith("aaren-rl-envs")]


@pytest.mark.parametrize(("n_envs", "n_workers"), [(4, 1), (5, 2)])
def test_overlap_plays_exactly_the_episodes_of_sync(n_envs, n_workers):
    """Worker groups stepped while the fast step runs on another group: every env plays the
    same episodes, with bit-identical actions and returns, as in one synchronous vector env (the
    numba step computes each row alike whatever the batch)."""
    model = make_model()
    kw = dict(n_episodes=8, n_envs=n_envs)
    sync = rollout(model, **kw)
    overlap = rollout(model, vectorization_mode="overlap", n_workers=n_workers, **kw)
    assert overlap.episode_env.tolist() == sync.episode_env.tolist()
    assert overlap.lengths.tolist() == sync.lengths.tolist()
    assert len(set(sync.lengths.tolist())) > 1
    np.testing.assert_array_equal(overlap.returns, sync.returns)
    for a, b in zip(overlap.episodes, sync.episodes, strict=True):
        assert a.env_index == b.env_index
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.observations, b.observations)
    assert overlap.state_bytes_per_env_max == sync.state_bytes_per_env_max
    assert _no_workers_left()


def test_overlap_with_a_pytorch_policy_plays_the_same_episodes_within_rounding():
    """A policy on PyTorch's matmuls (here a KV-cache Transformer) rounds by batch size (MKL
    picks kernels by shape), so the groups' actions equal sync's within float32 rounding."""
    model = make_model(**BACKBONES["transformer-kv-full"])
    sync = rollout(model, n_episodes=8, n_envs=4)
    overlap = rollout(model, n_episodes=8, n_envs=4, vectorization_mode="overlap")
    assert overlap.lengths.tolist() == sync.lengths.tolist()
    np.testing.assert_allclose(overlap.returns, sync.returns, rtol=0, atol=1e-4)
    for a, b in zip(overlap.episodes, sync.episodes, strict=True):
        np.testing.assert_allclose(a.actions, b.actions, rtol=0, atol=1e-5)


def test_split_groups_is_contiguous_and_balanced():
    from aaren_rl.agents.overlap_envs import split_groups

    assert split_groups(5, 2) == [(0, 3), (3, 5)]
    assert split_groups(16, 2) == [(0, 8), (8, 16)]
    assert split_groups(2, 4) == [(0, 1), (1, 2)]  # capped at one env per group
    with pytest.raises(ValueError, match="n_groups >= 1"):
        split_groups(4, 0)


@pytest.mark.parametrize("first_in_process", [False, True])
def test_batched_worker_envs_step_like_one_sync_vector_env(first_in_process):
    from aaren_rl.agents.overlap_envs import BatchedWorkerEnvs

    sync = gym.make_vec("Hopper-v5", num_envs=3, vectorization_mode="sync")
    actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 3, ACT_DIM))
    with BatchedWorkerEnvs("Hopper-v5", 3, 2, first_in_process=first_in_process) as pool:
        assert pool.groups == [(0, 2), (2, 3)]
        want, _ = sync.reset(seed=4)
        np.testing.assert_array_equal(np.concatenate(pool.reset(seed=4)), want)
        for a in actions:  # 30 steps: some envs fall and autoreset on the way
            for k, (lo, hi) in enumerate(pool.groups):
                pool.step_async(k, a[lo:hi])
            got = [pool.step_wait(k) for k in range(2)]
            want = sync.step(a)[:4]
            for i in range(4):
                np.testing.assert_array_equal(np.concatenate([g[i] for g in got]), want[i])
        with pytest.raises(RuntimeError, match="not stepping"):
            pool.step_wait(1)
    sync.close()
    assert _no_workers_left()


def test_overlap_worker_error_names_the_group_and_every_worker_ends():
    from aaren_rl.agents.overlap_envs import WorkerError

    model = make_model()
    with pytest.raises(WorkerError, match=r"worker 1 \(envs 2 to 3\) failed(?s:.*)simulator broke"):
        evaluate_agent(
            model, FAIL_ENV, TARGET, n_episodes=8, n_envs=4, vectorization_mode="overlap"
        )
    assert _no_workers_left()


def test_overlap_keyboard_interrupt_ends_every_worker(monkeypatch):
    from aaren_rl.agents.fast_step import FastDecisionStep

    calls = {"n": 0}
    act = FastDecisionStep.act

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return act(self, *args)

    monkeypatch.setattr(FastDecisionStep, "act", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rollout(make_model(), n_episodes=8, n_envs=4, vectorization_mode="overlap")
    assert calls["n"] == 7
    assert _no_workers_left()


def test_overlap_bad_arguments_are_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match="vectorization_mode must be one of"):
        rollout(model, vectorization_mode="threads")
    with pytest.raises(ValueError, match="n_workers must be >= 0"):
        rollout(model, vectorization_mode="overlap", n_workers=-1)


# --------------------------------------------------------------------------- evaluate CLI
TASK = {
    "name": "hopper-test",
    "env_id": "Hopper-v5",
    "reward_scale": 1e-3,
    "target_returns": [3600.0, 1800.0],
    "reference_scores": (-20.272305, 3234.3),
    "reference_source": "d4rl-v2",
    "max_episode_steps": 20,
}


@pytest.fixture
def checkpoint(tmp_path):
    from aaren_rl.agents.checkpoint import save_checkpoint

    model = make_model(seed=1)
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=7,
        agent_config={"model": model.config.to_dict()},
        train_config={},
        task=dict(TASK),
        rng_state={},
    )
    return model, path


def test_evaluate_cli_reports_what_the_rollout_measures(checkpoint, tmp_path, capsys):
    from aaren_rl.cli import main

    model, path = checkpoint
    out = tmp_path / "eval.json"
    argv = ["evaluate", str(path), "--episodes", "3", "--envs", "2", "--seed", "5"]
    assert main([*argv, "--json", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "3600" in printed and "1800" in printed and "state/env" in printed
    report = json.loads(out.read_text())
    assert report["step"] == 7 and report["env_id"] == "Hopper-v5"
    assert [r["target_return"] for r in report["results"]] == [3600.0, 1800.0]
    low, high = TASK["reference_scores"]
    for row in report["results"]:
        # the checkpoint's model acts exactly like the model that was saved
        direct = evaluate_agent(
            model, "Hopper-v5", row["target_return"], 3, n_envs=2, seed=5, max_episode_steps=20
        )
        np.testing.assert_allclose(row["returns"], direct.returns, rtol=0, atol=1e-9)
        scores = 100 * (np.asarray(row["returns"]) - low) / (high - low)
        assert row["normalized_mean"] == pytest.approx(scores.mean())
        assert row["normalized_std"] == pytest.approx(scores.std())
        assert max(row["lengths"]) <= 20

    # an existing results file is not overwritten unasked
    before = out.read_text()
    assert main([*argv, "--json", str(out), "--no-progress"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == before
    extra = ["--target-return", "100", "--profile-steps", "12", "--json", str(out), "--force"]
    assert main([*argv, *extra]) == 0
    again = json.loads(out.read_text())
    assert [r["target_return"] for r in again["results"]] == [100.0]
    d_head = SMALL["d_model"] // SMALL["n_heads"]
    memory = SMALL["n_layers"] * SMALL["n_heads"] * (d_head + 2) * 4
    per_env = memory + ACT_DIM * 4 + 8 + 1  # the fast step's pending action, timestep, flag
    assert [(p["t"], p["state_bytes_per_env"]) for p in again["profile"]] == [
        (1, per_env),
        (10, per_env),
        (12, per_env),
    ]
    assert main([*argv, *extra, "--reference-step"]) == 0  # the model's own step
    reference = json.loads(out.read_text())
    assert [p["state_bytes_per_env"] for p in reference["profile"]] == [memory] * 3
    np.testing.assert_allclose(
        reference["results"][0]["returns"], again["results"][0]["returns"], rtol=1e-4, atol=1e-4
    )


def test_evaluate_cli_overlap_gives_the_sync_returns(checkpoint, tmp_path):
    from aaren_rl.cli import main

    _, path = checkpoint
    argv = ["evaluate", str(path), "--episodes", "4", "--envs", "4", "--no-progress"]
    reports = []
    for name, extra in (
        ("sync", []),
        ("overlap", ["--vectorization", "overlap", "--workers", "1"]),
    ):
        out = tmp_path / f"{name}.json"
        assert main([*argv, *extra, "--json", str(out), "--target-return", "3600"]) == 0
        reports.append(json.loads(out.read_text()))
    sync, overlap = (r["results"][0] for r in reports)
    assert overlap["returns"] == sync["returns"] and overlap["lengths"] == sync["lengths"]


def test_evaluate_cli_clip_return_needs_a_return_max(checkpoint, capsys):
    from aaren_rl.cli import main

    _, path = checkpoint  # make_model() has no return_max (inf)
    argv = ["evaluate", str(path), "--episodes", "1", "--clip-return", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "no return_max" in err


def test_evaluate_cli_bad_checkpoint_path_is_a_clear_error(tmp_path, capsys):
    from aaren_rl.cli import main

    missing = tmp_path / "nope.pt"
    assert main(["evaluate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such checkpoint" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err


def test_profile_steps_tracks_state_bytes_per_step():
    from aaren_rl.agents.rollout import profile_steps

    aaren = profile_steps(make_model(), n_steps=30, n_envs=2)
    d_head = SMALL["d_model"] // SMALL["n_heads"]
    assert (
        aaren.state_bytes_per_env == SMALL["n_layers"] * SMALL["n_heads"] * (d_head + 2) * 4
    ).all()
    assert aaren.latency_ms.shape == (30,) and (aaren.latency_ms > 0).all()
    kv = profile_steps(make_model(**BACKBONES["transformer-kv-full"]), n_steps=30, n_envs=2)
    per_token = SMALL["n_layers"] * 2 * SMALL["d_model"] * 4 + 1
    np.testing.assert_array_equal(kv.state_bytes_per_env, 3 * per_token * np.arange(1, 31))
    assert kv.at(30)[1] == 90 * per_token
