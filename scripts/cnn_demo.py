"""Image observations with memory on PixelRecall-v0 (a measurement, not a test).

AarenPPO with ``CnnAarenPolicy`` (the benchmark's memory preset) beside RecurrentPPO with
``CnnLstmPolicy`` and PPO with ``CnnPolicy`` (no memory: a guess, 1/4), the same PPO
settings and a NatureCNN of 64 features for each; 36 x 36 channel-last grey images, which SB3
transposes (``VecTransposeImage``). Records the training curve, the wall-clock fps and 200
deterministic evaluation episodes. Results go to a JSON file after every run (atomically); a
rerun skips the runs already there.

    .venv/bin/python scripts/cnn_demo.py --seeds 0 1 2 --threads 1
    .venv/bin/python scripts/cnn_demo.py --report
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from masking_demo import AAREN_MEMORY, AAREN_PPO, Curve, first_reaching, run_cli
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.pixel_recall import PIXEL_RECALL_ID, register_pixel_recall

OUT = Path("docs/benchmarks/sb3/cnn.json")
AGENTS = ("aaren_ppo", "recurrent_ppo", "ppo")
SETTINGS = dict(n_steps=64, batch_size=256, n_epochs=4, learning_rate=3e-4, ent_coef=0.01)
N_ENVS = 8
FEATURES = dict(features_extractor_kwargs=dict(features_dim=64))


def build(agent: str, seed: int):
    env = make_vec_env(PIXEL_RECALL_ID, n_envs=N_ENVS, seed=seed)
    if agent == "aaren_ppo":
        kwargs = dict(**FEATURES, **AAREN_MEMORY)
        return AarenPPO(
            "CnnAarenPolicy", env, seed=seed, policy_kwargs=kwargs, **SETTINGS, **AAREN_PPO
        )
    if agent == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        kwargs = dict(**FEATURES, lstm_hidden_size=64)
        return RecurrentPPO("CnnLstmPolicy", env, seed=seed, policy_kwargs=kwargs, **SETTINGS)
    return PPO("CnnPolicy", env, seed=seed, policy_kwargs=FEATURES, **SETTINGS)


def run_one(agent: str, seed: int, timesteps: int) -> dict[str, Any]:
    model = build(agent, seed)
    curve = Curve()
    start = time.perf_counter()
    model.learn(timesteps, callback=curve)
    seconds = time.perf_counter() - start
    eval_env = make_vec_env(PIXEL_RECALL_ID, n_envs=1, seed=10_000 + seed)
    rewards, _ = evaluate_policy(model, eval_env, 200, return_episode_rewards=True)
    return {
        "agent": agent,
        "seed": seed,
        "timesteps": model.num_timesteps,
        "seconds": seconds,
        "fps": model.num_timesteps / seconds,
        "eval_return": float(np.mean(rewards)),
        "curve": curve.points,
    }


def report(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| agent | seed | eval return (200 ep.) | training curve at the end | steps to 0.5 "
        "| steps to 0.9 | fps |",
        "| --- " * 7 + "|",
    ]
    for run in sorted(runs, key=lambda r: (AGENTS.index(r["agent"]), r["seed"])):
        reached = [first_reaching(run["curve"], level) for level in (0.5, 0.9)]
        steps = ["never" if t is None else f"{t:,}" for t in reached]
        rows.append(
            f"| {run['agent']} | {run['seed']} | {run['eval_return']:.3f} "
            f"| {run['curve'][-1][1]:.2f} | {steps[0]} | {steps[1]} | {run['fps']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        description=__doc__.split("\n")[0],
        agents=AGENTS,
        timesteps=30_000,
        out=OUT,
        register=register_pixel_recall,
        run_one=run_one,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
