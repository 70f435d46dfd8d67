"""Where AarenPPO's wall time goes: collection, update and the rest (one thread).

Builds the benchmark's AarenPPO (``scripts/bench_sb3.py``: the task's zoo settings and
``AAREN_PRESET``) and times ``collect_rollouts`` and ``train`` inside ``learn``; the rest of
``learn`` is SB3's own work (logging, callbacks' set-up). ``--cprofile N`` prints the N
functions with the most cumulative time (collection's policy step and env step, the update's
forward, backward and optimiser step).

    PYTHONPATH=$PWD .venv/bin/python scripts/profile_aaren_ppo.py --timesteps 10000
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sb3 import TASKS, build, make_env, register_memory_envs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CartPoleNoVel-v1", choices=list(TASKS))
    parser.add_argument("--agent", default="aaren_ppo")
    parser.add_argument("--timesteps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cprofile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    register_memory_envs()
    spec = TASKS[args.task]
    venv = make_env(args.task, args.agent, spec["n_envs"], args.seed, spec["normalize"], True)
    model = build(args.agent, args.task, venv, args.seed)
    spent = {"collect_rollouts": 0.0, "train": 0.0}
    for name in spent:
        inner = getattr(model, name)

        def timed(*a, _inner=inner, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _inner(*a, **k)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(model, name, timed)
    profiler = cProfile.Profile() if args.cprofile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    model.learn(args.timesteps)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t0
    rest = wall - sum(spent.values())
    print(
        f"{args.task} {args.agent}: {model.num_timesteps} steps in {wall:.2f} s "
        f"({model.num_timesteps / wall:.0f} fps), load {os.getloadavg()[0]:.1f}, torch "
        f"{torch.__version__}, 1 thread"
    )
    for name, s in [*spent.items(), ("rest (SB3)", rest)]:
        print(f"  {name:18s} {s:7.2f} s  {100 * s / wall:5.1f}%")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
