"""rl-zoo3 with AarenPPO: the launcher trains from hyperparams/aaren_ppo.yml and the zoo's
``enjoy`` replays the result with the memory carried between steps."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from script_helpers import load_script
from torch import nn

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.zoo import hyperparams_file, main

ROOT = Path(__file__).resolve().parents[1]


def zoo(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "aaren_rl.sb3.zoo", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def load_bench():
    return load_script("bench_sb3")


def test_hyperparams_are_the_benchmarks_settings():
    bench = load_bench()
    params = yaml.safe_load(hyperparams_file().read_text())
    assert set(params) == set(bench.TASKS)
    for task, settings in params.items():
        spec = bench.TASKS[task]
        assert settings["policy"] == "MlpAarenPolicy"
        assert settings["n_envs"] == spec["n_envs"]
        assert settings["n_timesteps"] == spec["timesteps"]
        assert settings["sequence_length"] == spec["sequence_length"]
        expected = {**spec["hp"], "target_kl": None, **bench.AAREN_HP.get(task, {})}
        for key, value in expected.items():
            if callable(value):  # bench's linear(x) is the zoo's "lin_x"
                assert settings[key] == value.__name__, (task, key)
            else:
                assert settings.get(key) == value, (task, key)
        kwargs = eval(settings["policy_kwargs"], {"nn": nn})  # as rl-zoo3 reads it
        assert kwargs == {**bench.ZOO_POLICY, **bench.AAREN_PRESET}, task
        normalize = settings.get("normalize", False)
        normalize = eval(normalize) if isinstance(normalize, str) else normalize
        assert normalize == (spec["normalize"] or False)


def test_train_then_enjoy(tmp_path):
    pytest.importorskip("rl_zoo3")
    zoo(tmp_path, "train", "--algo", "aaren_ppo", "--env", "CartPoleNoVel-v1", "-f", "logs",
        "--seed", "0", "-n", "512", "--eval-freq", "-1", "--num-threads", "1")  # fmt: skip
    run = tmp_path / "logs" / "aaren_ppo" / "CartPoleNoVel-v1_1"
    model = AarenPPO.load(run / "CartPoleNoVel-v1.zip")
    assert model.num_timesteps == 512
    assert model.target_kl == 0.01 and model.n_epochs == 20 and model.sequence_length == 32
    policy = model.policy
    assert (policy.n_heads, policy.short_conv, policy.critic, policy.decay) == (4, 4, "joint", True)
    assert (run / "CartPoleNoVel-v1" / "vecnormalize.pkl").is_file()  # normalize: obs only

    out = zoo(tmp_path, "enjoy", "--algo", "aaren_ppo", "--env", "CartPoleNoVel-v1", "-f", "logs",
              "--exp-id", "1", "-n", "200", "--no-render", "--deterministic")  # fmt: skip
    rewards = [float(x) for x in re.findall(r"Episode Reward: ([\d.]+)", out)]
    assert rewards, out[-2000:]
    # the same replay by hand: the zoo's test env, the memory carried, restarted per episode
    replay = subprocess.run(
        [sys.executable, "-c", REPLAY, str(run)], capture_output=True, text=True, timeout=300
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    expected = [float(x) for x in re.findall(r"^REPLAY ([\d.]+)", replay.stdout, re.M)]
    np.testing.assert_allclose(rewards, expected[: len(rewards)])


REPLAY = """
import sys, numpy as np
from aaren_rl.sb3.zoo import register
register()
from rl_zoo3.utils import create_test_env, get_saved_hyperparams
from aaren_rl.sb3 import AarenPPO
run = sys.argv[1]
hyper, stats = get_saved_hyperparams(run + "/CartPoleNoVel-v1", norm_reward=False, test_mode=True)
env = create_test_env("CartPoleNoVel-v1", n_envs=1, stats_path=stats, seed=0, log_dir=None,
                      should_render=False, hyperparams=hyper)
model = AarenPPO.load(run + "/CartPoleNoVel-v1.zip", env=env, seed=0)
obs, state, start, total = env.reset(), None, np.ones(1, bool), 0.0
for _ in range(200):
    action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
    obs, reward, start, infos = env.step(action)
    total += float(reward[0])
    if start[0]:
        print("REPLAY", infos[0].get("episode", {}).get("r", total))
        total = 0.0
"""


def test_launcher_usage_and_conf_default(monkeypatch):
    assert main([]) == 2 and main(["fly"]) == 2
    seen = {}

    def fake_train():
        seen["argv"] = list(sys.argv)

    pytest.importorskip("rl_zoo3")
    import rl_zoo3.train

    monkeypatch.setattr(rl_zoo3.train, "train", fake_train)
    main(["train", "--algo", "aaren_ppo", "--env", "CartPoleNoVel-v1"])
    assert seen["argv"][-2:] == ["--conf-file", str(hyperparams_file())]
    main(["train", "--algo", "ppo", "--env", "CartPole-v1"])  # the zoo's own file for its algos
    assert "--conf-file" not in seen["argv"]
    from rl_zoo3.utils import ALGOS

    assert ALGOS["aaren_ppo"] is AarenPPO
