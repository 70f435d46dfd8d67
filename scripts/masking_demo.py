"""Action masking with memory on MaskedRecall-v0 (a measurement, not a test).

Trains, per seed, MaskableAarenPPO with masks, the same without masks (an illegal move ends
the episode with -1), and sb3-contrib's MaskablePPO (masks, no memory), all with the same PPO
settings; AarenPPO's memory is the benchmark's preset. Records the training curve (mean
return of the episodes finished in each rollout), the illegal moves taken in training and a
final evaluation of 200 deterministic episodes (with masks where the agent trained with them);
``--report`` adds the steps until the curve first reaches 0.5 and 0.9.
Results go to a JSON file after every run (atomically); a rerun skips the runs already there.

    .venv/bin/python scripts/masking_demo.py --seeds 0 1 2 --threads 1
    .venv/bin/python scripts/masking_demo.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from aaren_rl.files import write_json_atomic
from aaren_rl.sb3.maskable import MaskableAarenPPO, evaluate_policy
from aaren_rl.sb3.masked_recall import MASKED_RECALL_ID, register_masked_recall

OUT = Path("docs/benchmarks/sb3/masking.json")
AGENTS = ("aaren_masked", "aaren_unmasked", "maskable_ppo")
PPO = dict(n_steps=64, batch_size=256, n_epochs=10, learning_rate=3e-4, ent_coef=0.01)
N_ENVS = 8
# PPO's own values where AarenPPO's defaults differ (the runs in docs/benchmarks/sb3/masking.json)
AAREN_PPO = dict(target_kl=None, sequence_length=None)
# the benchmark's memory preset (scripts/bench_sb3.py), written out
AAREN_MEMORY = dict(
    n_heads=4,
    decay=True,
    timestep_embedding=512,
    skip_features=True,
    critic="joint",
    short_conv=4,
    skip_conv=True,
)


class Curve(BaseCallback):
    """The mean return of the episodes that ended in each rollout, against steps."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list[tuple[int, float]] = []
        self._returns: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if "episode" in info:
                self._returns.append(float(info["episode"]["r"]))
        return True

    def _on_rollout_end(self) -> None:
        if self._returns:
            self.points.append((self.num_timesteps, float(np.mean(self._returns))))
        self._returns = []


def build(agent: str, seed: int):
    env = make_vec_env(MASKED_RECALL_ID, n_envs=N_ENVS, seed=seed)
    if agent == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO("MlpPolicy", env, seed=seed, **PPO), env
    return MaskableAarenPPO(
        "MlpAarenPolicy", env, seed=seed, policy_kwargs=AAREN_MEMORY, **PPO, **AAREN_PPO
    ), env


def run_one(agent: str, seed: int, timesteps: int) -> dict[str, Any]:
    model, env = build(agent, seed)
    curve = Curve()
    start = time.perf_counter()
    model.learn(timesteps, callback=curve, use_masking=agent != "aaren_unmasked")
    seconds = time.perf_counter() - start
    illegal_training = int(sum(env.get_attr("illegal_moves")))
    eval_env = make_vec_env(MASKED_RECALL_ID, n_envs=1, seed=10_000 + seed)
    if agent == "maskable_ppo":
        from sb3_contrib.common.maskable.evaluation import evaluate_policy as contrib_eval

        rewards, _ = contrib_eval(model, eval_env, 200, return_episode_rewards=True)
    else:
        masked = agent == "aaren_masked"
        rewards, _ = evaluate_policy(
            model, eval_env, 200, use_masking=masked, return_episode_rewards=True
        )
    reached = next((t for t, r in curve.points if r >= 0.9), None)
    return {
        "agent": agent,
        "seed": seed,
        "timesteps": timesteps,
        "seconds": seconds,
        "illegal_moves_training": illegal_training,
        "illegal_moves_eval": int(sum(eval_env.get_attr("illegal_moves"))),
        "eval_return": float(np.mean(rewards)),
        "steps_to_0.9": reached,
        "curve": curve.points,
    }


def first_reaching(curve: list[tuple[int, float]], level: float) -> int | None:
    """The steps of the first rollout whose finished episodes average ``level`` or more."""
    return next((t for t, r in curve if r >= level), None)


def report(runs: list[dict[str, Any]]) -> str:
    rows = [
        "| agent | seed | eval return (200 ep.) | training curve at the end | steps to 0.5 "
        "| steps to 0.9 | illegal moves (train / eval) | s |",
        "| --- " * 8 + "|",
    ]
    for run in sorted(runs, key=lambda r: (AGENTS.index(r["agent"]), r["seed"])):
        reached = [first_reaching(run["curve"], level) for level in (0.5, 0.9)]
        steps = ["never" if t is None else f"{t:,}" for t in reached]
        rows.append(
            f"| {run['agent']} | {run['seed']} | {run['eval_return']:.3f} "
            f"| {run['curve'][-1][1]:.2f} | {steps[0]} | {steps[1]} "
            f"| {run['illegal_moves_training']:,} / {run['illegal_moves_eval']} "
            f"| {run['seconds']:.0f} |"
        )
    return "\n".join(rows)


def run_cli(
    argv: list[str] | None,
    *,
    description: str,
    agents: tuple[str, ...],
    timesteps: int,
    out: Path,
    register: Callable[[], None],
    run_one: Callable[[str, int, int], dict[str, Any]],
    report: Callable[[list[dict[str, Any]]], str],
) -> int:
    """The demos' command line: run every (seed, agent) not yet in ``--out`` (resumable: each
    run is written atomically as it ends), or print the table with ``--report``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--agents", nargs="*", default=list(agents), choices=agents)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=timesteps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    register()
    data = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    if args.report:
        print(report(data["runs"]))
        return 0
    for seed in args.seeds:
        for agent in args.agents:
            if any(r["agent"] == agent and r["seed"] == seed for r in data["runs"]):
                continue
            run = run_one(agent, seed, args.timesteps)
            print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
            data["runs"].append(run)
            write_json_atomic(args.out, data, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(
        argv,
        description=__doc__.split("\n")[0],
        agents=AGENTS,
        timesteps=20_000,
        out=OUT,
        register=register_masked_recall,
        run_one=run_one,
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
