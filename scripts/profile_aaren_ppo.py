"""Where AarenPPO's wall time goes: collection, update and the rest (one thread).

Builds the benchmark's AarenPPO (``scripts/bench_sb3.py``: the task's zoo settings and
``AAREN_PRESET``) and times ``collect_rollouts`` and ``train`` inside ``learn``; the rest of
``learn`` is SB3's own work (logging, callbacks' set-up). ``--cprofile N`` prints the N
functions with the most cumulative time (collection's policy step and env step, the update's
forward, backward and optimiser step). ``--ab N`` instead trains N pairs of fresh models,
alternating the one-chunk fast path of ``aaren_scan`` with the general chunked path, and
prints each run's fps: a before/after under the same load. ``--ab-collect N`` alternates
the rollouts' :class:`~aaren_rl.sb3.fast_collect.FastCollectionStep` with the policy's
reference ``forward`` the same way (the two give the same bits, so both runs do the same work).

    PYTHONPATH=$PWD .venv/bin/python scripts/profile_aaren_ppo.py --timesteps 10000
    PYTHONPATH=$PWD .venv/bin/python scripts/profile_aaren_ppo.py --timesteps 10000 --ab 3
    PYTHONPATH=$PWD .venv/bin/python scripts/profile_aaren_ppo.py --timesteps 10240 --ab-collect 3
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

import aaren_rl.nn.aaren_attention as aaren_attention
import aaren_rl.sb3.ppo as aaren_ppo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sb3 import TASKS, build, make_env, register_memory_envs  # noqa: E402


def timed_learn(task: str, agent: str, seed: int, timesteps: int, profiler=None):
    """Train a fresh benchmark model; -> (steps, wall seconds, {part: seconds})."""
    spec = TASKS[task]
    venv = make_env(task, agent, spec["n_envs"], seed, spec["normalize"], True)
    model = build(agent, task, venv, seed)
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
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    model.learn(timesteps)
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - t0
    venv.close()
    return model.num_timesteps, wall, spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="CartPoleNoVel-v1", choices=list(TASKS))
    parser.add_argument("--agent", default="aaren_ppo")
    parser.add_argument("--timesteps", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cprofile", type=int, default=0, help="print the top N functions")
    parser.add_argument("--ab", type=int, default=0, help="N pairs: fast path vs general scan")
    parser.add_argument(
        "--ab-collect", type=int, default=0, help="N pairs: fast collection step vs forward"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    register_memory_envs()
    header = f"{args.task} {args.agent}, torch {torch.__version__}, 1 thread"
    if args.ab_collect:
        fast_step = aaren_ppo.FastCollectionStep
        print(header)
        for pair in range(args.ab_collect):
            for label, step in (("forward", lambda policy: policy), ("fast", fast_step)):
                aaren_ppo.FastCollectionStep = step  # the policy itself: its reference forward
                steps, wall, spent = timed_learn(args.task, args.agent, args.seed, args.timesteps)
                n_envs = TASKS[args.task]["n_envs"]
                print(
                    f"  pair {pair} {label:8s} {steps / wall:6.0f} fps  collect "
                    f"{1e3 * spent['collect_rollouts'] / (steps / n_envs):5.3f} ms/step  train "
                    f"{spent['train']:5.2f} s  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        aaren_ppo.FastCollectionStep = fast_step
        return 0
    if args.ab:
        fast_path = aaren_attention.one_chunk_scan
        print(header)
        for pair in range(args.ab):
            for label, path in (("general", lambda *a: None), ("fast", fast_path)):
                aaren_attention.one_chunk_scan = path  # None: the general path takes over
                steps, wall, spent = timed_learn(args.task, args.agent, args.seed, args.timesteps)
                print(
                    f"  pair {pair} {label:8s} {steps / wall:6.0f} fps  collect "
                    f"{spent['collect_rollouts']:5.2f} s  train {spent['train']:5.2f} s  "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        aaren_attention.one_chunk_scan = fast_path
        return 0
    profiler = cProfile.Profile() if args.cprofile else None
    steps, wall, spent = timed_learn(args.task, args.agent, args.seed, args.timesteps, profiler)
    rest = wall - sum(spent.values())
    print(f"{header}: {steps} steps in {wall:.2f} s ({steps / wall:.0f} fps), load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    for name, sec in [*spent.items(), ("rest (SB3)", rest)]:
        print(f"  {name:18s} {sec:7.2f} s  {100 * sec / wall:5.1f}%")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
