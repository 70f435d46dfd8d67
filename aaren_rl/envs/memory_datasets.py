"""``aaren-rl make-memory-dataset TASK``: offline data for the memory tasks, in seconds.

Each episode is played by one behaviour drawn at random (``--oracle``, ``--blind``, the rest
``noisy``), so the returns vary and conditioning on the return matters:

- ``oracle``: the scripted optimal policy, which reads the cue (T-maze) or the first card
  (RepeatFirst) from the episode's first observation;
- ``blind``: ignores the cue: T-maze: walks forward and turns up or down at random (succeeds
  half of the time); RepeatFirst: a uniform random suit every step;
- ``noisy``: the oracle with probability ``1 - eps`` per step and a uniform random action
  otherwise, with ``eps`` drawn per episode uniformly from ``[0, --epsilon]``.

Discrete actions are stored one-hot (``actions [N, n_actions]``), in D4RL's HDF5 layout,
written atomically by :func:`aaren_rl.data.d4rl_writer.write_d4rl` (never over an existing file
unless ``--overwrite``). The default output is the task's dataset name in the data folder, where
``aaren-rl train --task TASK`` looks for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.data.d4rl_writer import write_d4rl
from aaren_rl.data.paths import DATASET_SUFFIXES, data_dir
from aaren_rl.envs.popgym_tasks import repeat_first_oracle
from aaren_rl.envs.tmaze import FORWARD, UP, TMazeEnv, oracle_action

BEHAVIOURS = ("oracle", "blind", "noisy")
GENERATOR = "aaren-rl make-memory-dataset"


@dataclass(frozen=True)
class Mix:
    """Probabilities of the behaviours of an episode; ``epsilon``: the noisy one's largest eps."""

    oracle: float = 0.4
    blind: float = 0.4
    epsilon: float = 0.3

    def __post_init__(self) -> None:
        for name in ("oracle", "blind", "epsilon"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name} is {value}; expected a number in [0, 1]")
        if self.oracle + self.blind > 1.0 + 1e-12:
            raise ValueError(
                f"--oracle {self.oracle} + --blind {self.blind} exceed 1; the rest is noisy"
            )

    @property
    def probabilities(self) -> np.ndarray:
        noisy = max(0.0, 1.0 - self.oracle - self.blind)
        return np.array([self.oracle, self.blind, noisy])


Policy = Callable[[np.ndarray, int], int]


def behaviour_policy(
    env: gym.Env,
    behaviour: str,
    first_obs: np.ndarray,
    info: dict[str, Any],
    rng: np.random.Generator,
    eps: float,
) -> Policy:
    """``policy(observation [obs_dim], t) -> action`` for one episode of ``behaviour``.

    ``first_obs`` and ``info`` are what ``reset`` returned (the oracle reads the cue or the
    first card there); ``rng`` draws the blind and noisy choices (see the module docstring).
    """
    n_actions = int(env.action_space.n)
    if isinstance(env.unwrapped, TMazeEnv):
        cue = int(info["cue"])
        turn = int(rng.integers(2))

        def oracle(obs: np.ndarray, t: int) -> int:
            return oracle_action(cue, obs)

        def blind(obs: np.ndarray, t: int) -> int:
            return UP + turn if obs[2] > 0.5 else FORWARD

    elif type(env.unwrapped).__name__ == "RepeatFirst":
        suit = repeat_first_oracle(first_obs)

        def oracle(obs: np.ndarray, t: int) -> int:
            return suit

        def blind(obs: np.ndarray, t: int) -> int:
            return int(rng.integers(n_actions))

    else:
        raise ValueError(
            f"{env.spec.id if env.spec else env}: no scripted oracle for this environment; "
            "make-memory-dataset knows the T-maze and POPGym RepeatFirst"
        )
    if behaviour == "oracle":
        return oracle
    if behaviour == "blind":
        return blind

    def noisy(obs: np.ndarray, t: int) -> int:
        return int(rng.integers(n_actions)) if rng.random() < eps else oracle(obs, t)

    return noisy


def collect(
    env_id: str,
    n_episodes: int,
    mix: Mix = Mix(),
    seed: int = 0,
    max_episode_steps: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Play ``n_episodes`` episodes of ``env_id`` with the behaviour mix.

    Returns ``(arrays, stats)``: the D4RL arrays (``observations [N, obs_dim]``, one-hot
    ``actions [N, n_actions]``, ``rewards [N]``, ``terminals [N]``, ``timeouts [N]``,
    ``next_observations``) and per-behaviour episode counts and mean returns.
    """
    if n_episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {n_episodes}")
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": int(max_episode_steps)}
    env = gym.make(env_id, **kwargs)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(f"{env_id}: make-memory-dataset needs a Discrete action space")
    n_actions = int(env.action_space.n)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "next")}
    by_behaviour: dict[str, list[float]] = {b: [] for b in BEHAVIOURS}
    try:
        for episode in range(n_episodes):
            behaviour = BEHAVIOURS[int(rng.choice(3, p=mix.probabilities))]
            eps = float(rng.uniform(0.0, mix.epsilon))
            obs, info = env.reset(seed=seed * 1_000_003 + episode)
            policy = behaviour_policy(env, behaviour, obs, info, rng, eps)
            total, t, done = 0.0, 0, False
            while not done:
                action = policy(obs, t)
                next_obs, reward, terminated, truncated, info = env.step(action)
                rows["obs"].append(obs)
                rows["act"].append(action)
                rows["rew"].append(reward)
                rows["term"].append(terminated)
                rows["trunc"].append(truncated and not terminated)
                rows["next"].append(next_obs)
                total += float(reward)
                obs, t, done = next_obs, t + 1, terminated or truncated
            by_behaviour[behaviour].append(total)
    finally:
        env.close()
    arrays = {
        "observations": np.asarray(rows["obs"], dtype=np.float32),
        "actions": np.eye(n_actions, dtype=np.float32)[np.asarray(rows["act"])],
        "rewards": np.asarray(rows["rew"], dtype=np.float32),
        "terminals": np.asarray(rows["term"], dtype=bool),
        "timeouts": np.asarray(rows["trunc"], dtype=bool),
        "next_observations": np.asarray(rows["next"], dtype=np.float32),
    }
    returns = [r for b in BEHAVIOURS for r in by_behaviour[b]]
    stats = {
        "episodes": n_episodes,
        "transitions": int(len(arrays["rewards"])),
        "mean_return": float(np.mean(returns)),
        "behaviours": {
            b: {"episodes": len(v), "mean_return": float(np.mean(v)) if v else None}
            for b, v in by_behaviour.items()
        },
    }
    return arrays, stats


def default_output(task: Any) -> Path:
    """Where the task's loader looks: its dataset path, or ``data_dir()/NAME.hdf5``."""
    name = str(task.dataset)
    if "/" in name or Path(name).suffix in DATASET_SUFFIXES:
        return Path(name).expanduser()
    return data_dir() / f"{name}.hdf5"


def build_dataset(
    task: Any,
    out: str | Path | None = None,
    n_episodes: int = 300,
    mix: Mix = Mix(),
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Collect and write a task's dataset (a TaskSpec); returns ``(path, stats)``."""
    path = Path(out) if out is not None else default_output(task)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    arrays, stats = collect(task.env_id, n_episodes, mix, seed, task.max_episode_steps)
    next_obs = arrays.pop("next_observations")
    metadata = {
        "generator": GENERATOR,
        "task": task.name,
        "env_id": task.env_id,
        "seed": seed,
        "mix": {"oracle": mix.oracle, "blind": mix.blind, "epsilon": mix.epsilon},
        "mean_return": stats["mean_return"],
    }
    write_d4rl(
        path,
        {**arrays, "next_observations": next_obs},
        metadata=metadata,
        overwrite=overwrite,
    )
    return path, stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``aaren-rl make-memory-dataset``."""
    parser.add_argument("task", help="a memory task preset (tmaze-l20, tmaze-l100, repeat-first)")
    parser.add_argument("--episodes", type=int, default=300, help="episodes to play")
    parser.add_argument("--oracle", type=float, default=Mix.oracle, help="P(oracle episode)")
    parser.add_argument("--blind", type=float, default=Mix.blind, help="P(cue-ignoring episode)")
    parser.add_argument(
        "--epsilon", type=float, default=Mix.epsilon, help="noisy episodes: eps ~ U(0, EPSILON)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output .hdf5 (default: the task's dataset)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    from aaren_rl.data.tasks import load_task

    apply_threads(args.threads)
    try:
        task = load_task(args.task)
        mix = Mix(args.oracle, args.blind, args.epsilon)
        t0 = time.perf_counter()
        path, stats = build_dataset(task, args.out, args.episodes, mix, args.seed, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"aaren-rl make-memory-dataset: error: {exc}", file=sys.stderr)
        return 2
    parts = ", ".join(
        f"{b} {s['episodes']} (return {s['mean_return']:.3f})"
        for b, s in stats["behaviours"].items()
        if s["episodes"]
    )
    print(
        f"wrote {path}: {stats['episodes']} episodes, {stats['transitions']} transitions, mean "
        f"return {stats['mean_return']:.3f} [{parts}] in {time.perf_counter() - t0:.1f} s"
    )
    return 0
