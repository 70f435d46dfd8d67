"""Screen AarenPPO's defaults on sb3-contrib's RecurrentPPO performance test (a measurement).

sb3-contrib's ``tests/test_lstm.py::test_ppo_lstm_performance`` trains RecurrentPPO for 50k
steps on CartPole observing positions only (8 envs, ``VecNormalize`` on observations and
rewards, ``n_steps=128``, ``learning_rate=7e-4``, ``batch_size=256``, ``n_epochs=10``,
``max_grad_norm=1``, ``gae_lambda=0.98``, ``net_arch=dict(vf=[64], pi=[])``,
``ortho_init=False``) and asserts that 10 deterministic episodes on the training env average
more than 450. :func:`run_performance_test` is that test for AarenPPO (the LSTM keywords
dropped, the EvalCallback left out: it only logs and changes no training step); each
candidate below adds its memory and PPO settings as explicit keywords, so that the screen does
not depend on what the defaults are while it runs. The rule that picks the defaults from the
results is in docs/sb3.md ("Defaults").

    .venv/bin/python scripts/screen_sb3_defaults.py --candidates d-tkl001 --seeds 0 1 2
    .venv/bin/python scripts/screen_sb3_defaults.py --report

Results go to ``docs/benchmarks/sb3/defaults_screen.json`` after every run (atomically); a rerun skips
the (candidate, seed) pairs already there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_sb3 import AAREN_PAPER, AAREN_PRESET  # scripts/, beside this file
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from aaren_rl.files import write_json_atomic
from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.envs import POSITIONS_ID, register_memory_envs

OUT = Path("docs/benchmarks/sb3/defaults_screen.json")

# the test's own settings (sb3-contrib tests/test_lstm.py), LSTM keywords dropped
TEST_ALGO = dict(
    n_steps=128,
    learning_rate=0.0007,
    batch_size=256,
    n_epochs=10,
    max_grad_norm=1,
    gae_lambda=0.98,
)
TEST_POLICY = dict(net_arch=dict(vf=[64], pi=[]), ortho_init=False)
THRESHOLD = 450.0

# the benchmark's memory preset, and the defaults before this screen (what the review ran:
# the benchmark's paper-Aaren agent)
PRESET = AAREN_PRESET
OLD = AAREN_PAPER

# name -> (policy keywords, algorithm keywords); fixed before the screen (docs/sb3.md). Every
# candidate sets target_kl, sequence_length and ent_coef itself (ent_coef 0 unless named), so
# that a rerun gives the same runs whatever the defaults are.
CANDIDATES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "d-old": (OLD, dict(target_kl=None, sequence_length=None)),
    "d-preset": (PRESET, dict(target_kl=None, sequence_length=None)),
    "d-tkl001": (PRESET, dict(target_kl=0.01, sequence_length=None)),
    "d-tkl002": (PRESET, dict(target_kl=0.02, sequence_length=None)),
    "d-tkl001-sep": ({**PRESET, "critic": "separate"}, dict(target_kl=0.01, sequence_length=None)),
    "d-tkl001-seq32": (PRESET, dict(target_kl=0.01, sequence_length=32)),
    "d-tkl001-ent001": (PRESET, dict(target_kl=0.01, sequence_length=None, ent_coef=0.01)),
}


def make_env(n_envs: int) -> VecNormalize:
    """The test's training env: 8 (or ``n_envs``) CartPolePositions-v1, normalised."""
    register_memory_envs()
    return VecNormalize(make_vec_env(POSITIONS_ID, n_envs=n_envs))


def run_performance_test(
    seed: int,
    policy_kwargs: dict[str, Any] | None = None,
    algo_kwargs: dict[str, Any] | None = None,
    timesteps: int = 50_000,
) -> dict[str, Any]:
    """Train as the test does and evaluate as it does -> ``{"return", "std", "seconds"}``."""
    env = make_env(8)
    model = AarenPPO(
        "MlpAarenPolicy",
        env,
        seed=seed,
        policy_kwargs={**TEST_POLICY, **(policy_kwargs or {})},
        **{**TEST_ALGO, **(algo_kwargs or {})},
    )
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    seconds = time.perf_counter() - start
    mean, std = evaluate_policy(model, env, n_eval_episodes=10)
    return {"return": float(mean), "std": float(std), "seconds": seconds}


def report(runs: list[dict[str, Any]]) -> str:
    """A markdown table: candidate, returns per seed, seconds per run."""
    rows = ["| candidate | seeds | returns | all > 450 | mean | s/run |", "| --- " * 6 + "|"]
    for name in CANDIDATES:
        mine = sorted((r for r in runs if r["candidate"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        rets = [r["return"] for r in mine]
        rows.append(
            f"| `{name}` | {', '.join(str(r['seed']) for r in mine)} "
            f"| {', '.join(f'{x:.0f}' for x in rets)} "
            f"| {'yes' if min(rets) > THRESHOLD else 'no'} | {np.mean(rets):.1f} "
            f"| {np.mean([r['seconds'] for r in mine]):.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", nargs="*", default=[], choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    if args.report:
        print(report(data["runs"]))
        return 0
    for name in args.candidates:
        policy_kwargs, algo_kwargs = CANDIDATES[name]
        algo_kwargs = {"ent_coef": 0.0, **algo_kwargs}  # PPO's, as when the screen ran
        for seed in args.seeds:
            if any(r["candidate"] == name and r["seed"] == seed for r in data["runs"]):
                continue
            result = run_performance_test(seed, policy_kwargs, algo_kwargs, args.timesteps)
            result.update(
                candidate=name,
                seed=seed,
                timesteps=args.timesteps,
                threads=args.threads,
                torch=torch.__version__,
                machine=platform.machine(),
            )
            print(json.dumps(result), flush=True)
            data["runs"].append(result)
            write_json_atomic(args.out, data, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
