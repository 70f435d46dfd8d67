"""``aaren-rl bench agent``: the decision agents' rollout and training costs, side by side.

Four measurements, at the agent presets' size (width 128, 3 layers, 1 head, Hopper's 11
observation and 3 action features), weights drawn at random (costs do not depend on them):

1. Policy latency: wall time of one environment step (``act`` + ``observe_action``) per
   environment, at 1, 16 and 64 environments, for Decision Aaren (its own step, and
   :class:`~aaren_rl.agents.fast_step.FastDecisionStep` on numba and on PyTorch), Decision
   Transformer's window recompute (K=20) and a full-attention Transformer KV cache at step t0
   (1,000: its cache filled by one parallel forward). The agents take turns in rounds (one
   block of steps each per round), so a load change on a shared machine hits them alike; the
   median step is reported.
2. Memory: the state bytes per environment (``state_nbytes``) after step t, up to 100,000 for
   the fast step (and its exact constancy), and the process's resident and peak memory
   (``/proc/self/statm``, ``getrusage``) at the same steps; the KV cache's and DT's bytes at
   t <= 1,000 for comparison.
3. Training: one forward + backward (mean-square loss) over ``[batch, T, 128]`` token
   sequences, T = 60, 300, 3,000: wall time and peak tensor memory (``aaren_rl.bench.common``'s
   instruments) for Aaren at several scan chunk sizes (the best is reported) and the causal
   Transformer, fused (``is_causal``) and masked (one padded token: the explicit mask of any
   padded or multi-episode batch).
4. Evaluation: wall time of N (100,000) Hopper-v5 environment steps driven by the fast step in
   synchronous and asynchronous vector environments, against the simulator alone at batch 1
   (random actions, same resets).

A short profile of the fast step closes the report (kernel against wrapper time at batch 1;
the matrix-multiply floor at 64 environments, and the floor set by this core's multiply-add peak,
:mod:`aaren_rl.cpu_peak`). Everything is written to ``OUT/bench-agent.json``,
``OUT/bench-agent.md`` and ``OUT/bench-agent-*.png``, stamped with the machine, the thread count
and the versions. ``--quick`` is a smoke run with small sizes (the command's own test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aaren_rl.bench.common import (
    cpu_name,
    format_bytes,
    format_table,
    git_commit,
    package_version,
    peak_memory_bytes,
    train_pass,
    write_atomic,
)
from aaren_rl.cli import add_threads_argument, apply_threads
from aaren_rl.cpu_peak import measure_fma_peak
from aaren_rl.files import save_figure_atomic
from aaren_rl.nn.backbone import state_nbytes

OBS_DIM, ACT_DIM = 11, 3
ENV_ID = "Hopper-v5"
STEM = "bench-agent"
FULL = dict(
    envs=(1, 16, 64),
    kv_t=1000,
    memory_steps=100_000,
    reference_memory_steps=2_000,
    memory_checkpoints=(1, 10, 100, 1_000, 10_000, 100_000),
    lengths=(60, 300, 3000),
    train_batch=8,
    chunks=(16, 32, 64, 128, 256),
    train_repeats=2,
    eval_steps=100_000,
    eval_modes=(
        ("sync", 1),
        ("sync", 16),
        ("sync", 64),
        ("overlap", 16),
        ("overlap", 64),
        # last: gymnasium's async env leaves a process per env winding down after close()
        ("async", 2),
        ("async", 16),
    ),
    rounds=3,
    block_seconds=1.0,
)
QUICK = dict(
    envs=(1, 4),
    kv_t=50,
    memory_steps=300,
    reference_memory_steps=50,
    memory_checkpoints=(1, 10, 100, 300),
    lengths=(60, 120),
    train_batch=2,
    chunks=(16, 64),
    train_repeats=1,
    eval_steps=300,
    eval_modes=(("sync", 1), ("sync", 2), ("overlap", 2)),
    rounds=2,
    block_seconds=0.05,
)
TARGETS = {"batch1_us": 83.0, "batch64_us": 20.0, "dt_ratio": 20.0, "train_ratio": 3.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aaren-rl bench agent``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench-agent"),
        help="output folder (runs/bench-agent)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: small sizes, seconds not minutes"
    )
    parser.add_argument(
        "--eval-steps", type=int, default=None, help="Hopper env-steps per evaluation (100000)"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to leave out: latency,memory,training,evaluation",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-workers",
        type=int,
        default=1,
        help="worker processes of the overlapped evaluation, besides this one (1: one per core "
        "of a 2-core machine)",
    )
    add_threads_argument(parser, default=1)


# --------------------------------------------------------------------------- the stamp
def stamp(args: argparse.Namespace) -> dict[str, Any]:
    """Machine, threads, versions and the command: what every result file carries."""
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}",
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": sys.version.split()[0],
            **{
                n: package_version(n)
                for n in ("torch", "numpy", "numba", "gymnasium", "mujoco", "aaren-rl")
            },
        },
        "git_commit": git_commit(),
        "quick": bool(args.quick),
        "command": "aaren-rl bench agent " + " ".join(sys.argv[3:]),
    }


# --------------------------------------------------------------------------- the agents
def make_agents(seed: int) -> dict[str, Any]:
    """The policies compared, by label: objects with the decision model's step API."""
    from aaren_rl.agents import fast_step_numba
    from aaren_rl.agents.decision_model import build_decision_model
    from aaren_rl.agents.fast_step import FastDecisionStep

    def model(**cfg):
        torch.manual_seed(seed)
        return build_decision_model(cfg, OBS_DIM, ACT_DIM, reward_scale=1e-3).eval()

    aaren = model(backbone="aaren")
    agents: dict[str, Any] = {"aaren-reference": aaren}
    if fast_step_numba.AVAILABLE:
        agents["aaren-fast-numba"] = FastDecisionStep(aaren, backend="numba")
    agents["aaren-fast-torch"] = FastDecisionStep(aaren, backend="torch")
    agents["dt-recompute-k20"] = model(backbone="transformer", step_mode="recompute")
    agents["transformer-kv-full"] = model(
        backbone="transformer", step_mode="kv_cache", full_attention=True
    )
    return agents


def _inputs(n_envs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_envs, OBS_DIM, generator=g), torch.full((n_envs,), 3600.0)


def _kv_prefill(model, n_envs: int, t0: int, seed: int):
    """The KV cache after ``t0`` steps, filled by one parallel forward."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n_envs, t0, OBS_DIM, generator=g)
    act = torch.rand(n_envs, t0, ACT_DIM, generator=g) * 2 - 1
    rtg = torch.full((n_envs, t0), 3600.0)
    ts = torch.arange(t0).clamp_max(model.config.max_timestep - 1).repeat(n_envs, 1)
    _, state = model(obs, act, rtg, ts)
    return state


class _Stepper:
    """One agent stepping ``n_envs`` rows from its prepared state, timed step by step."""

    def __init__(self, name: str, policy, n_envs: int, kv_t: int, seed: int) -> None:
        self.name, self.policy, self.n_envs = name, policy, n_envs
        self.obs, self.rtg = _inputs(n_envs, seed)
        self.t = 0
        if name == "transformer-kv-full":
            self.state = _kv_prefill(policy, n_envs, kv_t, seed)
            self.t = kv_t
        else:
            self.state = policy.initial_state(n_envs)
            for _ in range(25):  # past DT's window, and the numba kernel compiled
                self.step()
        self.times: list[float] = []

    def step(self) -> float:
        ts = torch.full((self.n_envs,), self.t, dtype=torch.long)
        t0 = time.perf_counter()
        action, self.state = self.policy.act(self.obs, self.rtg, ts, self.state)
        self.state = self.policy.observe_action(action, ts, self.state)
        elapsed = time.perf_counter() - t0
        self.t += 1
        return elapsed

    def block(self, seconds: float, min_steps: int = 3) -> None:
        start = time.perf_counter()
        n = 0
        while n < min_steps or time.perf_counter() - start < seconds:
            self.times.append(self.step())
            n += 1


def measure_latency(cfg: dict, seed: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Median µs per environment step, per agent and environment count (see the docstring)."""
    records = []
    with torch.inference_mode():
        agents = make_agents(seed)
        for n_envs in cfg["envs"]:
            steppers = [
                _Stepper(name, pol, n_envs, cfg["kv_t"], seed) for name, pol in agents.items()
            ]
            for _ in range(cfg["rounds"]):
                for s in steppers:
                    s.block(cfg["block_seconds"])
            for s in steppers:
                med = statistics.median(s.times)
                records.append(
                    {
                        "agent": s.name,
                        "n_envs": n_envs,
                        "steps_timed": len(s.times),
                        "step_us": med * 1e6,
                        "us_per_env": med * 1e6 / n_envs,
                        "t_at_start": cfg["kv_t"] if s.name == "transformer-kv-full" else 25,
                    }
                )
                log(f"latency {s.name:22s} envs={n_envs:3d}: {med * 1e6 / n_envs:9.1f} µs/env")
    return records


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure_memory(cfg: dict, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """State bytes per environment and process memory against the step t."""
    agents = make_agents(seed)
    fast = agents.get("aaren-fast-numba", agents["aaren-fast-torch"])
    checkpoints = set(cfg["memory_checkpoints"])
    obs, rtg = _inputs(1, seed)
    fast_rows = []
    with torch.inference_mode():
        state = fast.initial_state(1)
        for t in range(1, cfg["memory_steps"] + 1):
            ts = torch.full((1,), t - 1, dtype=torch.long)
            action, state = fast.act(obs, rtg, ts, state)
            state = fast.observe_action(action, ts, state)
            if t in checkpoints:
                row = {
                    "t": t,
                    "state_bytes_per_env": state_nbytes(state),
                    "rss_bytes": _rss_bytes(),
                    "peak_rss_bytes": _peak_rss_bytes(),
                }
                fast_rows.append(row)
                log(f"memory fast t={t}: {row}")
        ref = agents["aaren-reference"]
        ref_state = ref.initial_state(1)
        ref_bytes = set()
        for t in range(cfg["reference_memory_steps"]):
            ts = torch.full((1,), t, dtype=torch.long)
            action, ref_state = ref.act(obs, rtg, ts, ref_state)
            ref_state = ref.observe_action(action, ts, ref_state)
            ref_bytes.add(state_nbytes(ref_state))
        kv_rows = []
        for t in sorted(c for c in checkpoints if c <= cfg["kv_t"]):
            kv = _kv_prefill(agents["transformer-kv-full"], 1, t, seed)
            dt = agents["dt-recompute-k20"]
            dt_state = dt.initial_state(1)
            for s in range(min(t, 25)):
                ts = torch.full((1,), s, dtype=torch.long)
                action, dt_state = dt.act(obs, rtg, ts, dt_state)
                dt_state = dt.observe_action(action, ts, dt_state)
            kv_rows.append(
                {
                    "t": t,
                    "kv_cache_bytes": state_nbytes(kv),
                    "dt_window_bytes": state_nbytes(dt_state),
                }
            )
    sizes = {r["state_bytes_per_env"] for r in fast_rows}
    peaks = [r["peak_rss_bytes"] for r in fast_rows if r["t"] >= 1000] or [
        r["peak_rss_bytes"] for r in fast_rows
    ]
    return {
        "fast_step": fast_rows,
        "fast_state_bytes_constant": len(sizes) == 1,
        "fast_state_bytes": sorted(sizes),
        "reference_state_bytes": sorted(ref_bytes),
        "reference_steps": cfg["reference_memory_steps"],
        "peak_rss_growth_from_t1000": (max(peaks) - min(peaks)) / min(peaks) if peaks else None,
        "transformer": kv_rows,
    }


# --------------------------------------------------------------------------- training
def _set_chunk(net, chunk: int) -> None:
    for layer in net.layers:
        layer.attn.chunk_size = chunk


def measure_training(cfg: dict, seed: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """fwd+bwd wall time and peak tensor memory against the sequence length."""
    from aaren_rl.nn.aaren import AarenBackbone
    from aaren_rl.nn.aaren_attention import DEFAULT_CHUNK
    from aaren_rl.nn.transformer import TransformerBackbone

    device = torch.device("cpu")
    size = dict(d_model=128, n_layers=3, n_heads=1)
    torch.manual_seed(seed)
    aaren, transformer = AarenBackbone(**size), TransformerBackbone(**size)
    records = []
    for length in cfg["lengths"]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(cfg["train_batch"], length, 128, generator=g)
        padded = torch.ones(cfg["train_batch"], length, dtype=torch.bool)
        padded[:, -1] = False
        variants: list[tuple[str, Any, Any, int | None]] = [
            (f"aaren-c{c}", aaren, None, c) for c in cfg["chunks"]
        ]
        variants += [("transformer", transformer, None, None)]
        variants += [("transformer-masked", transformer, padded, None)]
        for label, net, mask, chunk in variants:
            if chunk is not None:
                _set_chunk(net, chunk)
            fn = train_pass(net, x, mask)
            fn()  # warm-up
            times = []
            for _ in range(cfg["train_repeats"]):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            peak = peak_memory_bytes(fn, device)
            rec = {
                "variant": label,
                "backbone": "aaren" if chunk is not None else "transformer",
                "chunk": chunk,
                "T": length,
                "batch": cfg["train_batch"],
                "seconds": statistics.median(times),
                "tokens_per_second": cfg["train_batch"] * length / statistics.median(times),
                "peak_bytes": peak,
            }
            records.append(rec)
            log(f"training {label:20s} T={length:5d}: {rec['seconds']:.3f} s, {format_bytes(peak)}")
    _set_chunk(aaren, DEFAULT_CHUNK)
    return records


def best_aaren(training: list[dict[str, Any]], length: int) -> dict[str, Any] | None:
    rows = [r for r in training if r["backbone"] == "aaren" and r["T"] == length]
    return min(rows, key=lambda r: r["seconds"]) if rows else None


# --------------------------------------------------------------------------- evaluation
class _Group:
    """The bookkeeping of one group of environments in an evaluation loop: each row's
    return-to-go and timestep, the NextStep autoreset, its policy state (None: random actions,
    the simulator alone)."""

    def __init__(self, policy, n: int, seed: int) -> None:
        self.policy, self.n = policy, n
        rng = np.random.default_rng(seed)
        self.random_actions = rng.uniform(-1, 1, size=(1024, n, ACT_DIM)).astype(np.float32)
        self.rtg = np.full(n, 3600.0, dtype=np.float32)
        self.timestep = np.zeros(n, dtype=np.int64)
        self.pending_reset = np.zeros(n, dtype=bool)
        self.state = policy.initial_state(n) if policy is not None else None
        self.i = 0
        self.episodes = 0  # episodes ended (each costs a reset)

    def actions(self, obs: np.ndarray) -> np.ndarray:
        if self.policy is None:
            return self.random_actions[self.i % 1024]
        t = torch.from_numpy(self.timestep)
        action, self.state = self.policy.act(
            torch.from_numpy(obs.astype(np.float32)), torch.from_numpy(self.rtg), t, self.state
        )
        action = action.clamp(-1.0, 1.0)
        self.state = self.policy.observe_action(action, t, self.state)
        return action.numpy()

    def observe(self, reward, terminated, truncated) -> int:
        """Book one vector step; the number of real env-steps in it."""
        stepping = ~self.pending_reset
        self.rtg -= np.where(stepping, reward, 0.0).astype(np.float32)
        self.timestep += stepping
        done = stepping & (terminated | truncated)
        self.episodes += int(done.sum())
        new_episode, self.pending_reset = self.pending_reset, done  # AutoresetMode.NEXT_STEP
        if new_episode.any():
            if self.policy is not None:
                self.state = self.policy.reset_state(self.state, torch.from_numpy(new_episode))
            self.rtg[new_episode] = 3600.0
            self.timestep[new_episode] = 0
        self.i += 1
        return int(stepping.sum())


def _episode_loop(envs, policy, n_steps: int, seed: int) -> tuple[float, int]:
    """Wall seconds for ``n_steps`` env-steps (all environments together) with ``policy``
    (None: random actions, the simulator alone), resetting rows at episode ends; and the
    number of episodes ended."""
    group = _Group(policy, envs.num_envs, seed)
    obs, _ = envs.reset(seed=seed)
    done_steps = 0
    start = time.perf_counter()
    while done_steps < n_steps:
        obs, reward, terminated, truncated, _ = envs.step(group.actions(obs))
        done_steps += group.observe(reward, terminated, truncated)
    return time.perf_counter() - start, group.episodes


def _plain_loop(
    env, policy, n_steps: int, seed: int, actions: np.ndarray | None = None
) -> tuple[float, int, np.ndarray]:
    """``n_steps`` steps of one plain ``gym.make`` env (no vector wrapper), reset at episode
    ends: driven by ``policy`` (batch 1), or, with ``policy`` None, the simulator alone with
    ``actions [n_steps, act]`` given (a replay: the same trajectory, resets included, when they
    are the actions a policy run recorded) or random ones. Returns the wall seconds, the
    episodes ended and the actions taken."""
    if actions is None:
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1, 1, size=(n_steps, ACT_DIM)).astype(np.float32)
    taken = np.empty((n_steps, ACT_DIM), dtype=np.float32) if policy is not None else actions
    obs, _ = env.reset(seed=seed)
    episodes, rtg, t = 0, 3600.0, 0
    state = policy.initial_state(1) if policy is not None else None
    one = torch.ones(1, dtype=torch.bool)
    start = time.perf_counter()
    for i in range(n_steps):
        if policy is not None:
            ts = torch.full((1,), t, dtype=torch.long)
            obs_t = torch.from_numpy(obs.astype(np.float32))[None]
            a, state = policy.act(obs_t, torch.full((1,), rtg), ts, state)
            a = a.clamp(-1.0, 1.0)
            state = policy.observe_action(a, ts, state)
            taken[i] = a[0].numpy()
        obs, reward, terminated, truncated, _ = env.step(taken[i])
        rtg -= float(reward)
        t += 1
        if terminated or truncated:
            obs, _ = env.reset()
            episodes += 1
            rtg, t = 3600.0, 0
            if policy is not None:
                state = policy.reset_state(state, one)
    return time.perf_counter() - start, episodes, taken


def _overlap_loop(pool, policy, n_steps: int, seed: int) -> tuple[float, int]:
    """:func:`_episode_loop` over :class:`~aaren_rl.agents.overlap_envs.BatchedWorkerEnvs`:
    group k's policy runs while the other groups simulate (one policy state per group; group 0
    simulates in this process, in its ``step_wait``)."""
    groups = [_Group(policy, stop - start, seed + start) for start, stop in pool.groups]
    first = pool.reset(seed=seed)
    done_steps = 0
    start = time.perf_counter()
    for k, group in enumerate(groups):
        pool.step_async(k, group.actions(first[k]))
    while done_steps < n_steps:
        for k, group in enumerate(groups):
            obs, reward, terminated, truncated = pool.step_wait(k)
            done_steps += group.observe(reward, terminated, truncated)
            pool.step_async(k, group.actions(obs))
    for k in range(len(groups)):  # the steps in flight count too
        _, reward, terminated, truncated = pool.step_wait(k)
        done_steps += groups[k].observe(reward, terminated, truncated)
    return time.perf_counter() - start, sum(g.episodes for g in groups)


def measure_evaluation(
    cfg: dict, seed: int, n_steps: int, log: Callable[[str], None], workers: int = 1
) -> list[dict[str, Any]]:
    """Wall time of ``n_steps`` Hopper-v5 env-steps: the simulator alone (at batch 1, and on
    the overlap's worker processes), and with the policy in each vectorization mode."""
    import gymnasium as gym

    from aaren_rl.agents.overlap_envs import BatchedWorkerEnvs
    from aaren_rl.agents.rollout import rollout_policy

    agents = make_agents(seed)
    policy = rollout_policy(agents["aaren-reference"])
    records = []
    overlap_ns = [n for mode, n in cfg["eval_modes"] if mode == "overlap"]
    with torch.inference_mode():
        # the plain env first: its policy run records the actions the replay then plays
        runs: list[tuple[str, str, int, Any]] = [
            ("aaren-fast", "plain", 1, policy),
            ("simulator-alone-replay", "plain", 1, None),
            ("simulator-alone", "plain", 1, None),
            ("simulator-alone", "single", 1, None),
        ]
        runs += [("simulator-alone", "overlap", n, None) for n in overlap_ns]
        runs += [("aaren-fast", mode, n, policy) for mode, n in cfg["eval_modes"]]
        recorded = None
        for label, mode, n, pol in runs:
            n_workers = min(workers, n - 1) if mode == "overlap" else None
            if mode == "overlap":  # group 0 here, one group per worker process
                envs = BatchedWorkerEnvs(ENV_ID, n, n_workers + 1, first_in_process=True)
            elif mode == "plain":
                envs = gym.make(ENV_ID)
            else:
                vec = "sync" if mode == "single" else mode
                envs = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode=vec)
            try:
                if mode == "plain":
                    replay = recorded if label == "simulator-alone-replay" else None
                    seconds, episodes, taken = _plain_loop(envs, pol, n_steps, seed, replay)
                    if pol is not None:
                        recorded = taken
                else:
                    loop = _overlap_loop if mode == "overlap" else _episode_loop
                    seconds, episodes = loop(envs, pol, n_steps, seed)
            finally:
                envs.close()
            rec = {
                "run": label,
                "vectorization": mode,
                "n_envs": n,
                "workers": n_workers,
                "env_steps": n_steps,
                "episodes": episodes,
                "seconds": seconds,
                "us_per_env_step": seconds / n_steps * 1e6,
            }
            records.append(rec)
            log(
                f"evaluation {label:16s} {mode:7s} n={n:3d} workers={n_workers}: {seconds:.2f} s, "
                f"{episodes} episodes"
            )
    return records


# --------------------------------------------------------------------------- profile
def measure_profile(seed: int) -> dict[str, Any]:
    """Where the fast step's time goes: the numba kernel against the wrapper at one row, the
    kernel's phases at 1 and 64 rows, and the matrix-multiply floor at 64 (multiply-adds per
    env step over MKL's measured rate at the feed-forward's shapes)."""
    from aaren_rl.agents import fast_step_numba

    out: dict[str, Any] = {}
    agents = make_agents(seed)
    fast = agents.get("aaren-fast-numba")
    d, f, layers, rows = 128, 512, 3, 129
    # per env step: 3 tokens x 3 layers of score+value, layer 0's from the folded tables
    # (rows x (obs + act + 1 return) multiply-adds); feed-forward at every token but the last
    # layer's R_t and a_{t-1}; the action head
    first = rows * (OBS_DIM + ACT_DIM + 1)
    macs = 3 * (layers - 1) * rows * d + first + (3 * (layers - 1) + 1) * 2 * d * f + ACT_DIM * d
    out["macs_per_env_step"] = macs
    out["macs_per_env_step_unfolded"] = macs - first + 3 * rows * d
    with torch.inference_mode():
        x = torch.randn(192, d)
        w1, w2 = torch.randn(f, d), torch.randn(d, f)
        h = torch.randn(192, f)
        for _ in range(5):
            x @ w1.t()
        reps = 50
        t0 = time.perf_counter()
        for _ in range(reps):
            x @ w1.t()
            h @ w2.t()
        mkl = 2 * 192 * d * f * reps / (time.perf_counter() - t0)
        out["mkl_macs_per_second"] = mkl
        out["matmul_floor_us_per_env"] = macs / mkl * 1e6
        peak = measure_fma_peak()
        if peak is not None:
            # the hard ceiling: every multiply-add independent and in registers
            out["fma_peak_macs_per_second"] = peak.macs_per_second
            out["arithmetic_floor_us_per_env"] = macs / peak.macs_per_second * 1e6
        if fast is not None:
            nat = fast._native
            out["phases_us_per_env"] = {}
            for n_envs in (1, 64):
                state = fast.initial_state(n_envs)
                obs, rtg = _inputs(n_envs, seed)
                t = np.full(n_envs, 25, dtype=np.int64)
                args = (nat, obs.numpy(), rtg.numpy(), t, state)
                fast_step_numba.profile_phases(*args, reps=3)  # warm
                phases = fast_step_numba.profile_phases(*args, reps=200 if n_envs == 1 else 40)
                out["phases_us_per_env"][n_envs] = {
                    k: v / n_envs * 1e6 for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
                }
            state = fast.initial_state(1)
            obs, rtg = _inputs(1, seed)
            ts = torch.full((1,), 25, dtype=torch.long)
            kernel_args = (
                nat.ints,
                nat.floats,
                nat.flat,
                nat.offs,
                obs.numpy(),
                rtg.numpy(),
                ts.numpy(),
                *nat.views(state),
                *nat.scratch(1),
            )
            kernel, whole = [], []
            for _ in range(400):
                state.has_pending.fill_(True)
                t0 = time.perf_counter()
                fast_step_numba.step(*kernel_args)
                kernel.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                a, state = fast.act(obs, rtg, ts, state)
                state = fast.observe_action(a, ts, state)
                whole.append(time.perf_counter() - t0)
            out["batch1_kernel_us"] = statistics.median(kernel) * 1e6
            out["batch1_act_observe_us"] = statistics.median(whole) * 1e6
    return out


# --------------------------------------------------------------------------- reporting
def _lat(results: dict, agent: str, n_envs: int) -> float | None:
    for r in results.get("latency", []):
        if r["agent"] == agent and r["n_envs"] == n_envs:
            return r["us_per_env"]
    return None


def claims(results: dict) -> dict[str, Any]:
    """The issue's targets against this run's figures (None where not measured)."""
    out: dict[str, Any] = {}
    envs = sorted({r["n_envs"] for r in results.get("latency", [])})
    if envs:
        best = (
            "aaren-fast-numba" if _lat(results, "aaren-fast-numba", envs[0]) else "aaren-fast-torch"
        )
        b1 = _lat(results, best, envs[0])
        out["fast_agent"] = best
        out["batch1_us"] = b1
        out["batch1_target_us"] = TARGETS["batch1_us"]
        dt = _lat(results, "dt-recompute-k20", envs[0])
        out["dt_over_fast_batch1"] = dt / b1 if dt and b1 else None
        ref = _lat(results, "aaren-reference", envs[0])
        out["reference_over_fast_batch1"] = ref / b1 if ref and b1 else None
        out["largest_batch"] = envs[-1]
        out["largest_batch_us_per_env"] = _lat(results, best, envs[-1])
    mem = results.get("memory")
    if mem:
        out["state_bytes_constant"] = mem["fast_state_bytes_constant"]
        out["peak_rss_growth"] = mem["peak_rss_growth_from_t1000"]
    training = results.get("training", [])
    if training:
        longest = max(r["T"] for r in training)
        a = best_aaren(training, longest)
        for variant in ("transformer", "transformer-masked"):
            tf = next((r for r in training if r["variant"] == variant and r["T"] == longest), None)
            if a and tf:
                out[f"train_speedup_vs_{variant}_T{longest}"] = tf["seconds"] / a["seconds"]
                out[f"train_memory_ratio_vs_{variant}_T{longest}"] = (
                    tf["peak_bytes"] / a["peak_bytes"] if a["peak_bytes"] else None
                )
        out["best_chunk_by_T"] = {r["T"]: best_aaren(training, r["T"])["chunk"] for r in training}
    ev = results.get("evaluation", [])
    sim = next(
        (r for r in ev if r["run"] == "simulator-alone" and r["vectorization"] == "single"), None
    )
    runs = [r for r in ev if r["run"] == "aaren-fast"]
    if sim and runs:
        fastest = min(runs, key=lambda r: r["seconds"])
        out["eval_fastest"] = f"{fastest['vectorization']} x{fastest['n_envs']}"
        out["eval_over_simulator"] = fastest["seconds"] / sim["seconds"]
        for key, run in (
            ("eval_over_plain_simulator", "simulator-alone"),
            ("eval_over_plain_simulator_replaying_the_policy", "simulator-alone-replay"),
        ):
            plain = next((r for r in ev if r["run"] == run and r["vectorization"] == "plain"), None)
            if plain:
                out[key] = fastest["seconds"] / plain["seconds"]
        for overlap in (r for r in runs if r["vectorization"] == "overlap"):
            same = next(
                (
                    r
                    for r in ev
                    if r["run"] == "simulator-alone"
                    and r["vectorization"] == "overlap"
                    and r["n_envs"] == overlap["n_envs"]
                ),
                None,
            )
            if same:
                key = f"eval_overlap_x{overlap['n_envs']}_over_simulator_on_same_workers"
                out[key] = overlap["seconds"] / same["seconds"]
    return out


def markdown(results: dict) -> str:
    """The report: stamp, one table per measurement, the targets."""
    st = results["stamp"]
    lines = [
        "# `aaren-rl bench agent`",
        "",
        f"- machine: {st['machine']}; torch threads: {st['torch_threads']}; load average at "
        f"start: {st['load_average']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items() if v),
        f"- commit {st['git_commit']}, {st['date_utc']} UTC; command: `{st['command']}`",
        "",
    ]
    lat = results.get("latency")
    if lat:
        envs = sorted({r["n_envs"] for r in lat})
        agents = list(dict.fromkeys(r["agent"] for r in lat))
        kv_t = next((r["t_at_start"] for r in lat if r["agent"] == "transformer-kv-full"), None)
        rows = []
        for a in agents:
            rows.append([a] + [f"{_lat(results, a, n):,.1f}" for n in envs])
        lines += [
            "## Policy step (act + observe_action), µs per environment, median",
            "",
            "```",
            format_table(["agent"] + [f"{n} envs" for n in envs], rows),
            "```",
            f"transformer-kv-full is measured at t = {kv_t} and later "
            f"(its cache filled by a parallel forward); the others from t = 25.",
            "",
        ]
    mem = results.get("memory")
    if mem:
        rows = [
            [
                f"{r['t']:,}",
                str(r["state_bytes_per_env"]),
                format_bytes(r["rss_bytes"]),
                format_bytes(r["peak_rss_bytes"]),
            ]
            for r in mem["fast_step"]
        ]
        lines += [
            "## Memory against the step t (fast step, one environment)",
            "",
            "```",
            format_table(["t", "state bytes", "process RSS", "process peak RSS"], rows),
            "```",
            f"State bytes exactly constant: {mem['fast_state_bytes_constant']} "
            f"({mem['fast_state_bytes']}); the model's own step holds "
            f"{mem['reference_state_bytes']} bytes (checked to t = {mem['reference_steps']:,}). "
            f"Peak RSS growth from t = 1,000 on: {100 * (mem['peak_rss_growth_from_t1000'] or 0):.2f}%.",
            "",
            "```",
            format_table(
                ["t", "KV cache bytes", "DT window bytes"],
                [
                    [f"{r['t']:,}", f"{r['kv_cache_bytes']:,}", f"{r['dt_window_bytes']:,}"]
                    for r in mem["transformer"]
                ],
            ),
            "```",
            "",
        ]
    training = results.get("training")
    if training:
        lengths = sorted({r["T"] for r in training})
        rows = []
        for variant in list(dict.fromkeys(r["variant"] for r in training)):
            cells = []
            for length in lengths:
                r = next(x for x in training if x["variant"] == variant and x["T"] == length)
                cells.append(f"{r['seconds'] * 1e3:,.0f} ms / {format_bytes(r['peak_bytes'])}")
            rows.append([variant] + cells)
        lines += [
            f"## Training fwd+bwd, batch {training[0]['batch']}, width 128, 3 layers: time / peak "
            "tensor memory",
            "",
            "```",
            format_table(["variant"] + [f"T={n}" for n in lengths], rows),
            "```",
            "",
        ]
    ev = results.get("evaluation")
    if ev:
        rows = [
            [
                r["run"],
                r["vectorization"],
                str(r["n_envs"]),
                str(r.get("workers") or "-"),
                f"{r['env_steps']:,}",
                f"{r.get('episodes', 0):,}",
                f"{r['seconds']:.2f}",
                f"{r['us_per_env_step']:.1f}",
            ]
            for r in ev
        ]
        lines += [
            f"## Evaluation on {ENV_ID}: wall time",
            "",
            "```",
            format_table(
                [
                    "run",
                    "vector env",
                    "envs",
                    "workers",
                    "env-steps",
                    "episodes",
                    "s",
                    "µs / env-step",
                ],
                rows,
            ),
            "```",
            "plain: one `gym.make` env; single: a one-env sync vector env; overlap: the envs in "
            "workers + 1 groups (`BatchedWorkerEnvs`), group 0 simulated in this process and each "
            "other group in a worker process, each group's policy computed while the others "
            "simulate. Every ended episode costs a reset, and random actions end "
            "episodes at another rate than the policy (the episodes column), so "
            "simulator-alone-replay plays the actions the plain policy run took, in the same "
            "env with the same seed: the same trajectory and resets without the policy, the "
            "fair batch-1 baseline.",
            "",
        ]
    prof = results.get("profile")
    if prof:
        lines += [
            "## Profile of the fast step",
            "",
            f"- {prof['macs_per_env_step']:,} multiply-adds per env step "
            f"({prof.get('macs_per_env_step_unfolded', 0):,} before layer 0 was folded); MKL's "
            f"matmul at the feed-forward's shapes runs {prof['mkl_macs_per_second'] / 1e9:.1f} "
            f"GMAC/s on this thread, a floor of {prof['matmul_floor_us_per_env']:.1f} µs per env "
            "for the matmuls alone.",
        ]
        if "fma_peak_macs_per_second" in prof:
            lines.append(
                f"- This core's float32 multiply-add peak (`aaren_rl.cpu_peak`: independent "
                f"chains in registers) is {prof['fma_peak_macs_per_second'] / 1e9:.1f} GMAC/s: "
                f"no code can do the step's multiply-adds in under "
                f"{prof['arithmetic_floor_us_per_env']:.1f} µs per env on this thread."
            )
        for n_envs, phases in (prof.get("phases_us_per_env") or {}).items():
            total = sum(phases.values())
            parts = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            lines.append(
                f"- kernel phases at {n_envs} env(s), µs per env (sum {total:.2f}; one Python "
                f"call per phase): {parts}."
            )
        if "batch1_kernel_us" in prof:
            lines.append(
                f"- batch 1: the numba kernel takes {prof['batch1_kernel_us']:.1f} µs of the "
                f"{prof['batch1_act_observe_us']:.1f} µs of act + observe_action (the rest: "
                "the Python wrapper: shape checks, tensor/array views, the returned tensor)."
            )
        lines.append("")
    lines += ["## Targets", "", "```", json.dumps(results.get("claims", {}), indent=1), "```", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    """PNG plots of each measurement; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aaren_rl.plots import legend_with_twins, readable_log_axes

    written = []
    title = (
        f"Decision Aaren vs Transformer backbones at the presets' size (width 128, 3 layers, "
        f"Hopper-v5's 11 -> 3): {results['stamp']['machine']}, "
        f"{results['stamp']['torch_threads']} thread(s)"
    )

    def save(fig, name: str) -> None:
        path = out / f"{STEM}-{name}.png"
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        save_figure_atomic(fig, path)
        plt.close(fig)
        written.append(path)

    lat = results.get("latency")
    if lat:
        envs = sorted({r["n_envs"] for r in lat})
        agents = list(dict.fromkeys(r["agent"] for r in lat))
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(agents)
        for i, a in enumerate(agents):
            ax.bar(
                [j + i * width for j in range(len(envs))],
                [_lat(results, a, n) for n in envs],
                width,
                label=a,
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(envs))], [f"{n} envs" for n in envs])
        ax.set_yscale("log")
        ax.set_xlabel("environments stepped together")
        ax.set_ylabel("µs per env step (act + observe_action)")
        ax.set_title("policy step time per environment", fontsize=9)
        readable_log_axes(ax)
        ax.legend(fontsize=7)
        save(fig, "latency")
    mem = results.get("memory")
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4))
        ts = [r["t"] for r in mem["fast_step"]]
        ax.plot(
            ts,
            [r["state_bytes_per_env"] for r in mem["fast_step"]],
            "o-",
            label="Aaren fast step state",
        )
        kv = mem["transformer"]
        if kv:
            ax.plot([r["t"] for r in kv], [r["kv_cache_bytes"] for r in kv], "s-", label="KV cache")
            ax.plot(
                [r["t"] for r in kv], [r["dt_window_bytes"] for r in kv], "^-", label="DT window"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step t")
        ax.set_ylabel("state bytes per env")
        ax2 = ax.twinx()
        ax2.plot(
            ts,
            [r["peak_rss_bytes"] / 2**20 for r in mem["fast_step"]],
            "k--",
            label="process peak RSS, Aaren fast step (right axis)",
        )
        ax2.set_ylabel("process peak RSS (MiB)")
        ax.set_title("state per environment against the step t", fontsize=9)
        readable_log_axes(ax)
        legend_with_twins(ax, ax2, fontsize=7, loc="upper left")
        save(fig, "memory")
    training = results.get("training")
    if training:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
        lengths = sorted({r["T"] for r in training})
        series = {"aaren (best chunk)": [best_aaren(training, n) for n in lengths]}
        for v in ("transformer", "transformer-masked"):
            series[v] = [
                next(r for r in training if r["variant"] == v and r["T"] == n) for n in lengths
            ]
        for label, rows in series.items():
            ax1.plot(lengths, [r["seconds"] for r in rows], "o-", label=label)
            ax2.plot(lengths, [r["peak_bytes"] / 2**20 for r in rows], "o-", label=label)
        panels = ((ax1, "fwd+bwd seconds", "training time"), (ax2, "peak tensor MiB", "memory"))
        for ax, ylabel, name in panels:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tokens T")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{name}: Aaren vs Transformer, batch of sequences", fontsize=9)
            readable_log_axes(ax)
            ax.legend(fontsize=7)
        save(fig, "training")
    return written


# --------------------------------------------------------------------------- the command
SECTIONS = ("latency", "memory", "training", "evaluation")


def run(args: argparse.Namespace) -> int:
    """Measure, then write ``bench-agent.json``, ``.md`` and the plots under ``args.out``."""
    apply_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    n_eval = args.eval_steps or cfg["eval_steps"]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--skip: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    out: Path = args.out
    json_path = out / f"{STEM}.json"
    if json_path.exists() and not args.overwrite:
        raise SystemExit(f"{json_path} already exists: pass --overwrite to replace it")

    def log(msg: str) -> None:
        print(msg, flush=True)

    results: dict[str, Any] = {"stamp": stamp(args), "config": {k: v for k, v in cfg.items()}}
    # memory first: the process peak is then this measurement's, not an earlier one's
    if "memory" not in skip:
        results["memory"] = measure_memory(cfg, args.seed, log)
    if "latency" not in skip:
        results["latency"] = measure_latency(cfg, args.seed, log)
        results["profile"] = measure_profile(args.seed)
    if "training" not in skip:
        results["training"] = measure_training(cfg, args.seed, log)
    if "evaluation" not in skip:
        results["evaluation"] = measure_evaluation(
            cfg, args.seed, n_eval, log, workers=args.eval_workers
        )
    results["claims"] = claims(results)
    text = markdown(results)
    write_atomic(json_path, (json.dumps(results, indent=1, default=str) + "\n").encode())
    write_atomic(out / f"{STEM}.md", text.encode())
    plot(results, out)
    print(text)
    return 0


__all__ = ["add_arguments", "claims", "markdown", "plot", "run", "stamp"]
