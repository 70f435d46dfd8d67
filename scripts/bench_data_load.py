"""Measure how fast and how lean a 1M-transition D4RL-layout file loads (a measurement, not a test).

Writes a synthetic Hopper-sized file (observations [N, 11], actions [N, 3], next_observations,
infos/qpos, infos/qvel; 1000-step episodes ending on timeouts), then loads it in a fresh Python
process with ``load_d4rl`` and prints the load time and the peak resident memory, and the
speed of the two samplers.

    .venv/bin/python scripts/bench_data_load.py [--transitions 1000000] [--keep PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

MEASURE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
from aaren_rl.data.d4rl_reader import load_d4rl
from aaren_rl.data.samplers import PrefixSampler, WindowSampler
import_s = time.perf_counter() - t0
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
ds = load_d4rl(sys.argv[1])
load_s = time.perf_counter() - t0
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rates = {}
for name, sampler, batch in (
    ("window_K20_B64", WindowSampler(ds, context=20, seed=0), 64),
    ("prefix_max1000_B16", PrefixSampler(ds, max_len=1000, seed=0), 16),
    ("full_max1000_B16", PrefixSampler(ds, max_len=1000, mode="full", seed=0), 16),
):
    sampler.sample(batch)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 1.0:
        sampler.sample(batch)
        n += 1
    rates[name] = n / (time.perf_counter() - t0)
print(json.dumps({
    "transitions": ds.num_transitions,
    "episodes": ds.num_episodes,
    "import_s": import_s,
    "load_s": load_s,
    "peak_rss_mb_after_imports": rss_before,
    "peak_rss_mb_after_load": rss_after,
    "peak_rss_mb_after_sampling": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "batches_per_s": rates,
}))
"""


def write_synthetic(path: Path, transitions: int, episode_len: int = 1000, seed: int = 0) -> None:
    """A Hopper-sized D4RL-layout file: float32 arrays, timeouts every ``episode_len`` steps."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(transitions, 11)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["next_observations"] = np.roll(obs, -1, axis=0)
        f["actions"] = rng.uniform(-1, 1, size=(transitions, 3)).astype(np.float32)
        f["rewards"] = rng.uniform(0, 4, size=transitions).astype(np.float32)
        terminals = np.zeros(transitions, dtype=bool)
        timeouts = np.zeros(transitions, dtype=bool)
        timeouts[episode_len - 1 :: episode_len] = True
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f["infos/qpos"] = rng.normal(size=(transitions, 6)).astype(np.float32)
        f["infos/qvel"] = rng.normal(size=(transitions, 6)).astype(np.float32)
        f["infos/action_log_probs"] = rng.normal(size=transitions).astype(np.float32)
        f["metadata/algorithm"] = "synthetic"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--episode-len", type=int, default=1000, help="steps per episode")
    parser.add_argument("--keep", type=Path, default=None, help="write the file here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "synthetic-hopper.hdf5"
        if args.keep and path.exists():
            print(f"{path} exists; not overwriting it", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        write_synthetic(path, args.transitions, args.episode_len)
        write_s = time.perf_counter() - t0
        size_mb = os.path.getsize(path) / 2**20
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(file_mb=size_mb, write_s=write_s)
    print(
        f"file: {result['transitions']:,} transitions, {result['episodes']} episodes, {size_mb:.0f} MB"
    )
    print(f"load_d4rl: {result['load_s']:.2f} s (limit 30 s)")
    print(
        f"peak RSS: {result['peak_rss_mb_after_load']:.0f} MB after load "
        f"({result['peak_rss_mb_after_imports']:.0f} MB after imports; limit 2048 MB)"
    )
    for name, rate in result["batches_per_s"].items():
        print(f"sampler {name}: {rate:.0f} batches/s")
    print(json.dumps(result))
    ok = result["load_s"] < 30 and result["peak_rss_mb_after_load"] < 2048
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
